"""The one escaping helper every earnevents logger goes through."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest

import earnevents
from earnevents import logtext


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain text, 'quoted' \\ back", "plain text, 'quoted' \\ back"),
        ("a\nb\r\nc\td", "a\\nb\\r\\nc\\td"),
        ("\x00\x1b[31m\x7f\x85", "\\x00\\x1b[31m\\x7f\\x85"),
        ("a\u2028b\u2029c\u202ed\ufeff", "a\\u2028b\\u2029c\\u202ed\\ufeff"),
        ("\ud800", "\\ud800"),
        ("émoji 🎉 ok", "émoji 🎉 ok"),
    ],
)
def test_escape_writes_control_characters_and_line_breaks_as_escapes(text, escaped):
    assert logtext.escape(text) == escaped


def test_the_filter_escapes_every_argument_and_keeps_numbers_for_numeric_formats(caplog):
    log = logtext.get_logger("earnevents.test_logtext")
    with caplog.at_level(logging.INFO, logger="earnevents.test_logtext"):
        log.info("%s | %r | %d tries | %.2g s | %s", "a\nb", ValueError("x\ny"), 3, 0.25, None)
        log.info("%(who)s said %(what)r", {"who": "eve\nFAKE", "what": "hi\n"})
    assert [r.getMessage() for r in caplog.records] == [
        "a\\nb | ValueError('x\\ny') | 3 tries | 0.25 s | None",
        "eve\\nFAKE said 'hi\\n'",
    ]


def test_a_traceback_is_framed_line_by_line(caplog):
    log = logtext.get_logger("earnevents.test_logtext")
    with caplog.at_level(logging.ERROR, logger="earnevents.test_logtext"):
        try:
            raise KeyError("k\nFAKE")
        except KeyError:
            log.exception("failed")
    text = logging.Formatter("%(message)s").format(caplog.records[0])
    first, *rest = text.splitlines()
    assert first == "failed" and rest and all(line.startswith(logtext.TRACEBACK_PREFIX) for line in rest)


def test_every_earnevents_logger_escapes():
    # Given every earnevents module imported
    modules = [importlib.import_module(m.name) for m in pkgutil.walk_packages(earnevents.__path__, "earnevents.")]
    # Then every logger a module keeps carries the filter (a plain logging.getLogger would not)
    loggers = {
        f"{module.__name__}.{attr}": value
        for module in modules
        for attr, value in vars(module).items()
        if isinstance(value, logging.Logger)
    }
    assert "earnevents.worker.dispatch.log" in loggers
    unfiltered = [
        name for name, logger in loggers.items() if not any(isinstance(f, logtext.EscapeFilter) for f in logger.filters)
    ]
    assert unfiltered == []
