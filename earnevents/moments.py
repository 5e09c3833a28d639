"""Durations and moments as an operator types them: ``90s``, ``12h``, ``7d``, or an ISO time.

Shared by the CLI (``--older-than``, ``--since``/``--until``) and the dashboard's filters,
so both read the same text the same way. Bad text is a ValueError saying what is expected.
"""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_LONGEST = 64
"""Characters of a moment's text looked at: longer text is neither a duration nor an ISO time."""


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number and one unit, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``.

    ValueError, saying what is expected, for anything else (no unit, a negative number, ...).
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: give a number and a unit (s, m, h, d, w), e.g. 90s, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_moment(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``text`` as a timezone-aware moment: a duration ago (``90s``, ``1h``, ``7d``: before
    ``now``, default the current time) or an ISO time (UTC when it names no zone).

    ValueError saying both forms for anything else, a duration reaching before year 1 included.
    """
    if not isinstance(text, str):
        raise TypeError(f"a moment must be a str, got {type(text).__name__}")
    shown = repr(text if len(text) <= _LONGEST else text[:_LONGEST] + "...")
    problem = f"{shown} is neither a duration ago (90s, 1h, 7d) nor an ISO time (2026-11-27T09:00:00Z)"
    if len(text) > _LONGEST:
        raise ValueError(problem)
    try:
        seconds = parse_duration(text)
    except ValueError:
        pass
    else:
        try:
            return (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(f"{shown} reaches before the year 1") from None
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(problem) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)
