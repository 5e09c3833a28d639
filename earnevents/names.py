"""The rules for names and ids: what may name an event, a handler, a queue, a record.

Names end up in Redis keys, in MongoDB filters and in log lines, so each is checked
where it enters earnevents (``Event(...)``, ``@event_handler``, ``init()``, the
failed-job and dead-letter calls), with a TypeError for a value that is not a str
and a ValueError naming the value and the rule for a str that breaks it:

- event names: 1-200 ASCII letters, digits and ``_ - :``, in segments separated by
  dots (``user.created``, ``billing:invoice.paid``); no empty segment.
- subscription patterns (:func:`check_pattern`): an event name in which a whole
  segment may also be ``*`` (one segment) or ``**`` (any number of segments).
- handler names: ``module.qualname`` as Python gives them, at most 200 characters:
  dot-separated Python identifiers, ``<locals>`` and ``<lambda>`` included.
- queue names: 1-200 ASCII letters, digits and ``. _ - :``; ``:``-separated parts
  that start with a letter or digit, none of them one of the words earnevents'
  own Redis keys use after a queue name (:data:`keys.RESERVED_WORDS`), and no
  ``earnevents:`` at the start. So a queue's keys (``earnevents:<queue>:failed``
  ...) can never be another queue's.
- event ids: 1-200 printable ASCII characters, no space (the default is 32 hex
  digits).
- senders (:func:`check_sender`): a class, which stands for its ``__qualname__``
  (``User``, ``Outer.Inner``), or a str of 1-200 letters, digits and ``_ . : - < >``
  (any qualname fits; the event log keeps an index per sender).
- failed-job and dead-item ids: 32 lowercase hex digits, as earnevents makes them.

None of these characters is special in a Redis key pattern (``* ? [ ] \\``), and
none is a control character or a line break, so a name cannot forge a log line.
"""

from __future__ import annotations

import re

from . import keys

MAX_LENGTH = 200
"""The longest event name, subscription pattern, handler name, queue name or event id."""

_SEGMENT = r"[A-Za-z0-9_:-]+"
_EVENT_NAME = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_PATTERN_SEGMENT = re.compile(rf"{_SEGMENT}|\*\*?")
_QUEUE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EVENT_ID = re.compile(r"[!-~]+")
_SENDER = re.compile(r"[\w.:<>-]+")
_RECORD_ID = re.compile(r"[0-9a-f]{32}")
_QUALNAME_MARKERS = frozenset({"<locals>", "<lambda>"})

EVENT_NAME_RULE = (
    f"a non-empty name of at most {MAX_LENGTH} ASCII letters, digits and '_-:', in segments separated by dots, "
    "such as 'user.created'"
)
PATTERN_RULE = f"an event name ({EVENT_NAME_RULE}) in which a whole segment may also be '*' or '**'"
HANDLER_NAME_RULE = f"module.qualname of at most {MAX_LENGTH} characters: Python identifiers separated by dots"
QUEUE_NAME_RULE = (
    f"a non-empty name of at most {MAX_LENGTH} ASCII letters, digits and '._-:', ':'-separated parts "
    "starting with a letter or digit, "
    f"no part one of {sorted(keys.RESERVED_WORDS)} and no '{keys.PREFIX}:' at the start"
)
SENDER_RULE = f"a class or a non-empty name of at most {MAX_LENGTH} letters, digits and '_.:-<>', such as 'User'"
EVENT_ID_RULE = f"a non-empty id of at most {MAX_LENGTH} printable ASCII characters, no spaces"
RECORD_ID_RULE = "32 lowercase hex digits"


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _refuse(what: str, value: str, rule: str) -> ValueError:
    shown = value if len(value) <= MAX_LENGTH + 20 else value[: MAX_LENGTH + 20] + "..."
    return ValueError(f"{what} {shown!r} is not allowed: use {rule}")


def check_event_name(value: object, what: str = "event name") -> str:
    """``value`` if it is a valid event name (no wildcards); TypeError/ValueError otherwise."""
    name = _text(value, what)
    if len(name) > MAX_LENGTH or not _EVENT_NAME.fullmatch(name):
        raise _refuse(what, name, EVENT_NAME_RULE)
    return name


def check_pattern(value: object, what: str = "subscription pattern") -> str:
    """``value`` if it is an event name or a subscription pattern with ``*``/``**`` segments."""
    pattern = _text(value, what)
    if len(pattern) > MAX_LENGTH or not all(_PATTERN_SEGMENT.fullmatch(s) for s in pattern.split(".")):
        raise _refuse(what, pattern, PATTERN_RULE)
    return pattern


def check_handler_name(value: object, what: str = "handler name") -> str:
    """``value`` if it is a ``module.qualname`` handler name."""
    name = _text(value, what)
    parts = name.split(".")
    if (
        len(name) > MAX_LENGTH
        or len(parts) < 2
        or not all(part.isidentifier() or part in _QUALNAME_MARKERS for part in parts)
    ):
        raise _refuse(what, name, HANDLER_NAME_RULE)
    return name


def check_queue_name(value: object, what: str = "queue name") -> str:
    """``value`` if it is a valid queue name (see the module docstring)."""
    name = _text(value, what)
    parts = name.split(":")
    if (
        len(name) > MAX_LENGTH
        or not all(_QUEUE_PART.fullmatch(part) and part not in keys.RESERVED_WORDS for part in parts)
        or name.startswith(f"{keys.PREFIX}:")
    ):
        raise _refuse(what, name, QUEUE_NAME_RULE)
    return name


def check_event_id(value: object, what: str = "event id") -> str:
    """``value`` if it is a valid event id."""
    event_id = _text(value, what)
    if len(event_id) > MAX_LENGTH or not _EVENT_ID.fullmatch(event_id):
        raise _refuse(what, event_id, EVENT_ID_RULE)
    return event_id


def check_sender(value: object, what: str = "sender") -> str | None:
    """The sender's name: a class's ``__qualname__``, a str as it is, None for None.

    So ``sender=User`` and ``sender="User"`` are interchangeable wherever a sender
    is given (publishing, ``@on``/``@event_handler`` filters). The name is the
    qualified name, not the module-qualified one: two classes called ``User`` in
    different modules are the same sender.
    """
    if value is None:
        return None
    if isinstance(value, type):
        value = value.__qualname__
    elif not isinstance(value, str):
        raise TypeError(f"{what} must be a class, a str or None, got {type(value).__name__}")
    if len(value) > MAX_LENGTH or not _SENDER.fullmatch(value):
        raise _refuse(what, value, SENDER_RULE)
    return value


def check_filter(value: object, what: str) -> str | None:
    """A name filter: None or a str (compared as it is, never as a pattern or an operator)."""
    return None if value is None else _text(value, what)


def is_record_id(value: object, what: str = "id") -> bool:
    """Whether ``value`` has the form of a failed-job or dead-item id; TypeError for a non-str.

    A str of another form names no record: lookups treat it as not found, without asking
    the store, so no value reaches a query but an id earnevents could have made.
    """
    return bool(_RECORD_ID.fullmatch(_text(value, what)))


def is_event_id(value: object, what: str = "event id") -> bool:
    """Whether ``value`` has the form of an event id; TypeError for a non-str.

    Lookups by event id (the event log) treat another str as not found, without asking the store.
    """
    event_id = _text(value, what)
    return len(event_id) <= MAX_LENGTH and bool(_EVENT_ID.fullmatch(event_id))
