"""BaseModel CRUD on MongoDB (nx-27017, or a real MongoDB via EARNEVENTS_TEST_MONGO_URI)."""

from __future__ import annotations

import datetime as dt
import enum
import os
import uuid
from decimal import Decimal

import pytest
from bson import ObjectId
from model_fixtures import stored

import earnevents
from earnevents import BaseModel, ModelStateError, NotInitializedError

pytest_plugins = ["model_fixtures"]  # the models_env fixture
pytestmark = pytest.mark.mongo


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Gadget(BaseModel):
    name: str
    price: float = 0.0
    tags: list[str] = []  # noqa: RUF012 - pydantic copies defaults for each instance


class Profile(BaseModel):
    _collection = "people"
    handle: str
    born_on: dt.date | None = None
    last_seen: dt.datetime | None = None
    manager: ObjectId | None = None
    key: uuid.UUID | None = None
    colour: Colour = Colour.RED
    prefs: dict[str, list[int]] = {}  # noqa: RUF012


class OrderItem(BaseModel):
    sku: str


class Category(BaseModel):
    title: str


class Invoice(BaseModel):
    total: Decimal


async def three_gadgets() -> None:
    for name, price in (("lamp", 3.0), ("desk", 1.0), ("chair", 2.0)):
        await Gadget(name=name, price=price).create()


# --- create -----------------------------------------------------------------------------


async def test_create_inserts_the_document_and_sets_id_to_its_objectid(models_env):
    # Given a new model
    gadget = Gadget(name="lamp", price=9.5)
    # When it is created
    await gadget.create()
    # Then the document is in the collection under the ObjectId now in gadget.id
    assert isinstance(gadget.id, ObjectId)
    doc = await stored(models_env, "gadgets").find_one({"_id": gadget.id})
    assert doc == {"_id": gadget.id, "name": "lamp", "price": 9.5, "tags": []}


async def test_create_returns_the_model_itself(models_env):
    gadget = Gadget(name="lamp")
    assert await gadget.create() is gadget


async def test_create_keeps_an_id_given_beforehand(models_env):
    # Given a model whose id is chosen by the caller (as a hex string)
    chosen = ObjectId()
    gadget = Gadget(name="lamp", id=str(chosen))
    # When it is created
    await gadget.create()
    # Then that id is the document's _id
    assert gadget.id == chosen
    assert (await stored(models_env, "gadgets").find_one({"_id": chosen}))["name"] == "lamp"


async def test_creating_a_stored_model_again_is_refused(models_env):
    gadget = await Gadget(name="lamp").create()
    with pytest.raises(ModelStateError, match="use save"):
        await gadget.create()
    assert await Gadget.count() == 1


async def test_writes_before_init_raise_not_initialized():
    await earnevents.close()
    with pytest.raises(NotInitializedError):
        await Gadget(name="lamp").create()


# --- reads ------------------------------------------------------------------------------


async def test_get_by_objectid_returns_an_equal_model(models_env):
    gadget = await Gadget(name="lamp", tags=["a"]).create()
    assert await Gadget.get(gadget.id) == gadget


async def test_get_accepts_the_hex_string_of_the_id(models_env):
    gadget = await Gadget(name="lamp").create()
    assert await Gadget.get(str(gadget.id)) == gadget


async def test_get_returns_none_when_absent(models_env):
    await Gadget(name="lamp").create()
    assert await Gadget.get(ObjectId()) is None


async def test_find_one_returns_the_matching_model(models_env):
    await three_gadgets()
    found = await Gadget.find_one({"name": "desk"})
    assert found is not None and found.price == 1.0


async def test_find_one_returns_none_when_nothing_matches(models_env):
    await three_gadgets()
    assert await Gadget.find_one({"name": "sofa"}) is None


async def test_find_one_takes_the_first_in_sort_order(models_env):
    await three_gadgets()
    cheapest = await Gadget.find_one({}, sort="price")
    assert cheapest is not None and cheapest.name == "desk"


async def test_find_awaited_is_a_list_of_the_matching_models(models_env):
    await three_gadgets()
    found = await Gadget.find({"price": {"$gte": 2}})
    assert sorted(g.name for g in found) == ["chair", "lamp"]
    assert all(isinstance(g, Gadget) for g in found)


async def test_find_sorts_by_a_field_name(models_env):
    await three_gadgets()
    assert [g.name for g in await Gadget.find(sort="name")] == ["chair", "desk", "lamp"]


async def test_find_sorts_descending_with_a_minus_and_skips_and_limits(models_env):
    await three_gadgets()
    assert [g.name for g in await Gadget.find(sort="-price", skip=1, limit=1)] == ["chair"]


async def test_find_takes_pymongos_sort_list(models_env):
    await three_gadgets()
    assert [g.name for g in await Gadget.find({}, sort=[("price", -1)])] == ["lamp", "chair", "desk"]


async def test_find_is_async_iterable(models_env):
    await three_gadgets()
    names = [g.name async for g in Gadget.find(sort="price")]
    assert names == ["desk", "chair", "lamp"]


async def test_find_refuses_a_negative_limit(models_env):
    with pytest.raises(ValueError, match="negative"):
        Gadget.find(limit=-1)


async def test_count_counts_matching_documents(models_env):
    await three_gadgets()
    assert await Gadget.count() == 3
    assert await Gadget.count({"price": {"$lt": 2}}) == 1


# --- save -------------------------------------------------------------------------------


async def test_save_of_a_new_model_creates_it(models_env):
    gadget = Gadget(name="lamp")
    written = await gadget.save()
    assert written == ["name", "price", "tags"]
    assert await Gadget.get(gadget.id) == gadget


async def test_save_sets_only_the_changed_fields(models_env):
    # Given a stored gadget whose name another process changes meanwhile
    gadget = await Gadget(name="lamp").create()
    await stored(models_env, "gadgets").update_one({"_id": gadget.id}, {"$set": {"name": "renamed elsewhere"}})
    # When only its price is changed and saved
    gadget.price = 4.5
    written = await gadget.save()
    # Then only price was sent: the other change survives
    assert written == ["price"]
    doc = await stored(models_env, "gadgets").find_one({"_id": gadget.id})
    assert (doc["name"], doc["price"]) == ("renamed elsewhere", 4.5)


async def test_save_sees_changes_made_in_place(models_env):
    gadget = await Gadget(name="lamp", tags=["a"]).create()
    gadget.tags.append("b")
    assert await gadget.save() == ["tags"]
    assert (await stored(models_env, "gadgets").find_one({"_id": gadget.id}))["tags"] == ["a", "b"]


async def test_save_without_changes_sends_nothing(models_env):
    # Given a stored gadget changed elsewhere after it was loaded
    gadget = await Gadget(name="lamp").create()
    loaded = await Gadget.get(gadget.id)
    await stored(models_env, "gadgets").update_one({"_id": gadget.id}, {"$set": {"price": 7.0}})
    # When the unchanged copy is saved
    written = await loaded.save()
    # Then nothing was written over the other change
    assert written == []
    assert (await stored(models_env, "gadgets").find_one({"_id": gadget.id}))["price"] == 7.0


async def test_save_after_the_document_was_deleted_elsewhere_is_refused(models_env):
    gadget = await Gadget(name="lamp").create()
    await stored(models_env, "gadgets").delete_one({"_id": gadget.id})
    gadget.price = 1.0
    with pytest.raises(ModelStateError, match="no longer"):
        await gadget.save()
    assert await Gadget.count() == 0


async def test_saving_keeps_document_keys_the_model_does_not_declare(models_env):
    # Given a document with a key the model has no field for
    gadget = await Gadget(name="lamp").create()
    await stored(models_env, "gadgets").update_one({"_id": gadget.id}, {"$set": {"legacy": 1}})
    # When it is loaded, changed and saved
    loaded = await Gadget.get(gadget.id)
    loaded.price = 2.0
    await loaded.save()
    # Then the undeclared key is still there
    assert (await stored(models_env, "gadgets").find_one({"_id": gadget.id}))["legacy"] == 1


# --- delete -----------------------------------------------------------------------------


async def test_delete_removes_the_document(models_env):
    gadget = await Gadget(name="lamp").create()
    assert await gadget.delete() is True
    assert await Gadget.get(gadget.id) is None


async def test_delete_of_a_document_already_gone_returns_false(models_env):
    gadget = await Gadget(name="lamp").create()
    await stored(models_env, "gadgets").delete_one({"_id": gadget.id})
    assert await gadget.delete() is False


async def test_delete_of_a_model_never_stored_is_refused(models_env):
    with pytest.raises(ModelStateError, match="never stored"):
        await Gadget(name="lamp").delete()


async def test_a_deleted_model_can_be_created_again(models_env):
    gadget = await Gadget(name="lamp").create()
    await gadget.delete()
    await gadget.save()
    assert await Gadget.get(gadget.id) == gadget


# --- collections and types --------------------------------------------------------------


def test_collection_defaults_to_the_snake_case_plural_of_the_class_name():
    assert (Gadget._collection, OrderItem._collection, Category._collection) == ("gadgets", "order_items", "categories")


def test_collection_can_be_named():
    assert Profile._collection == "people"


async def test_models_reach_the_environment_through_env(models_env):
    gadget = Gadget(name="lamp")
    assert gadget._env.event_bus is earnevents.event_bus
    assert gadget._env.db.name == models_env.db.name
    assert Gadget.get_collection().name == "gadgets"


async def test_typed_fields_come_back_with_their_types(models_env):
    # Given a model with date, datetime, ObjectId, UUID, enum and nested fields
    manager, key = ObjectId(), uuid.uuid4()
    seen = dt.datetime(2026, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    profile = Profile(
        handle="ada",
        born_on=dt.date(1815, 12, 10),
        last_seen=seen,
        manager=manager,
        key=key,
        colour=Colour.BLUE,
        prefs={"a": [1, 2]},
    )
    # When it is stored and loaded again
    await profile.create()
    loaded = await Profile.get(profile.id)
    # Then every field has its Python type and value back
    assert loaded is not None
    assert (loaded.born_on, loaded.last_seen, loaded.manager, loaded.key) == (dt.date(1815, 12, 10), seen, manager, key)
    assert (loaded.colour, loaded.prefs) == (Colour.BLUE, {"a": [1, 2]})


async def test_loaded_datetimes_are_aware_and_in_utc(models_env):
    seen = dt.datetime(2026, 5, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    profile = await Profile(handle="ada", last_seen=seen).create()
    loaded = await Profile.get(profile.id)
    assert loaded is not None and loaded.last_seen == seen
    assert loaded.last_seen.tzinfo is dt.timezone.utc


async def test_enum_fields_are_stored_as_their_values(models_env):
    profile = await Profile(handle="ada", colour=Colour.BLUE).create()
    assert (await stored(models_env, "people").find_one({"_id": profile.id}))["colour"] == "blue"


@pytest.mark.skipif(
    not os.environ.get("EARNEVENTS_TEST_MONGO_URI"),
    reason="Decimal is stored as BSON Decimal128, which nx-27017 cannot store; runs on a real MongoDB",
)
async def test_decimal_fields_are_stored_as_decimal128(models_env):
    invoice = await Invoice(total=Decimal("19.99")).create()
    loaded = await Invoice.get(invoice.id)
    assert loaded is not None and loaded.total == Decimal("19.99")


def test_instances_never_share_a_mutable_default():
    first, second = Gadget(name="a"), Gadget(name="b")
    first.tags.append("x")
    assert second.tags == []


def test_the_seed_import_paths_name_the_same_objects():
    from earnevents.base import BaseModel as SeedBaseModel
    from earnevents.events import dispatch_model_event as events_dispatch
    from earnevents.events.decorators import after_write, before_create, before_save
    from earnevents.events.utils import dispatch_model_event as utils_dispatch
    from earnevents.models import hooks

    assert SeedBaseModel is BaseModel
    assert utils_dispatch is events_dispatch is earnevents.dispatch_model_event
    assert (before_create, after_write, before_save) == (hooks.before_create, hooks.after_write, hooks.before_save)
