"""Lifecycle hooks: order, sync and async, inheritance, aborts, after-hook failures, skip_hooks."""

from __future__ import annotations

import pytest
from model_fixtures import queued, stored
from pydantic import PrivateAttr

from earnevents import BaseModel
from earnevents.events.decorators import (
    after_create,
    after_delete,
    after_update,
    after_write,
    before_create,
    before_delete,
    before_update,
    before_write,
)
from earnevents.models import hooks

pytest_plugins = ["model_fixtures"]  # the models_env fixture
pytestmark = pytest.mark.mongo


class Traced(BaseModel):
    """Every hook records its kind and how many documents were stored when it ran."""

    _events = ("created", "updated", "deleted")
    name: str
    _log: list[str] = PrivateAttr(default_factory=list)  # instance state that is not a field

    async def _note(self, kind: str) -> None:
        self._log.append(f"{kind}:{await Traced.count()}")

    @before_create
    async def _before_create(self) -> None:
        await self._note("before_create")

    @after_create
    async def _after_create(self) -> None:
        await self._note("after_create")

    @before_update
    async def _before_update(self) -> None:
        await self._note("before_update")

    @after_update
    async def _after_update(self) -> None:
        await self._note("after_update")

    @before_write
    async def _before_write(self) -> None:
        await self._note("before_write")

    @after_write
    async def _after_write(self) -> None:
        await self._note("after_write")

    @before_delete
    async def _before_delete(self) -> None:
        await self._note("before_delete")

    @after_delete
    async def _after_delete(self) -> None:
        await self._note("after_delete")


CALLS: list[str] = []


class Parent(BaseModel):
    name: str

    @before_create
    def _first(self) -> None:
        CALLS.append("parent.first")

    @before_create
    async def _second(self) -> None:
        CALLS.append("parent.second")

    @before_create
    def _replaceable(self) -> None:
        CALLS.append("parent.replaceable")


class Child(Parent):
    @before_create
    def _child(self) -> None:
        CALLS.append("child")

    def _replaceable(self) -> None:  # overrides the parent's hook, in its place
        CALLS.append("child.replaceable")


class Guarded(BaseModel):
    _events = ("created", "updated", "deleted")
    name: str
    refuse: str = ""
    break_after: str = ""

    @before_write
    def _check(self) -> None:
        if self.refuse == "write":
            raise PermissionError("refused by before_write")

    @before_delete
    def _check_delete(self) -> None:
        if self.refuse == "delete":
            raise PermissionError("refused by before_delete")

    @after_write
    def _after(self) -> None:
        if self.break_after == "write":
            raise RuntimeError("after_write broke")

    @after_delete
    def _after_delete(self) -> None:
        if self.break_after == "delete":
            raise RuntimeError("after_delete broke")


class Stamped(BaseModel):
    name: str
    revision: int = 0

    @before_update
    @before_create
    def _bump(self) -> None:
        self.revision += 1


class Created(BaseModel):
    """Overrides create and calls super(): the hooks must still run once."""

    name: str
    hook_runs: int = 0

    @before_create
    def _count(self) -> None:
        self.hook_runs += 1

    async def create(self, **options):  # type: ignore[no-untyped-def]
        self.name = self.name.title()
        return await super().create(**options)


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


# --- order ------------------------------------------------------------------------------


async def test_create_runs_before_hooks_then_the_insert_then_after_hooks(models_env):
    traced = await Traced(name="t").create()
    assert traced._log == ["before_create:0", "before_write:0", "after_create:1", "after_write:1"]


async def test_update_runs_before_update_before_write_then_after_update_after_write(models_env):
    traced = await Traced(name="t").create()
    traced._log.clear()
    traced.name = "u"
    await traced.save()
    assert traced._log == ["before_update:1", "before_write:1", "after_update:1", "after_write:1"]


async def test_the_update_is_written_between_before_and_after_hooks(models_env):
    # Given a stored model whose hooks record what the database holds
    seen: list[str] = []

    class Watched(BaseModel):
        name: str

        @before_update
        async def _before(self) -> None:
            seen.append((await stored(models_env, "watcheds").find_one({"_id": self.id}))["name"])

        @after_update
        async def _after(self) -> None:
            seen.append((await stored(models_env, "watcheds").find_one({"_id": self.id}))["name"])

    watched = await Watched(name="old").create()
    # When it is changed and saved
    watched.name = "new"
    await watched.save()
    # Then the before-hook saw the old document and the after-hook the new one
    assert seen == ["old", "new"]


async def test_delete_runs_before_delete_then_the_delete_then_after_delete(models_env):
    traced = await Traced(name="t").create()
    traced._log.clear()
    await traced.delete()
    assert traced._log == ["before_delete:1", "after_delete:0"]


async def test_an_unchanged_save_runs_no_hooks(models_env):
    traced = await Traced(name="t").create()
    traced._log.clear()
    assert await traced.save() == []
    assert traced._log == []


async def test_sync_and_async_hooks_of_one_kind_run_in_definition_order(models_env):
    await Parent(name="p").create()
    assert CALLS == ["parent.first", "parent.second", "parent.replaceable"]


async def test_a_subclass_runs_its_parents_hooks_first(models_env):
    await Child(name="c").create()
    assert CALLS.index("parent.first") < CALLS.index("parent.second") < CALLS.index("child")


async def test_a_subclass_overriding_a_hook_method_replaces_it_in_place(models_env):
    await Child(name="c").create()
    assert CALLS == ["parent.first", "parent.second", "child.replaceable", "child"]


def test_hooks_are_collected_per_class_when_it_is_defined():
    assert Child.__hooks__["before_create"] == ("_first", "_second", "_replaceable", "_child")
    assert Parent.__hooks__["before_create"] == ("_first", "_second", "_replaceable")
    assert Parent.__hooks__["after_write"] == ()


async def test_a_method_tagged_twice_runs_for_both_kinds(models_env):
    stamped = await Stamped(name="s").create()
    stamped.name = "t"
    await stamped.save()
    assert stamped.revision == 2
    assert (await stored(models_env, "stampeds").find_one({"_id": stamped.id}))["revision"] == 2


async def test_fields_a_before_hook_changes_are_written_too(models_env):
    # Given a stored model whose before_update hook changes another field
    stamped = await Stamped(name="s").create()
    # When only its name is changed and saved
    stamped.name = "t"
    written = await stamped.save()
    # Then the hook's change was written along with it
    assert written == ["name", "revision"]


async def test_overriding_create_and_calling_super_runs_the_hooks_once(models_env):
    created = await Created(name="ada").create()
    assert created.hook_runs == 1
    assert (await stored(models_env, "createds").find_one({"_id": created.id}))["name"] == "Ada"


async def test_save_of_a_new_model_goes_through_the_create_override(models_env):
    created = Created(name="ada")
    await created.save()
    assert (created.name, created.hook_runs) == ("Ada", 1)


# --- failures ---------------------------------------------------------------------------


async def test_a_failing_before_hook_aborts_the_create(models_env, rclient, queue):
    # When a before-hook raises during create
    with pytest.raises(PermissionError, match="refused by before_write"):
        await Guarded(name="g", refuse="write").create()
    # Then nothing was written and nothing published
    assert await Guarded.count() == 0
    assert queued(rclient, queue) == []


async def test_a_failing_before_hook_aborts_the_update_and_keeps_the_changes_unsaved(models_env, rclient, queue):
    guarded = await Guarded(name="g").create()
    rclient.delete(queue)
    guarded.name = "h"
    guarded.refuse = "write"
    with pytest.raises(PermissionError):
        await guarded.save()
    assert (await stored(models_env, "guardeds").find_one({"_id": guarded.id}))["name"] == "g"
    assert guarded.changed_fields() == ["name", "refuse"]
    assert queued(rclient, queue) == []


async def test_a_failing_before_delete_hook_keeps_the_document(models_env, rclient, queue):
    guarded = await Guarded(name="g", refuse="delete").create()
    rclient.delete(queue)
    with pytest.raises(PermissionError, match="refused by before_delete"):
        await guarded.delete()
    assert await Guarded.get(guarded.id) is not None
    assert queued(rclient, queue) == []


async def test_a_failing_after_hook_raises_but_the_write_and_its_event_stand(models_env, rclient, queue):
    # When an after-hook raises during create
    guarded = Guarded(name="g", break_after="write")
    with pytest.raises(RuntimeError, match="after_write broke"):
        await guarded.create()
    # Then the document is stored, the model knows it, and its automatic event was published
    assert (await Guarded.get(guarded.id)).name == "g"
    assert guarded.is_stored
    assert [event.name for event in queued(rclient, queue)] == ["guarded.created"]


async def test_a_failing_after_delete_hook_raises_but_the_delete_stands(models_env):
    guarded = await Guarded(name="g", break_after="delete").create()
    with pytest.raises(RuntimeError, match="after_delete broke"):
        await guarded.delete()
    assert await Guarded.get(guarded.id) is None


async def test_a_failing_after_hook_stops_the_hooks_after_it(models_env):
    class Halting(BaseModel):
        name: str
        ran: list[str] = []  # noqa: RUF012

        @after_create
        def _breaks(self) -> None:
            raise RuntimeError("after_create broke")

        @after_write
        def _later(self) -> None:
            self.ran.append("after_write")

    halting = Halting(name="h")
    with pytest.raises(RuntimeError):
        await halting.create()
    assert halting.ran == []


# --- skip_hooks -------------------------------------------------------------------------


async def test_create_with_skip_hooks_runs_none(models_env):
    traced = await Traced(name="t").create(skip_hooks=True)
    assert traced._log == [] and await Traced.count() == 1


async def test_save_with_skip_hooks_runs_none(models_env):
    traced = await Traced(name="t").create()
    traced._log.clear()
    traced.name = "u"
    await traced.save(skip_hooks=True)
    assert traced._log == []
    assert (await stored(models_env, "traceds").find_one({"_id": traced.id}))["name"] == "u"


async def test_delete_with_skip_hooks_runs_none(models_env):
    guarded = await Guarded(name="g", refuse="delete").create()
    assert await guarded.delete(skip_hooks=True) is True


async def test_skip_hooks_still_publishes_automatic_events(models_env, rclient, queue):
    await Traced(name="t").create(skip_hooks=True)
    assert [event.name for event in queued(rclient, queue)] == ["traced.created"]


def test_hook_decorators_only_tag_the_method():
    def method(self: object) -> None: ...

    assert before_create(method) is method
    assert after_write(before_create(method)) is method
    assert hooks.PHASES["create"] == (("before_create", "before_write"), ("after_create", "after_write"))
