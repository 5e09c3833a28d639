"""Models with immediate events (EventDefinition without a date field), shared by
tests/test_automations_immediate_e2e.py and its workers (``automation_immediate_handlers``)."""

from __future__ import annotations

from earnevents import BaseModel, EventDefinition


async def is_vip(ticket: Ticket) -> bool:
    """An async condition, as a condition that queries something would be."""
    return ticket.vip


class Ticket(BaseModel):
    _events = (
        "created",
        "updated",
        "deleted",
        EventDefinition("imm_ticket_opened", condition=lambda t: t.status == "open"),
        EventDefinition("imm_ticket_hot", condition=lambda t: t.priority >= 5, fire="always"),
        EventDefinition("imm_ticket_vip", condition=is_vip),
        EventDefinition("imm_flagged", condition=lambda t: t.flagged),
    )

    token: str
    status: str = "new"
    priority: int = 0
    vip: bool = False
    flagged: bool = False


class Memo(BaseModel):
    """Declares an event of the same name as Ticket's: ``entity_type`` tells them apart."""

    _events = (EventDefinition("imm_flagged", condition=lambda m: m.flagged),)

    token: str
    flagged: bool = False
