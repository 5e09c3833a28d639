"""Subscription patterns: which event names ``user.*`` or ``billing.**`` subscribes to.

A pattern is an event name in which a whole segment may also be a wildcard
(:func:`earnevents.names.check_pattern` checks the form):

- ``*`` matches exactly one segment: ``user.*`` matches ``user.created``, not
  ``user`` nor ``user.profile.updated``.
- ``**`` matches any number of segments, none included (as AMQP's ``#``):
  ``user.**`` matches ``user``, ``user.created`` and ``user.profile.updated``;
  ``**`` alone matches every event name.

Matching is done once per (pattern, event name) by whoever caches the result (the
handler registry); the compiled form is a regular expression over the name with a
leading dot, so a ``**`` that matches no segment leaves no stray dot behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable

ONE = "*"
"""The wildcard segment matching exactly one segment."""

ANY = "**"
"""The wildcard segment matching any number of segments, none included."""


def is_pattern(name: str) -> bool:
    """Whether ``name`` (a checked name or pattern) has a wildcard segment."""
    return "*" in name


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A predicate telling whether an event name matches ``pattern``.

    ``pattern`` must already be checked (:func:`earnevents.names.check_pattern`).
    Consecutive ``**`` segments are folded into one: they match the same names,
    and fewer of them keeps the regular expression from backtracking much.
    """
    parts: list[str] = []
    for segment in pattern.split("."):
        if segment == ANY:
            if parts and parts[-1] == ANY:
                continue
            parts.append(ANY)
        else:
            parts.append(segment)
    regex = "".join(
        r"(?:\.[^.]+)*" if part == ANY else r"\.[^.]+" if part == ONE else re.escape("." + part) for part in parts
    )
    match = re.compile(regex).fullmatch

    def matches(event_name: str) -> bool:
        return match("." + event_name) is not None

    return matches
