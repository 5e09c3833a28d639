"""Issue 3's "What users write" block, verbatim in substance, must work as written."""

from __future__ import annotations

from datetime import datetime

import pytest

import earnevents
from earnevents import BaseModel, dispatch_model_event, event_bus, init, message, model_event_handler
from earnevents.events.decorators import (  # noqa: F401 - the whole import line must work
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

pytestmark = pytest.mark.mongo
SEEN: list[str] = []


class User(BaseModel):
    _collection = "users"
    username: str
    email: str
    status: str = "inactive"
    last_login: datetime | None = None

    @before_create
    async def _stamp(self):
        SEEN.append("stamp")

    @after_write
    async def _reindex(self):
        SEEN.append("reindex")

    @before_save("user.before_create")
    async def create(self):  # overriding create and calling super() works
        await super().create()
        await dispatch_model_event(self._env.event_bus, User, "created", str(self.id), self)


@model_event_handler("User", "created")
async def on_created(event): ...  # event.name == "user.created", event.data["email"] == ...


async def test_the_users_code_works_as_written(redis_url, mongo_url, mongo_db, queue, rclient):
    await init(mongo_uri=mongo_url, database=mongo_db, redis_uri=redis_url, event_config={"queue_name": queue})
    try:
        user = User(username="ada", email="ada@example.com")
        await user.create()
        assert SEEN == ["stamp", "reindex"]
        assert await User.count({"email": "ada@example.com"}) == 1
        names = [message.parse(raw)[0]["name"] for raw in reversed(rclient.lrange(queue, 0, -1))]
        assert names == ["user.before_create", "user.created"]
        assert earnevents.handlers.registry.for_event("user.created")[0].func is on_created
        assert user._env.event_bus is event_bus
    finally:
        await earnevents.close()
