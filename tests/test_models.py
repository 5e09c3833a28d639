"""BaseModel on MongoDB (nx-27017, or a real MongoDB via EARNEVENTS_TEST_MONGO_URI)."""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal

import pytest
from bson import ObjectId
from conftest import token, wait_results

import earnevents
from earnevents import BaseModel, Event, ModelStateError, ModelValidationError, dispatch_model_event, message
from earnevents.base import BaseModel as SeedBaseModel
from earnevents.events.decorators import (
    after_create,
    after_delete,
    after_save,
    after_update,
    after_write,
    before_create,
    before_delete,
    before_save,
    before_update,
    before_write,
)
from earnevents.events.utils import dispatch_model_event as seed_dispatch

pytestmark = pytest.mark.mongo

CALLS: list[str] = []


class User(BaseModel):
    _collection = "users"
    username: str
    email: str
    status: str = "inactive"
    last_login: dt.datetime | None = None

    @before_create
    async def _stamp(self):
        CALLS.append("before_create")

    @before_write
    def _before_write(self):
        CALLS.append("before_write")

    @after_create
    async def _after_create(self):
        CALLS.append("after_create")

    @after_write
    async def _reindex(self):
        CALLS.append("after_write")

    @before_update
    def _before_update(self):
        CALLS.append("before_update")

    @after_update
    def _after_update(self):
        CALLS.append("after_update")

    @before_delete
    async def _before_delete(self):
        CALLS.append("before_delete")

    @after_delete
    async def _after_delete(self):
        CALLS.append("after_delete")

    @before_save("user.before_create")
    async def create(self, **kwargs):
        await super().create(**kwargs)
        await dispatch_model_event(self._env.event_bus, User, "created", str(self.id), self)

    @after_save("user.login")
    async def record_login(self, fail: bool = False):
        self.last_login = dt.datetime(2026, 5, 1, 12, tzinfo=dt.timezone.utc)
        if fail:
            raise RuntimeError("login failed")
        await super().save()


class Admin(User):
    level: int = 1

    @before_create
    def _admin_first(self):
        CALLS.append("admin.before_create")


class Gadget(BaseModel):
    _events = ("created", "updated", "deleted")
    name: str
    price: float = 0.0
    made_on: dt.date | None = None
    owner: ObjectId | None = None
    tags: list[str] = []  # noqa: RUF012 - BaseModel copies defaults for each instance


class OrderItem(BaseModel):
    sku: str


class Account(BaseModel):
    """The seed's pattern: a required field filled by a before_create hook."""

    name: str
    created_at: dt.datetime

    @before_create
    def _created(self):
        self.created_at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class Guarded(BaseModel):
    name: str
    fail_before: bool = False
    fail_after: bool = False

    @before_write
    def _check(self):
        if self.fail_before:
            raise ValueError("refused by before_write")

    @after_write
    def _after(self):
        if self.fail_after:
            raise RuntimeError("after_write broke")


@pytest.fixture
async def env(redis_url, mongo_url, mongo_db, queue):
    CALLS.clear()
    environment = await earnevents.init(
        mongo_uri=mongo_url, database=mongo_db, redis_uri=redis_url, event_config={"queue_name": queue}
    )
    yield environment
    await earnevents.close()


def queued(rclient, queue) -> list[Event]:
    """Events published to the queue so far, oldest first."""
    return [Event.from_wire(message.parse(raw)[0]) for raw in reversed(rclient.lrange(queue, 0, -1))]


# --- CRUD -------------------------------------------------------------------------


async def test_create_stores_the_document_and_sets_an_objectid(env):
    user = User(username="ada", email="ada@example.com")
    await user.create()
    assert isinstance(user.id, ObjectId)
    doc = await env.db["users"].find_one({"_id": user.id})
    assert doc["username"] == "ada" and doc["status"] == "inactive"


async def test_get_by_objectid_or_its_string_and_none_when_absent(env):
    user = User(username="ada", email="a@x")
    await user.create()
    assert (await User.get(user.id)) == user
    assert (await User.get(str(user.id))) == user
    assert await User.get(ObjectId()) is None


async def test_find_sorts_skips_limits_and_iterates(env):
    for i, name in enumerate(["c", "a", "d", "b"]):
        await Gadget(name=name, price=i).create()
    assert [g.name for g in await Gadget.find(sort="name")] == ["a", "b", "c", "d"]
    assert [g.name for g in await Gadget.find(sort="-name", skip=1, limit=2)] == ["c", "b"]
    assert [g.name for g in await Gadget.find({"price": {"$gte": 2}}, sort=[("name", 1)])] == ["b", "d"]
    assert [g.name async for g in Gadget.find(sort="name", limit=1)] == ["a"]
    assert await Gadget.count() == 4 and await Gadget.count({"name": "a"}) == 1
    assert (await Gadget.find_one({"name": "d"})).price == 2.0


async def test_save_sends_only_changed_fields_and_nothing_when_unchanged(env):
    gadget = await Gadget(name="lamp", tags=["a"]).create()
    await env.db["gadgets"].update_one({"_id": gadget.id}, {"$set": {"name": "changed elsewhere"}})
    gadget.price = 9.5
    gadget.tags.append("b")  # in-place changes count too
    assert await gadget.save() == ["price", "tags"]
    doc = await env.db["gadgets"].find_one({"_id": gadget.id})
    assert doc["name"] == "changed elsewhere"  # not overwritten: name was not changed here
    assert doc["tags"] == ["a", "b"]
    assert await gadget.save() == []


async def test_save_of_a_new_model_creates_it(env):
    gadget = Gadget(name="new")
    assert await gadget.save() == ["name", "price", "made_on", "owner", "tags"]
    assert await Gadget.get(gadget.id) == gadget


async def test_delete_removes_it(env):
    gadget = await Gadget(name="x").create()
    await gadget.delete()
    assert await Gadget.get(gadget.id) is None
    with pytest.raises(ModelStateError):
        await Gadget(name="never stored").delete()


async def test_typed_fields_round_trip_through_mongodb(env):
    owner = ObjectId()
    gadget = await Gadget(name="t", price=1.5, made_on=dt.date(2026, 2, 3), owner=owner).create()
    again = await Gadget.get(gadget.id)
    assert (again.price, again.made_on, again.owner) == (1.5, dt.date(2026, 2, 3), owner)


class Invoice(BaseModel):
    total: Decimal


@pytest.mark.skipif(
    not os.environ.get("EARNEVENTS_TEST_MONGO_URI"),
    reason="Decimal is stored as BSON Decimal128, which the nx-27017 stand-in cannot store; runs on real MongoDB",
)
async def test_decimal_fields_are_stored_as_decimal128(env):
    invoice = await Invoice(total=Decimal("19.99")).create()
    assert (await Invoice.get(invoice.id)).total == Decimal("19.99")
    assert str((await env.db["invoices"].find_one({"_id": invoice.id}))["total"]) == "19.99"


def test_instances_never_share_a_mutable_default():
    a, b = Gadget(name="a"), Gadget(name="b")
    a.tags.append("x")
    assert b.tags == [] and Gadget(name="c").tags == []


def test_collection_names_default_to_snake_case_plurals():
    assert (User._collection, OrderItem._collection, Gadget._collection) == ("users", "order_items", "gadgets")


def test_seed_import_paths():
    assert SeedBaseModel is BaseModel and seed_dispatch is dispatch_model_event


# --- validation -------------------------------------------------------------------


async def test_bad_type_at_construction_is_a_clear_error_and_nothing_is_written(env):
    with pytest.raises(ModelValidationError, match=r"User\.email: Input should be a valid string"):
        await User(username="ada", email=5).create()
    assert await env.db["users"].count_documents({}) == 0


async def test_bad_type_on_assignment_is_refused_and_the_old_value_kept(env):
    gadget = await Gadget(name="x").create()
    with pytest.raises(ModelValidationError, match=r"Gadget\.price"):
        gadget.price = "cheap"
    assert gadget.price == 0.0 and await gadget.save() == []


async def test_unknown_fields_and_missing_required_fields_are_refused(env):
    with pytest.raises(ModelValidationError, match="no field"):
        Gadget(name="x", colour="red")
    with pytest.raises(ModelValidationError, match=r"required field\(s\) \['email'\]"):
        await User(username="no email").create()
    assert await env.db["users"].count_documents({}) == 0


async def test_a_before_create_hook_may_fill_a_required_field(env):
    account = await Account(name="acme").create()
    assert (await Account.get(account.id)).created_at == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


# --- hooks ------------------------------------------------------------------------


async def test_create_update_delete_run_hooks_in_order(env):
    user = User(username="ada", email="a@x")
    await user.create()
    assert CALLS == ["before_create", "before_write", "after_create", "after_write"]
    CALLS.clear()
    user.status = "active"
    await user.save()
    assert CALLS == ["before_update", "before_write", "after_update", "after_write"]
    CALLS.clear()
    await user.delete()
    assert CALLS == ["before_delete", "after_delete"]


async def test_subclass_runs_parent_hooks_first(env):
    await Admin(username="root", email="r@x").create()  # Admin inherits User's create override
    assert CALLS[:3] == ["before_create", "admin.before_create", "before_write"]


async def test_skip_hooks_writes_without_running_them(env):
    await BaseModel.create(User(username="ada", email="a@x"), skip_hooks=True)
    assert CALLS == [] and await User.count() == 1


async def test_failing_before_hook_aborts_nothing_written_nothing_published(env, rclient, queue):
    with pytest.raises(ValueError, match="refused"):
        await Guarded(name="g", fail_before=True).create()
    assert await Guarded.count() == 0 and rclient.llen(queue) == 0


async def test_failing_after_hook_leaves_the_write_standing_and_raises(env):
    guarded = Guarded(name="g", fail_after=True)
    with pytest.raises(RuntimeError, match="after_write broke"):
        await guarded.create()
    assert (await Guarded.get(guarded.id)).name == "g"


# --- events -----------------------------------------------------------------------


async def test_overridden_create_publishes_named_and_model_events_once(env, rclient, queue):
    user = User(username="ada", email="ada@example.com")
    await user.create()
    before, created = queued(rclient, queue)
    assert before.name == "user.before_create" and before.data["id"] is None
    assert created.name == "user.created" and created.data["email"] == "ada@example.com"
    assert created.data["id"] == str(user.id)
    assert CALLS.count("before_create") == 1


async def test_after_save_publishes_only_when_the_method_returns(env, rclient, queue):
    user = User(username="ada", email="a@x")
    await user.create()
    rclient.delete(queue)
    with pytest.raises(RuntimeError):
        await user.record_login(fail=True)
    assert queued(rclient, queue) == []
    await user.record_login()
    [login] = queued(rclient, queue)
    assert login.name == "user.login"
    assert login.data["last_login"] == dt.datetime(2026, 5, 1, 12, tzinfo=dt.timezone.utc)


async def test_dispatch_model_event_names_and_typed_data(env, rclient, queue):
    item = OrderItem(sku="A-1")
    await dispatch_model_event(env.event_bus, OrderItem, "shipped", "42", item)
    await dispatch_model_event(env.event_bus, "OrderItem", "lost", ObjectId("0123456789abcdef01234567"))
    shipped, lost = queued(rclient, queue)
    assert shipped.name == "order_item.shipped" and shipped.data == {"sku": "A-1", "id": "42"}
    assert lost.name == "order_item.lost" and lost.data == {"id": ObjectId("0123456789abcdef01234567")}


async def test_dispatch_model_event_with_delay_is_scheduled(env):
    await dispatch_model_event(env.event_bus, User, "welcome_email", "1", delay=60)
    [pending] = await env.event_bus.get_scheduled()
    assert pending.event.name == "user.welcome_email"


async def test_automatic_events_after_each_write(env, rclient, queue):
    owner = ObjectId()
    gadget = await Gadget(name="lamp", owner=owner, made_on=dt.date(2026, 1, 2)).create()
    gadget.price = 5.0
    await gadget.save()
    await gadget.save()  # unchanged: no event
    await gadget.delete()
    created, updated, deleted = queued(rclient, queue)
    assert [e.name for e in (created, updated, deleted)] == ["gadget.created", "gadget.updated", "gadget.deleted"]
    assert created.data["owner"] == owner and created.data["made_on"] == dt.date(2026, 1, 2)
    assert created.data["id"] == str(gadget.id)
    assert updated.metadata["changed_fields"] == ["price"] and updated.data["price"] == 5.0


async def test_aborted_write_publishes_no_automatic_event(env, rclient, queue):
    class Strict(BaseModel):
        _events = ("created",)
        name: str

        @before_create
        def _no(self):
            raise PermissionError("no")

    with pytest.raises(PermissionError):
        await Strict(name="x").create()
    assert rclient.llen(queue) == 0


def test_unknown_automatic_event_is_refused_at_class_creation():
    with pytest.raises(ValueError, match="_events"):

        class Bad(BaseModel):
            _events = ("exploded",)


# --- with a worker --------------------------------------------------------------------


@pytest.mark.worker
async def test_model_events_are_handled_by_a_worker(env, start_worker, rclient):
    start_worker(modules="model_handlers")
    tok = token()
    user = User(username=tok, email="ada@example.com", last_login=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    user_id = ObjectId()
    await dispatch_model_event(env.event_bus, User, "created", user_id, user)
    await Gadget(name="g").create()
    rec = next(r for r in wait_results(rclient, tok, 1) if r["handler"] == "user_created")
    assert rec["name"] == "user.created"
    assert rec["types"]["id"] == "ObjectId" and rec["types"]["last_login"] == "datetime"


@pytest.mark.worker
async def test_automatic_updated_event_reaches_the_worker_with_changed_fields(env, start_worker, rclient):
    start_worker(modules="model_handlers")
    tok = token()
    gadget = await Gadget(name=tok).create()
    gadget.tags = ["new"]
    gadget.price = 2.5
    await gadget.save()
    [rec] = wait_results(rclient, tok, 1)
    assert rec["name"] == "gadget.updated" and rec["changed"] == ["price", "tags"]
    assert rec["types"]["price"] == "float" and rec["repr"]["id"] == repr(str(gadget.id))
