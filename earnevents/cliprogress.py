"""Progress of the ``earnevents`` command's bulk operations (``failed retry|remove --all``,
``dead remove --all``, ``scheduled cancel --all``), on stderr.

When stderr is a terminal: a rich progress bar (what, a bar, done/total, time elapsed),
moved item by item and left in place, complete, when done. Otherwise one plain line per
batch, ``remove: 500/1234``, for logs and scripts.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported when a bar is drawn, not at every start of the command
    from rich.progress import Progress, TaskID


def bar_on_terminal() -> bool:
    """True when stderr, where progress goes, is a terminal: a bar then, plain lines otherwise."""
    return sys.stderr.isatty()


class BatchProgress:
    """Progress of ``verb`` over ``total`` items, as a context manager.

    Call :meth:`advance` as each item is done and :meth:`batch_done` at the end of each
    batch: the bar moves on the first, the plain lines are printed on the second.
    """

    def __init__(self, verb: str, total: int) -> None:
        self.verb = verb
        self.total = total
        self.done = 0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> BatchProgress:
        if bar_on_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            self._bar = Progress(*columns, console=Console(file=sys.stderr, highlight=False))
            self._bar.start()
            self._task = self._bar.add_task(self.verb, total=self.total)
        return self

    def advance(self, count: int = 1) -> None:
        """``count`` more items done."""
        self.done += count
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done)

    def batch_done(self) -> None:
        """A batch ended: without a terminal, print how far along it is."""
        if self._bar is None:
            print(f"{self.verb}: {self.done}/{self.total}", file=sys.stderr, flush=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()  # the last state drawn, the cursor shown again, even when interrupted
