"""Receivers and filtered handlers the receiver tests' worker imports
(EARNEVENTS_HANDLER_MODULES=e2e_receivers); tests/test_receivers_e2e.py publishes to them.

Each records what it saw to the Redis list ``results:<token>`` (``token`` is a data key
of every event here), so a test observes the worker through Redis only.
"""

from __future__ import annotations

import json
import os
from typing import Any

from earnevents import BaseModel, Event, event_handler, on, redisurl

_sync = redisurl.sync_client(os.environ["EARNEVENTS_REDIS_URI"])


def note(token: str, who: str, **seen: Any) -> None:
    _sync.rpush(f"results:{token}", json.dumps({"handler": who, **seen}))


class User:
    """A sender: events published with ``sender=User`` carry ``"User"``."""


class Account(BaseModel):
    """A model: its model events carry it as their sender."""

    _collection = "r_accounts"
    token: str


# --- sender filters -------------------------------------------------------------------


@on("r.signup", sender=User)
def signup_from_user(sender: str | None, token: str, **kwargs: Any) -> None:
    note(token, "signup_from_user", sender=sender)


@on("r.signup")
async def signup_from_anyone(sender: str | None, token: str, event: Event, **kwargs: Any) -> None:
    note(token, "signup_from_anyone", sender=sender, event_id=event.id, kwargs=sorted(kwargs))


@event_handler("r.signup", sender="Admin")
def signup_from_admin(event: Event) -> None:
    note(event.data["token"], "signup_from_admin", sender=event.sender)


@on("r.guarded", sender=User, retry_policy={"max_retries": 0})
def guarded_explodes(sender: str | None, **kwargs: Any) -> None:
    raise RuntimeError("a receiver filtered to User ran for another sender")


@on("r.guarded")
def guarded_witness(sender: str | None, token: str, **kwargs: Any) -> None:
    note(token, "guarded_witness", sender=sender)


# --- wildcards ------------------------------------------------------------------------


@on("w.user.*")
def any_user_event(sender: str | None, token: str, event: Event) -> None:
    note(token, "any_user_event", name=event.name)


@on(["w.user.created", "w.**"])
async def exact_and_everything(sender: str | None, token: str, **kwargs: Any) -> None:
    note(token, "exact_and_everything", name=kwargs["event"].name)


@event_handler("w.**")
async def everything_under_w(event: Event) -> None:
    note(event.data["token"], "everything_under_w", name=event.name)


@on("**")
def every_event(sender: str | None, token: str, **kwargs: Any) -> None:
    note(token, "every_event", name=kwargs["event"].name)


# --- signatures -----------------------------------------------------------------------


@on("r.order.paid")
def paid(sender: str | None, token: str, order_id: int, total: float = 0.0) -> None:
    note(token, "paid", order_id=order_id, total=total)


# --- failures -------------------------------------------------------------------------


@on(["r.flaky.a", "r.flaky.b"], retry_policy={"max_retries": 1, "interval_start": 0, "interval_max": 0})
def always_fails(sender: str | None, token: str, **kwargs: Any) -> None:
    attempt = _sync.incr(f"tries:{kwargs['event'].id}")
    note(token, "always_fails", attempt=attempt, name=kwargs["event"].name)
    if not _sync.exists(f"heal:{token}"):
        raise ValueError(f"receiver failure {attempt}")


# --- model events ---------------------------------------------------------------------


@on("account.created", sender=Account)
def account_created(sender: str | None, token: str, id: str, **kwargs: Any) -> None:
    note(token, "account_created", sender=sender, id=id)
