"""What a user sees while a farmer runs: a live ``rich`` view on a terminal, one plain line now and then otherwise.

The farmer knows nothing of this module: it hands every worker event, and a ``("tick",)`` each loop, to
:meth:`Display.on_event`. The numbers are the whole list's (other farmers may work on it too), read from the
work directory at most twice a second; this farmer's events feed the table of the tasks it runs now, the last
failures, and, in a batch log, one line per failed task. Log lines (``-v``) go above the live view, not through it.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

from taskfarmer.words import format_duration, plural, printable

if TYPE_CHECKING:
    from rich.console import Group
    from rich.live import Live

    from taskfarmer.store import Counts, WorkDir

PLAIN_INTERVAL: Final = 60.0  # seconds between two progress lines in a batch log: never a flood
_REFRESH: Final = 0.5  # seconds between two reads of the whole list's state on a terminal
_RUNNING_SHOWN: Final = 8
_FAILURES_SHOWN: Final = 5


class Display:
    """Progress of the list: done, failed, running, left, rate, ETA, and the tasks running here now."""

    def __init__(
        self, store: WorkDir, *, stream: TextIO | None = None, quiet: bool = False, interval: float = PLAIN_INTERVAL
    ) -> None:
        self._store = store
        self._stream = stream or sys.stderr
        self._counts = store.counts()
        self._started = time.monotonic()
        self._done_at_start = self._done
        self._next_refresh = self._started + _REFRESH
        self._next_line = self._started + interval
        self._interval = interval
        self._quiet = quiet
        self._running: dict[int, tuple[int, str, float]] = {}  # worker -> (task, command, started)
        self._failures: collections.deque[str] = collections.deque(maxlen=_FAILURES_SHOWN)
        self._stopping = ""
        self._live: Live | None = None
        if not quiet and self._stream.isatty():
            self._start_live()

    def _start_live(self) -> None:
        # rich is imported only here: a batch job's farmer (no terminal) does not pay for it at start-up.
        from rich.console import Console  # noqa: PLC0415
        from rich.live import Live  # noqa: PLC0415
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        self._progress = Progress(
            TextColumn("[bold]tasks"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        self._bar = self._progress.add_task("tasks", total=self._counts.total, completed=self._done, detail="")
        self._live = Live(self._render(), console=Console(file=self._stream), refresh_per_second=4, transient=False)
        self._live.start()

    @property
    def _done(self) -> int:
        return self._counts.finished + self._counts.failed

    @property
    def counts(self) -> Counts:
        """:returns: the whole list's counts, as last read"""
        return self._counts

    @property
    def live(self) -> bool:
        """:returns: whether a live view is drawn (then log lines must go through :meth:`log_handler`)"""
        return self._live is not None

    def announce(self, line: str) -> None:
        """Say one line (the start of the run), above the live view or in the batch log."""
        if not self._quiet:
            self._say(line)

    def log_handler(self) -> logging.Handler:
        """:returns: a logging handler that prints above the live view (or to the stream without one)"""
        display = self

        class _Above(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                display._say(self.format(record))  # the display's own helper

        handler = _Above()
        handler.setFormatter(logging.Formatter("%(asctime)s pytaskfarmer: %(message)s"))
        return handler

    def on_event(self, event: tuple[Any, ...]) -> None:
        """Take a farmer event: ``start`` (live view only)/``end``/``retry``/``returned``/``log`` of a worker,
        ``stopping`` (with the count of tasks running), ``tick``.
        """
        kind = event[0]
        if kind == "start":
            self._running[event[1]] = (event[2], printable(event[3]), time.monotonic())
        elif kind in {"end", "retry", "returned"}:
            self._running.pop(event[1], None)
            if kind == "end" and event[3] != "ok":
                self._failed(event[2], event[3], event[4] if len(event) > 4 else "")
        elif kind == "log":
            self._say(event[3])
        elif kind == "stopping":
            self._stopping = _stopping_line(event[1], grace=event[3], again=event[4])
            if self._live is not None or not self._quiet:  # -q: errors and the summary only
                self._say(f"pytaskfarmer: {self._stopping}")
        now = time.monotonic()
        if self._live is not None and now >= self._next_refresh:
            self._counts = self._store.counts()
            # Counting reads the state files: on a huge list, look less often (at most ~2 % of the time).
            self._next_refresh = time.monotonic() + max(_REFRESH, 50 * (time.monotonic() - now))
            self._live.update(self._render())
        elif self._live is None and not self._quiet and now >= self._next_line:
            self._next_line = now + self._interval
            self._counts = self._store.counts()
            self._stream.write(self.line() + "\n")
            self._stream.flush()

    def _failed(self, taskid: int, status: str, log: str) -> None:
        line = f"task {taskid} failed ({status}), log: {self._store.path / log if log else 'none (no output)'}"
        self._failures.append(line)
        if self._live is None and not self._quiet:
            self._say(f"pytaskfarmer: {line}")

    def _say(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self._stream.write(line + "\n")
            self._stream.flush()

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return (self._done - self._done_at_start) / elapsed if elapsed > 0 else 0.0

    def _eta(self) -> str:
        rate = self._rate()
        left = self._counts.left + self._counts.running
        if not rate or not left:
            return "-"
        return format_duration(left / rate)

    def line(self) -> str:
        """:returns: the progress as one plain line"""
        counts = self._counts
        return (
            f"pytaskfarmer: {self._done}/{counts.total} done ({counts.failed} failed), {counts.running} running,"
            f" {counts.left} left, {self._rate():.1f} tasks/s, ETA {self._eta()}"
        )

    def _render(self) -> Group:
        from rich.console import Group  # noqa: PLC0415  # see _start_live
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        counts = self._counts
        detail = (
            f"[green]{counts.finished} finished[/] [red]{counts.failed} failed[/] {counts.running} running"
            f" {counts.left} left  {self._rate():.1f}/s  ETA {self._eta()}"
        )
        self._progress.update(self._bar, total=counts.total, completed=self._done, detail=detail)
        table = Table(box=None, show_header=bool(self._running), pad_edge=False)
        for column in ("worker", "task", "for", "command"):
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=60 if column == "command" else None)
        now = time.monotonic()
        for worker, (task, command, started) in sorted(self._running.items())[:_RUNNING_SHOWN]:
            table.add_row(str(worker), str(task), format_duration(now - started), Text(command))  # no markup
        parts: list[Any] = [self._progress, table]
        if self._failures:
            parts.append(Text("last failures:\n" + "\n".join(self._failures), style="red", no_wrap=True))
        if self._stopping:
            parts.append(Text(self._stopping, style="bold yellow"))
        return Group(*parts)

    def close(self) -> None:
        """Stop drawing (restores the terminal)."""
        if self._live is not None:
            self._running.clear()
            self._counts = self._store.counts()
            self._live.update(self._render())
            self._live.stop()


def _stopping_line(running: int, *, grace: str, again: str) -> str:
    """:returns: what a stop does to the *running* tasks of this farmer (its idle workers just exit)
    :param again: ``"again"`` when the stop came from a Ctrl-C, ``""`` otherwise
    """
    if not running:
        return "stopping: no task is running here; the workers exit"
    them = "it" if running == 1 else "them"
    gets = "gets" if running == 1 else "get"
    ctrl_c = f"Ctrl-C {again}".rstrip()
    return (
        f"stopping: {plural(running, 'running task')} {gets} SIGTERM, SIGKILL after {grace} s;"
        f" {ctrl_c} to kill {them} now"
    )
