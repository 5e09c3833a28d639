"""Log records whose values cannot forge log lines.

earnevents logs event names, handler names, ids, queue items and error messages,
some of which come from publishers or from handlers' exceptions. Every earnevents
module takes its logger from :func:`get_logger`, whose filter escapes line breaks and
other control characters in each record's arguments (``\\n`` becomes the two
characters ``\\`` ``n``) before any handler formats it, and frames a record's
traceback: each of its lines starts with ``"  | "``, so an exception message with a
newline in it stays inside the frame and never starts a line of its own.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping
from typing import Any

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
"""C0 and C1 controls, DEL, line and paragraph separators, zero-width and bidi controls,
lone surrogates: what can break a line, hide text or reorder it on a terminal."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

TRACEBACK_PREFIX = "  | "
"""Starts each line of a traceback in a record's text."""


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with control characters and line breaks written as escapes, on one line."""
    return _CONTROL.sub(_escape_one, text)


class _Escaped:
    """A log argument formatted (``%s``, ``%r``) with its control characters escaped."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return escape(repr(self.value))


def _safe(value: Any) -> Any:
    # Numbers stay themselves for %d and %g; their text has no control characters.
    if value is None or isinstance(value, (int, float, _Escaped)):
        return value
    return _Escaped(value)


def framed_traceback(exc_info: Any) -> str:
    """The traceback of ``exc_info`` with every line escaped and prefixed by :data:`TRACEBACK_PREFIX`."""
    text = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    return "\n".join(TRACEBACK_PREFIX + escape(line) for line in text.splitlines())


class EscapeFilter(logging.Filter):
    """Escapes a record's arguments and frames its traceback (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            record.msg = escape(str(record.msg))
        args = record.args
        if isinstance(args, Mapping):
            record.args = {key: _safe(value) for key, value in args.items()}
        elif args:
            record.args = tuple(_safe(arg) for arg in args)
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            try:
                record.exc_text = framed_traceback(record.exc_info)
            except Exception:  # formatting calls into the exception, which may be broken
                name = getattr(record.exc_info[0], "__name__", "exception")
                record.exc_text = TRACEBACK_PREFIX + escape(f"(the traceback of {name} could not be formatted)")
        return True


_FILTER = EscapeFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with earnevents' escaping filter (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
