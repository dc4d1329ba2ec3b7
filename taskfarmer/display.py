"""What a user sees while a farmer runs: a live ``rich`` progress bar on a terminal, plain periodic lines otherwise.

The farmer knows nothing of this module: it hands every worker event to :meth:`Display.on_event`.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from taskfarmer.store import Counts

PLAIN_INTERVAL: Final = 60.0  # seconds between two progress lines in a batch log: never a flood


class Display:
    """Progress of one farmer over the list: done, failed, running, left, rate and ETA."""

    def __init__(self, counts: Counts, *, stream: TextIO | None = None, quiet: bool = False) -> None:
        """:param counts: the list's state when the farmer starts (other farmers may have done part of it)"""
        self._stream = stream or sys.stderr
        self._total = counts.total
        self._done = counts.finished + counts.failed
        self._failed = counts.failed
        self._running = 0
        self._started = time.monotonic()
        self._done_at_start = self._done
        self._next_line = self._started + PLAIN_INTERVAL
        self._quiet = quiet
        self._progress: Progress | None = None
        if not quiet and self._stream.isatty():
            self._progress = Progress(
                TextColumn("[bold]tasks"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                transient=False,
            )
            self._bar = self._progress.add_task("tasks", total=self._total, completed=self._done, detail="")
            self._progress.start()

    def on_event(self, event: tuple[Any, ...]) -> None:
        """Take a worker event: ``("start", worker, taskid, command)`` or ``("end", worker, taskid, status)``."""
        if event[0] == "start":
            self._running += 1
        elif event[0] == "end":
            self._running = max(self._running - 1, 0)
            self._done += 1
            self._failed += event[3] != "ok"
        self._update()

    def _update(self) -> None:
        if self._progress is not None:
            detail = f"[red]{self._failed} failed[/] {self._running} running {self._rate():.1f}/s"
            self._progress.update(self._bar, completed=self._done, detail=detail)
        elif not self._quiet and time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + PLAIN_INTERVAL
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return (self._done - self._done_at_start) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """:returns: the progress as one plain line"""
        left = max(self._total - self._done - self._running, 0)
        return (
            f"pytaskfarmer: {self._done}/{self._total} done ({self._failed} failed), {self._running} running,"
            f" {left} left, {self._rate():.1f} tasks/s"
        )

    def close(self) -> None:
        """Stop drawing (restores the terminal)."""
        if self._progress is not None:
            self._progress.stop()
