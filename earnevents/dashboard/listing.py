"""What the list pages share: reading their query parameters, paging, and the message page.

Query parameters are read strictly: an offset that is not a whole number, a status that is
not one of the allowed ones or a time that is not ISO 8601 raises :class:`BadQuery`, which
the pages answer with :func:`problem` (status 400, the reason shown). A filter left empty
is no filter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ..moments import parse_moment
from .render import render, url

PAGE_SIZE = 50
"""Rows per page of every list."""

MAX_OFFSET = 10**9
"""The largest offset a list accepts."""


class BadQuery(ValueError):
    """A query parameter or form field the page cannot use; its message says why."""


def text(request: Request, name: str) -> str | None:
    """The parameter ``name``, or None when absent or empty."""
    value = request.query_params.get(name, "").strip()
    return value or None


def offset(request: Request) -> int:
    """The ``offset`` parameter: a whole number from 0 (0 when absent)."""
    raw = request.query_params.get("offset", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > MAX_OFFSET:
        raise BadQuery(f"offset must be a whole number from 0 to {MAX_OFFSET}, got {raw!r}")
    return int(raw)


def choice(request: Request, name: str, allowed: Sequence[str]) -> str | None:
    """The parameter ``name`` if it is one of ``allowed`` (None when absent or empty)."""
    value = text(request, name)
    if value is not None and value not in allowed:
        raise BadQuery(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def moment(request: Request, name: str) -> dt.datetime | None:
    """The parameter ``name`` as an aware datetime: a duration ago (``90s``, ``2h``, ``7d``) or
    an ISO time, UTC when it names no offset (:func:`earnevents.moments.parse_moment`, as the
    CLI's ``--since`` and the Failed jobs page read it)."""
    value = text(request, name)
    if value is None:
        return None
    try:
        return parse_moment(value)
    except ValueError as exc:
        raise BadQuery(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Pager:
    """Where a page of a list starts, and the links to the pages before and after it."""

    offset: int
    shown: int
    total: int | None
    """How many there are in all, when the list can count them."""
    previous_url: str | None
    next_url: str | None

    @property
    def first(self) -> int:
        """The 1-based number of the page's first row (0 for an empty page)."""
        return self.offset + 1 if self.shown else 0


def pager(
    request: Request,
    route: str,
    params: dict[str, Any],
    at: int,
    shown: int,
    *,
    more: bool | None = None,
    total: int | None = None,
) -> Pager:
    """The paging of a list at offset ``at`` showing ``shown`` rows; there is a next page when
    ``more`` says so, else when ``total`` is beyond them. ``params`` (the filters, None or
    empty ones dropped) are kept in the links."""
    kept = {name: value for name, value in params.items() if value not in (None, "")}

    def link(start: int) -> str:
        query = urlencode({**kept, **({"offset": start} if start else {})})
        return url(request, route) + (f"?{query}" if query else "")

    if more is None:
        more = total is not None and at + shown < total
    previous_url = link(max(0, at - PAGE_SIZE)) if at > 0 else None
    next_url = link(at + PAGE_SIZE) if more else None
    return Pager(at, shown, total, previous_url, next_url)


def problem(request: Request, message: str, *, status: int, current: str = "", title: str = "Bad request") -> Response:
    """A page saying ``message`` (as text), with ``status``."""
    return render(request, "message.html", {"title": title, "message": message}, current=current, status=status)


def when(moment: dt.datetime | float | None) -> str:
    """A time as the pages show it: UTC, to the second ("-" for None)."""
    if moment is None:
        return "-"
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.fromtimestamp(moment, dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
