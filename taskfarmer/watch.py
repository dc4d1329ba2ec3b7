"""``taskfarmer status --watch WORKDIR``: a live view of a work directory, from any node, cheap for its filesystem.

Each refresh reads only what changed: ``finished``, ``failed`` and ``accounting.tsv`` are append-only between
rewrites, so their new bytes are read from where the last refresh stopped (a file that shrank or was replaced is
read again); the number of tasks comes from ``tasklist.json``; the slot files and the farmers' files are read each
time (one per worker and per farmer, whatever the list's length); the campaign's jobs every 30 s. ``status`` would
read the whole state files each time: megabytes for a million tasks.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import sys
import termios
import time
import tty
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from taskfarmer import status
from taskfarmer.store import slot_counts
from taskfarmer.words import format_duration, plural

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from taskfarmer.store import Counts, SlotView, WorkDir

_FIRST_READ: Final = 256 * 1024  # bytes of a file's tail read at the first refresh
_FAILURES_SHOWN: Final = 5
CAMPAIGN_EVERY: Final = 30.0  # seconds between two reads of the campaign's jobs


@dataclass
class AppendedLines:
    """The lines appended to a file since the last look: its size and inode tell what to read."""

    path: Path
    count: int = 0  # complete lines read since the file was (re)started
    _inode: int = 0
    _offset: int = 0
    _partial: bytes = b""
    _cut_line: bool = False  # the next read starts in the middle of a line (a tail read)

    def read(self, *, whole: bool = True) -> list[bytes]:
        """:returns: the complete lines added since the last call, every line again after a rewrite (with
        ``whole=False``, only the last lines of a file seen for the first time or rewritten)
        """
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return []
        if info.st_ino != self._inode or info.st_size < self._offset:
            self._inode, self.count, self._partial = info.st_ino, 0, b""
            self._offset = 0 if whole else max(info.st_size - _FIRST_READ, 0)
            self._cut_line = self._offset > 0
        if info.st_size == self._offset:
            return []
        with self.path.open("rb") as source:
            source.seek(self._offset)
            data = self._partial + source.read(info.st_size - self._offset)
        self._offset = info.st_size
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if self._cut_line:
            lines, self._cut_line = lines[1:], False
        self.count += len(lines)
        return lines


@dataclass
class HostRow:
    """One host in the view: its farmers' states, their workers, the tasks running there."""

    farmers: list[str] = field(default_factory=list)
    workers: int = 0
    running: int = 0
    oldest: float = 0.0  # seconds the longest-running task has run


@dataclass
class Snapshot:
    """What one refresh shows."""

    counts: Counts
    rate: float | None
    hosts: dict[str, HostRow]
    failures: list[str]
    campaign: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.time)

    @property
    def eta(self) -> float | None:
        """:returns: seconds to go at the current rate"""
        left = self.counts.left + self.counts.running
        return left / self.rate if self.rate and left else None


class Watcher:
    """Reads a work directory refresh after refresh, each time only what changed."""

    def __init__(self, store: WorkDir) -> None:
        self.store = store
        self._finished = AppendedLines(store.finished)
        self._failed = AppendedLines(store.failed)
        self._accounting = AppendedLines(store.accounting)
        self._tail = status.AccountingTail()
        self._failures: collections.deque[bytes] = collections.deque(maxlen=_FAILURES_SHOWN)  # the last failed lines
        self._total = AppendedLines(store.path / "tasklist.json")
        self._tasks = 0
        self._campaign: list[str] = []
        self._campaign_at = 0.0

    def snapshot(self) -> Snapshot:
        """:returns: the work directory now"""
        views = self.store.slot_views()
        counts = slot_counts(views)
        self._finished.read()
        rate = self._rate()  # before the failed lines: their attempts' logs are then read
        self._failures.extend(self._failed.read())
        counts.finished += self._finished.count
        counts.failed += self._failed.count
        counts.toprocess = max(self._total_tasks() - counts.total, 0)
        failures = [self._failure(line) for line in self._failures]
        return Snapshot(counts, rate, self._hosts(views), failures, self._campaign_lines())

    def _total_tasks(self) -> int:
        if self._total.read():  # tasklist.json was rewritten: the list grew (appended tasks)
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                self._tasks = int(json.loads(self._total.path.read_bytes())["tasks"])
        return self._tasks

    def _failure(self, line: bytes) -> str:
        taskid, state, command = [*line.decode(errors="replace").split(" ", 2), "", ""][:3]
        where = ""
        if taskid.isdigit():
            where = status.log_words(self._tail.log_of(self.store, int(taskid), state), self.store.path, taskid)
        return f"task {taskid} ({state}): {status.cut(command, 50)}  {where}"

    def _rate(self) -> float | None:
        for line in self._accounting.read(whole=False):
            self._tail.add(line)
        return self._tail.rate()

    def _hosts(self, views: list[SlotView]) -> dict[str, HostRow]:
        hosts: dict[str, HostRow] = collections.defaultdict(HostRow)
        now = time.time()
        for farmer in status.farmer_states(self.store):
            row = hosts[str(farmer["host"])]
            row.farmers.append(str(farmer["state"]).split(" (")[0])
            row.workers += int(str(farmer["workers"]))
        for view in views:
            for record in view.running():
                row = hosts[record.holder.host]
                row.running += 1
                row.oldest = max(row.oldest, now - record.started)
        return dict(sorted(hosts.items()))

    def _campaign_lines(self) -> list[str]:
        if time.monotonic() - self._campaign_at >= CAMPAIGN_EVERY:
            self._campaign_at = time.monotonic()
            summary, rows = status.campaign_summary(self.store)
            self._campaign = status.campaign_lines(summary, rows) if summary is not None else []
        return self._campaign


def render(store: WorkDir, shot: Snapshot) -> Group:
    """:returns: the full-screen view of *shot*"""
    counts = shot.counts
    done = counts.finished + counts.failed
    header = Text.assemble(
        (f"{store.path}", "bold"),
        f"  {time.strftime('%H:%M:%S', time.localtime(shot.at))}\n",
        f"{plural(counts.total, 'task')}: ",
        (f"{counts.finished} finished", "green"),
        ", ",
        (f"{counts.failed} failed", "red" if counts.failed else ""),
        f", {counts.running} running, {counts.left} to process",
    )
    rate = f"{shot.rate:.2f} tasks/s" if shot.rate else "no task ended in the last 10 minutes"
    eta = f", ETA {format_duration(shot.eta)}" if shot.eta else ""
    hosts = Table("host", "farmers", "workers", "running", "oldest task", box=None, header_style="bold")
    for host, row in shot.hosts.items():
        farmers = collections.Counter(row.farmers)
        hosts.add_row(
            Text(host),
            ", ".join(f"{n} {state}" for state, n in sorted(farmers.items())) or "-",
            str(row.workers),
            str(row.running),
            format_duration(row.oldest) if row.running else "-",
        )
    parts: list[object] = [
        header,
        _bar(done, counts.total),
        Text(f"{rate}{eta}"),
        Text(""),
        hosts if shot.hosts else Text("no farmer registered"),
    ]
    if shot.failures:
        parts += [Text("\nlast failures", style="bold"), *(Text(f"  {line}") for line in shot.failures)]
    if shot.campaign:
        parts += [Text(""), *(Text(line) for line in shot.campaign)]
    parts.append(Text("\nq or Ctrl-C: quit", style="dim"))
    return Group(*parts)  # type: ignore[arg-type]  # every part is a rich renderable


def _bar(done: int, total: int) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=max(total, 1), completed=done, width=60), f"{100 * done / max(total, 1):.0f}%")
    return grid


def line(shot: Snapshot) -> str:
    """:returns: *shot* on one line, for a log (output that is not a terminal)"""
    counts = shot.counts
    hosts = " ".join(f"{host}:{row.running}" for host, row in shot.hosts.items())
    rate = f"{shot.rate:.2f}/s" if shot.rate else "-"
    eta = format_duration(shot.eta) if shot.eta else "-"
    return (
        f"{time.strftime('%H:%M:%S', time.localtime(shot.at))} {counts.total} tasks: {counts.finished} finished,"
        f" {counts.failed} failed, {counts.running} running, {counts.left} to process; rate {rate}, ETA {eta};"
        f" running by host: {hosts or '-'}"
    )


def watch(store: WorkDir, *, interval: float, count: int | None, out: TextIO) -> None:
    """Show *store* every *interval* seconds, *count* times (``None``: until q or Ctrl-C)."""
    watcher = Watcher(store)
    refreshes = range(count) if count is not None else iter(int, 1)  # iter(int, 1): forever
    if not out.isatty():
        for index in refreshes:
            out.write(line(watcher.snapshot()) + "\n")
            out.flush()
            if count is None or index < count - 1:
                time.sleep(interval)
        return
    console = Console(file=out)
    with _keys() as pressed, Live(console=console, screen=True, auto_refresh=False) as live:
        for _ in refreshes:
            live.update(render(store, watcher.snapshot()), refresh=True)
            if pressed(interval) == "q":
                return


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """Read single keys from the terminal, without echo, while the view runs.

    :yields: a function that waits up to N seconds for a key and returns it (empty when none came)
    """
    if not sys.stdin.isatty():
        yield _sleep
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 1).decode(errors="replace").lower() if ready else ""

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return ""
