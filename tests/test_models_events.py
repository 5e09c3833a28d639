"""Model events as published: @before_save/@after_save, dispatch_model_event, automatic ``_events``.

These look at the queue itself; tests/test_models_worker.py has workers handle them.
"""

from __future__ import annotations

import datetime as dt

import pytest
from bson import ObjectId
from model_fixtures import queued

from earnevents import BaseModel, ModelStateError, dispatch_model_event
from earnevents.events.decorators import after_save, before_save

pytest_plugins = ["model_fixtures"]  # the models_env fixture
pytestmark = pytest.mark.mongo

LOGIN_AT = dt.datetime(2026, 5, 1, 12, tzinfo=dt.timezone.utc)


class User(BaseModel):
    _collection = "users"
    username: str
    email: str
    status: str = "inactive"
    last_login: dt.datetime | None = None
    manager: ObjectId | None = None

    @before_save("user.before_create")
    async def create(self, **options):  # type: ignore[no-untyped-def]
        await super().create(**options)
        await dispatch_model_event(self._env.event_bus, User, "created", str(self.id), self)

    @after_save("user.login")
    async def login(self, fail: bool = False) -> str:
        self.last_login = LOGIN_AT
        if fail:
            raise PermissionError("wrong password")
        await self.save()
        return "welcome"

    @before_save("user.deactivating")
    async def deactivate(self) -> None:
        self.status = "inactive"
        await self.save()


class OrderItem(BaseModel):
    sku: str
    quantity: int = 1


class Gadget(BaseModel):
    _events = ("created", "updated", "deleted")
    name: str
    price: float = 0.0
    owner: ObjectId | None = None
    made_at: dt.datetime | None = None


class Quiet(BaseModel):
    _events = ("deleted",)
    name: str


async def created_user(rclient, queue) -> User:
    """A stored user, with the queue emptied of its creation events."""
    user = User(username="ada", email="ada@example.com", status="active")
    await user.create()
    rclient.delete(queue)
    return user


# --- @before_save / @after_save ---------------------------------------------------------


async def test_before_save_publishes_its_event_before_the_method_runs(models_env, rclient, queue):
    # Given a user whose create() is decorated with @before_save("user.before_create")
    user = User(username="ada", email="ada@example.com")
    # When it is created
    await user.create()
    # Then user.before_create was published first, with the data as it was before the insert
    before, created = queued(rclient, queue)
    assert before.name == "user.before_create"
    assert before.data["id"] is None and before.data["email"] == "ada@example.com"
    assert created.name == "user.created" and created.data["id"] == str(user.id)


async def test_before_save_publishes_even_if_the_method_then_fails(models_env, rclient, queue):
    user = await created_user(rclient, queue)
    await models_env.db["users"].delete_one({"_id": user.id})  # the save inside will fail
    with pytest.raises(ModelStateError, match="no longer"):
        await user.deactivate()
    assert [event.name for event in queued(rclient, queue)] == ["user.deactivating"]


async def test_after_save_publishes_after_the_method_returned(models_env, rclient, queue):
    user = await created_user(rclient, queue)
    assert await user.login() == "welcome"
    [login] = queued(rclient, queue)
    assert login.name == "user.login"
    assert login.data["last_login"] == LOGIN_AT and login.data["id"] == user.id


async def test_after_save_publishes_nothing_when_the_method_raises(models_env, rclient, queue):
    user = await created_user(rclient, queue)
    with pytest.raises(PermissionError):
        await user.login(fail=True)
    assert queued(rclient, queue) == []


async def test_save_of_a_new_model_publishes_the_create_overrides_events(models_env, rclient, queue):
    await User(username="ada", email="ada@example.com").save()
    assert [event.name for event in queued(rclient, queue)] == ["user.before_create", "user.created"]


def test_before_save_refuses_a_plain_method():
    with pytest.raises(TypeError, match="async methods"):

        @before_save("x.y")
        def plain(self: object) -> None: ...


def test_before_save_needs_an_event_name():
    with pytest.raises(ValueError, match="event name"):
        before_save("")


# --- dispatch_model_event ---------------------------------------------------------------


async def test_dispatch_model_event_names_the_event_model_dot_action_in_snake_case(models_env, rclient, queue):
    await dispatch_model_event(models_env.event_bus, OrderItem, "shipped", "42", OrderItem(sku="A-1"))
    [shipped] = queued(rclient, queue)
    assert shipped.name == "order_item.shipped"


async def test_dispatch_model_event_data_is_the_fields_plus_the_given_id(models_env, rclient, queue):
    await dispatch_model_event(models_env.event_bus, OrderItem, "shipped", "42", OrderItem(sku="A-1", quantity=3))
    [shipped] = queued(rclient, queue)
    assert shipped.data == {"sku": "A-1", "quantity": 3, "id": "42"}


async def test_dispatch_model_event_takes_a_model_name_and_no_instance(models_env, rclient, queue):
    record_id = ObjectId()
    await dispatch_model_event(models_env.event_bus, "OrderItem", "lost", record_id)
    [lost] = queued(rclient, queue)
    assert (lost.name, lost.data) == ("order_item.lost", {"id": record_id})


async def test_dispatch_model_event_returns_the_event_id(models_env, rclient, queue):
    event_id = await dispatch_model_event(models_env.event_bus, OrderItem, "shipped", "1")
    assert [event.id for event in queued(rclient, queue)] == [event_id]


async def test_dispatch_model_event_keeps_objectid_and_datetime_types(models_env, rclient, queue):
    # Given a user with an ObjectId and a datetime field
    manager = ObjectId()
    user = User(username="ada", email="a@x", manager=manager, last_login=LOGIN_AT)
    # When an event is dispatched for it with its ObjectId as the id
    await dispatch_model_event(models_env.event_bus, User, "imported", manager, user)
    # Then the decoded event has the same types back
    [imported] = queued(rclient, queue)
    assert imported.data["manager"] == manager and isinstance(imported.data["manager"], ObjectId)
    assert imported.data["last_login"] == LOGIN_AT and isinstance(imported.data["id"], ObjectId)


async def test_dispatch_model_event_with_a_delay_is_scheduled_not_queued(models_env, rclient, queue):
    await dispatch_model_event(models_env.event_bus, User, "welcome_email", "1", delay=60)
    [pending] = await models_env.event_bus.get_scheduled()
    assert pending.event.name == "user.welcome_email"
    assert queued(rclient, queue) == []


# --- automatic events -------------------------------------------------------------------


async def test_create_publishes_created_with_the_fields_and_the_id_as_a_string(models_env, rclient, queue):
    owner = ObjectId()
    gadget = await Gadget(name="lamp", owner=owner, made_at=LOGIN_AT).create()
    [created] = queued(rclient, queue)
    assert created.name == "gadget.created"
    assert created.data == {"id": str(gadget.id), "name": "lamp", "price": 0.0, "owner": owner, "made_at": LOGIN_AT}
    assert created.metadata["model"] == "Gadget"


async def test_update_publishes_updated_with_the_changed_fields_in_metadata(models_env, rclient, queue):
    gadget = await Gadget(name="lamp").create()
    gadget.price = 5.0
    gadget.owner = ObjectId()
    await gadget.save()
    _, updated = queued(rclient, queue)
    assert updated.name == "gadget.updated"
    assert updated.metadata["changed_fields"] == ["price", "owner"]
    assert updated.data["price"] == 5.0


async def test_an_unchanged_save_publishes_nothing(models_env, rclient, queue):
    gadget = await Gadget(name="lamp").create()
    await gadget.save()
    assert [event.name for event in queued(rclient, queue)] == ["gadget.created"]


async def test_delete_publishes_deleted(models_env, rclient, queue):
    gadget = await Gadget(name="lamp").create()
    await gadget.delete()
    deleted = queued(rclient, queue)[-1]
    assert (deleted.name, deleted.data["id"], deleted.data["name"]) == ("gadget.deleted", str(gadget.id), "lamp")


async def test_a_delete_that_removed_nothing_publishes_nothing(models_env, rclient, queue):
    gadget = await Gadget(name="lamp").create()
    await models_env.db["gadgets"].delete_one({"_id": gadget.id})
    await gadget.delete()
    assert [event.name for event in queued(rclient, queue)] == ["gadget.created"]


async def test_only_the_listed_actions_publish(models_env, rclient, queue):
    quiet = await Quiet(name="q").create()
    quiet.name = "r"
    await quiet.save()
    await quiet.delete()
    assert [event.name for event in queued(rclient, queue)] == ["quiet.deleted"]


async def test_models_without_events_publish_nothing(models_env, rclient, queue):
    item = await OrderItem(sku="A-1").create()
    item.quantity = 2
    await item.save()
    await item.delete()
    assert queued(rclient, queue) == []


def test_an_unknown_automatic_event_is_refused_when_the_class_is_defined():
    with pytest.raises(ValueError, match=r"_events: unknown \['exploded'\]"):

        class Bad(BaseModel):
            _events = ("created", "exploded")
            name: str


# --- senders ------------------------------------------------------------------------------


async def test_every_kind_of_model_event_carries_its_model_class_as_sender(models_env, rclient, queue):
    # Given a user (its create() publishes user.before_create, then dispatches user.created)
    user = User(username="ada", email="ada@example.com")
    # When it is created, logs in (@after_save), and a gadget is created, saved and deleted (automatic)
    await user.create()
    await user.login()
    gadget = await Gadget(name="lamp").create()
    gadget.price = 2.0
    await gadget.save()
    await gadget.delete()
    # and events are dispatched for a model given by name
    await dispatch_model_event(models_env.event_bus, "OrderItem", "lost", "7")
    # Then each names its model as its sender (the user's login save and the rest, in order)
    senders = [(event.name, event.sender, event.metadata["sender"]) for event in queued(rclient, queue)]
    assert senders == [
        ("user.before_create", "User", "User"),
        ("user.created", "User", "User"),
        ("user.login", "User", "User"),
        ("gadget.created", "Gadget", "Gadget"),
        ("gadget.updated", "Gadget", "Gadget"),
        ("gadget.deleted", "Gadget", "Gadget"),
        ("order_item.lost", "OrderItem", "OrderItem"),
    ]
