"""Progress bars for long work (train, backtest, evaluate, generate --output): drawn with rich
on stderr, and only when stderr is a terminal, so logs, pipes and tests see the same output
as without them.

Long loops take a `Progress` function and call it as `progress(what, done, total)`; a new
`what` starts a new bar (total None: a bar without an end, for reading of unknown length).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Progress", "no_progress", "progress_bars"]

Progress = Callable[[str, int, int | None], None]


@contextmanager
def progress_bars() -> Iterator[Progress | None]:
    """While the block runs, a `Progress` that draws bars on stderr (gone when it ends); None
    when stderr is no terminal. The block should print nothing meanwhile: its lines would
    cut through the bars."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bars

    bars = Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=False,  # stdout stays the report's, even with stderr on a terminal
        redirect_stderr=False,
    )
    tasks: dict[str, TaskID] = {}

    def update(what: str, done: int, total: int | None) -> None:
        if what not in tasks:
            for task in tasks.values():  # the step before is over: one bar at a time
                bars.remove_task(task)
            tasks.clear()
            tasks[what] = bars.add_task(what, total=total)
        bars.update(tasks[what], completed=done, total=total)

    with bars:
        yield update


def no_progress(what: str, done: int, total: int | None) -> None:
    """The `Progress` of a loop nobody watches."""
