"""Immediate model events (EventDefinition without a date field) handled by real
`celery -A earnevents worker` subprocesses with ``@on_event`` handlers
(tests/automation_immediate_handlers.py, models in tests/automation_immediate_models.py),
and ``await event.entity()`` in handlers of declared, automatic and dispatched model events."""

from __future__ import annotations

import pytest
from automation_immediate_models import Memo, Ticket
from conftest import handled, results, stays, token, wait_handled
from model_fixtures import worker_env

import earnevents
from earnevents import Event, dispatch_model_event

pytest_plugins = ["model_fixtures"]
pytestmark = [pytest.mark.mongo, pytest.mark.worker]

MODULES = "automation_immediate_handlers"


def counts(rclient, tok):
    found: dict[str, int] = {}
    for record in results(rclient, tok):
        found[record["handler"]] = found.get(record["handler"], 0) + 1
    return found


async def test_an_immediate_event_reaches_on_event_when_its_condition_becomes_true(
    models_env, start_worker, mongo_url, mongo_db, rclient
):
    # Given a worker with an @on_event("imm_ticket_opened") handler
    start_worker(modules=MODULES, env=worker_env(mongo_url, mongo_db))
    tok = token()
    # When a ticket is created open
    ticket = await Ticket(token=tok, status="open").create()
    # Then the handler ran once, with the model's data, sent by the model, about that document
    [opened] = wait_handled(rclient, tok, "ticket_opened")
    hex_id = str(ticket.id)
    assert opened["data"] == {
        "id": repr(hex_id),
        "token": repr(tok),
        "status": "'open'",
        "priority": "0",
        "vip": "False",
        "flagged": "False",
    }
    assert opened["id_type"] == "str"
    assert opened["sender"] == "Ticket"
    assert opened["entity"] == {"model": "Ticket", "id": hex_id}
    # And event.entity() loaded the document as a Ticket
    assert opened["loaded"] == {"class": "Ticket", "id": hex_id, "status": "open"}
    # When it is saved still open, closed, then opened again
    ticket.priority = 1
    await ticket.save()
    ticket.status = "closed"
    await ticket.save()
    ticket.status = "open"
    ticket.priority = 2
    await ticket.save()
    # Then the handler ran once more, for the reopening only
    first, second = wait_handled(rclient, tok, "ticket_opened", count=2)
    assert {first["data"]["priority"], second["data"]["priority"]} == {"0", "2"}
    assert stays(lambda: len(handled(rclient, tok, "ticket_opened")) == 2, 0.5)


async def test_always_async_conditions_entity_types_and_delete(models_env, start_worker, mongo_url, mongo_db, rclient):
    # Given a worker with the immediate events' handlers
    start_worker(modules=MODULES, env=worker_env(mongo_url, mongo_db))
    # When a ticket's priority holds at 5 or more over writes, drops, and rises again
    hot = token()
    ticket = await Ticket(token=hot, priority=5).create()
    for priority in (6, 1, 7):
        ticket.priority = priority
        await ticket.save()
    # Then fire="always" published after each write while it held
    records = wait_handled(rclient, hot, "ticket_hot", count=3)
    assert sorted(r["data"]["priority"] for r in records) == ["5", "6", "7"]
    # When one ticket is created with an async condition true and another with it false
    vip, plain = token(), token()
    await Ticket(token=vip, vip=True).create()
    await Ticket(token=plain, vip=False).create()
    # Then only the first reached the handler
    [record] = wait_handled(rclient, vip, "ticket_vip")
    assert record["loaded"]["class"] == "Ticket"
    wait_handled(rclient, plain, "ticket_created")
    # When a Ticket and a Memo both raise the same-named event imm_flagged
    ticket_tok, memo_tok = token(), token()
    flagged_ticket = await Ticket(token=ticket_tok, flagged=True).create()
    memo = await Memo(token=memo_tok, flagged=True).create()
    # Then each model's handler ran for its own model only, the unfiltered one for both
    [for_ticket] = wait_handled(rclient, ticket_tok, "ticket_flagged")
    assert for_ticket["loaded"] == {"class": "Ticket", "id": str(flagged_ticket.id), "status": "new"}
    [for_memo] = wait_handled(rclient, memo_tok, "memo_flagged")
    assert for_memo["loaded"] == {"class": "Memo", "id": str(memo.id), "status": None}
    assert for_memo["sender"] == "Memo"
    wait_handled(rclient, ticket_tok, "any_flagged")
    wait_handled(rclient, memo_tok, "any_flagged")
    # When a ticket every immediate condition holds for is deleted
    busy = token()
    doomed = await Ticket(token=busy, status="open", priority=9, vip=True, flagged=True).create()
    for handler in ("ticket_created", "ticket_opened", "ticket_hot", "ticket_vip", "ticket_flagged", "any_flagged"):
        wait_handled(rclient, busy, handler)
    await doomed.delete()
    # Then only the automatic deleted event ran (its entity() finds no document); no immediate one
    [deleted] = wait_handled(rclient, busy, "ticket_deleted")
    assert deleted["loaded"] is None
    assert deleted["entity"] == {"model": "Ticket", "id": str(doomed.id)}
    expected = {
        "ticket_created": 1,
        "ticket_opened": 1,
        "ticket_hot": 1,
        "ticket_vip": 1,
        "ticket_flagged": 1,
        "any_flagged": 1,
        "ticket_deleted": 1,
    }

    # And nothing else ran anywhere
    def quiet() -> bool:
        return (
            counts(rclient, busy) == expected
            and counts(rclient, memo_tok) == {"memo_flagged": 1, "any_flagged": 1}
            and counts(rclient, ticket_tok) == {"ticket_created": 1, "ticket_flagged": 1, "any_flagged": 1}
            and "ticket_vip" not in counts(rclient, plain)
            and len(handled(rclient, hot, "ticket_hot")) == 3
        )

    stayed = stays(quiet, 0.5)
    assert counts(rclient, busy) == expected
    assert counts(rclient, memo_tok) == {"memo_flagged": 1, "any_flagged": 1}
    assert counts(rclient, ticket_tok) == {"ticket_created": 1, "ticket_flagged": 1, "any_flagged": 1}
    assert counts(rclient, plain) == {"ticket_created": 1}
    assert len(handled(rclient, hot, "ticket_hot")) == 3
    assert stayed


async def test_entity_in_automatic_and_dispatched_events_and_events_about_no_document(
    models_env, start_worker, mongo_url, mongo_db, rclient
):
    # Given a worker, a ticket created (automatic ticket.created) and a dispatch_model_event about it
    start_worker(modules=MODULES, env=worker_env(mongo_url, mongo_db))
    tok = token()
    ticket = await Ticket(token=tok).create()
    await dispatch_model_event(earnevents.event_bus, Ticket, "escalated", str(ticket.id), ticket)
    # Then both handlers loaded the document through event.entity()
    expected = {"class": "Ticket", "id": str(ticket.id), "status": "new"}
    assert wait_handled(rclient, tok, "ticket_created")[0]["loaded"] == expected
    [escalated] = wait_handled(rclient, tok, "ticket_escalated")
    assert escalated["loaded"] == expected
    assert escalated["entity"] == {"model": "Ticket", "id": str(ticket.id)}
    # When an event about no document reaches a handler calling event.entity()
    plain = token()
    await earnevents.event_bus.publish(Event(name="imm_plain", data={"token": plain}))
    # Then entity() raised ValueError, saying the event names no entity
    [record] = wait_handled(rclient, plain, "plain")
    assert "names no entity" in record["error"]


async def test_entity_is_none_when_the_document_was_deleted_before_the_handler_ran(
    models_env, start_worker, mongo_url, mongo_db, rclient
):
    # Given events about a ticket and a memo: declared, automatic and dispatched ones
    tok, memo_tok = token(), token()
    ticket = await Ticket(token=tok, status="open").create()
    await dispatch_model_event(earnevents.event_bus, Ticket, "escalated", str(ticket.id), ticket)
    memo = await Memo(token=memo_tok, flagged=True).create()
    # And both documents deleted before any worker runs
    await ticket.delete()
    await memo.delete()
    # When a worker starts and handles them
    start_worker(modules=MODULES, env=worker_env(mongo_url, mongo_db))
    # Then each handler's event.entity() found no document
    for handler in ("ticket_opened", "ticket_created", "ticket_escalated", "ticket_deleted"):
        [record] = wait_handled(rclient, tok, handler)
        assert record["loaded"] is None, handler
        assert record["entity"] == {"model": "Ticket", "id": str(ticket.id)}, handler
    [for_memo] = wait_handled(rclient, memo_tok, "memo_flagged")
    assert for_memo["loaded"] is None
