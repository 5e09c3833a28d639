"""Tables for the ``earnevents`` command on a terminal (rich), plain lines otherwise.

Cells are shown as text, never as rich markup: an error reading ``[bold]`` prints as
that, and control characters are escaped (``logtext.escape``) before rich sees them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from .logtext import escape

if TYPE_CHECKING:  # rich is imported when a table is drawn, not at every start of the command
    from rich.table import Table


def on_terminal() -> bool:
    """True when stdout is a terminal: tables then, plain lines for scripts otherwise."""
    return sys.stdout.isatty()


def make_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    """``rows`` under ``headers`` as a rich table, ``title`` above it (all shown as text)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(escape(title)), title_justify="left", show_lines=False)
    for i, header in enumerate(headers):
        table.add_column(Text(header), no_wrap=i == 0)  # ids stay whole, to copy
    for row in rows:
        table.add_row(*(Text(escape(str(cell))) for cell in row))
    return table


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``headers`` as a rich table, ``title`` above it."""
    from rich.console import Console

    Console(highlight=False).print(make_table(title, headers, rows))


Draw = Callable[[str, Sequence[str], Sequence[Sequence[object]]], None]
"""What :func:`live_table` gives: draw(title, headers, rows) replaces the table shown."""


@contextlib.contextmanager
def live_table() -> Iterator[Draw]:
    """A table redrawn in place on the terminal (rich Live): each draw replaces the last
    one instead of printing another below it. On leaving, even by an interruption, the
    last table stays on screen and the cursor is shown again."""
    from rich.console import Console
    from rich.live import Live

    with Live(console=Console(highlight=False), auto_refresh=False) as live:

        def draw(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
            live.update(make_table(title, headers, rows), refresh=True)

        yield draw
