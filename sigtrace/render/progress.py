"""A progress bar on stderr for inputs that take a while: events read, pods and nodes done.

The library reports progress through an optional callback, progress(what, done, total); this is
the one that draws it. Shown only when stderr is a terminal (a pipe, a file and the tests get
nothing) and only once the work has taken longer than delay_s, so quick runs never flash a bar.
The bar is transient: when the work is done it is gone and the terminal holds only the output.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

ProgressFn = Callable[[str, int, "int | None"], None]
DELAY_S = 1.0


def no_progress(what: str, done: int, total: int | None = None) -> None:
    """The callback of a run nobody watches."""


class _Bar:
    def __init__(self, stream: TextIO, delay_s: float):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=Console(file=stream, force_terminal=True), transient=True)
        self.tasks: dict[str, int] = {}
        self.lock = threading.Lock()
        self.started = False
        self.timer = threading.Timer(delay_s, self._start)
        self.timer.daemon = True
        self.timer.start()

    def _start(self) -> None:
        with self.lock:
            if not self.started:
                self.started = True
                self.progress.start()

    def __call__(self, what: str, done: int, total: int | None = None) -> None:
        with self.lock:
            if what not in self.tasks:
                self.tasks[what] = self.progress.add_task(what, total=total)
            self.progress.update(self.tasks[what], completed=done, total=total)

    def close(self) -> None:
        self.timer.cancel()
        with self.lock:
            if self.started:
                self.progress.stop()
            self.started = True          # a timer that fires late starts nothing


@contextmanager
def progress_on_stderr(stream: TextIO | None = None, delay_s: float | None = None) -> Iterator[ProgressFn]:
    """A progress callback drawing on stream (stderr) when it is a terminal, else one that does nothing.
    delay_s: how long the work runs before the bar shows (DELAY_S)."""
    stream = stream if stream is not None else sys.stderr
    delay_s = DELAY_S if delay_s is None else delay_s
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        yield no_progress
        return
    bar = _Bar(stream, delay_s)
    try:
        yield bar
    finally:
        bar.close()
