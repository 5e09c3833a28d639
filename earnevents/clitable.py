"""Tables for the ``earnevents`` command on a terminal (rich), plain lines otherwise.

Cells are shown as text, never as rich markup: an error reading ``[bold]`` prints as
that, and control characters are escaped (``logtext.escape``) before rich sees them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .logtext import escape


def on_terminal() -> bool:
    """True when stdout is a terminal: tables then, plain lines for scripts otherwise."""
    return sys.stdout.isatty()


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``headers`` as a rich table, ``title`` above it."""
    table = Table(title=Text(escape(title)), title_justify="left", show_lines=False)
    for i, header in enumerate(headers):
        table.add_column(Text(header), no_wrap=i == 0)  # ids stay whole, to copy
    for row in rows:
        table.add_row(*(Text(escape(str(cell))) for cell in row))
    Console(highlight=False).print(table)
