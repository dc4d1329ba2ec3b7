"""The figures of ``taskfarmer report``, computed from ``accounting.tsv`` and the state files (no plotting here).

``accounting.tsv`` is read once, streaming, into flat arrays (the ``array`` module: 8 bytes per value, no object per
row), so a million attempts take a few seconds and some tens of megabytes. The state files (``toprocess``, the slot
files, ``finished``, ``failed``) are read once more, for the commands of the few tasks the report names.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from taskfarmer.store._records import LOST, SKIPPED, STOPPED

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from taskfarmer.store import WorkDir

OK: Final = "ok"
SUCCEEDED: Final = frozenset((OK, SKIPPED))  # the statuses of an attempt that sent its task to ``finished``
NOT_RUN_TO_END: Final = frozenset((SKIPPED, STOPPED, LOST))  # attempts whose duration says nothing about the task
SLOWEST_SHOWN: Final = 20
FAILED_SHOWN: Final = 200
_COLUMNS: Final = 14


@dataclass(frozen=True)
class NamedAttempt:
    """One attempt the report names in a table (a failed task, or one of the slowest)."""

    task: int
    attempt: int
    status: str
    seconds: float
    host: str
    log: str
    command: str = ""


@dataclass
class Accounting:
    """The columns of ``accounting.tsv`` the plots need, one entry per attempt, in the file's order."""

    start: array[float] = field(default_factory=lambda: array("d"))
    end: array[float] = field(default_factory=lambda: array("d"))
    seconds: array[float] = field(default_factory=lambda: array("d"))  # the ``seconds`` column
    host: array[int] = field(default_factory=lambda: array("l"))  # index into ``hosts``
    ran_to_end: array[int] = field(default_factory=lambda: array("b"))  # 1: not stopped, lost or skipped
    peak_rss_kb: array[int] = field(default_factory=lambda: array("q"))
    hosts: list[str] = field(default_factory=list)
    finished_ends: array[float] = field(default_factory=lambda: array("d"))  # end times of succeeded attempts
    attempts_by_status: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    slowest: list[NamedAttempt] = field(default_factory=list)  # longest first
    logs: dict[int, str] = field(default_factory=dict)  # last log of each task asked for (the failed ones)

    @property
    def size(self) -> int:
        """:returns: the number of attempts"""
        return len(self.start)


@dataclass
class ReportData:
    """Everything ``taskfarmer report`` shows."""

    workdir: str
    total: int
    finished: int
    failed: int
    running: int
    left: int
    accounting: Accounting
    failures_by_status: dict[str, int]
    failed_tasks: list[NamedAttempt]  # the first FAILED_SHOWN lines of ``failed``

    @property
    def span(self) -> tuple[float, float] | None:
        """:returns: the first start and the last end of any attempt, ``None`` when none ran"""
        acc = self.accounting
        return (min(acc.start), max(acc.end)) if acc.size else None

    @property
    def cpu_hours(self) -> float:
        """:returns: the CPU time (user + system) of every attempt, in hours"""
        return self.accounting.cpu_seconds / 3600


def collect(store: WorkDir) -> ReportData:
    """Read the state of *store* into the report's figures."""
    counts = store.counts()
    failures_by_status, failed_tasks = read_failed(store.failed)
    wanted = {task.task for task in failed_tasks}
    with _open_lines(store.accounting) as lines:
        accounting = parse_accounting(lines, logs_of=wanted)
    commands = find_commands(store, {attempt.task for attempt in accounting.slowest})
    accounting.slowest = [_with_command(attempt, commands) for attempt in accounting.slowest]
    failed_tasks = [_with_log(task, accounting.logs) for task in failed_tasks]
    return ReportData(
        workdir=str(store.path.resolve()),  # the page may be read elsewhere: absolute paths
        total=counts.total,
        finished=counts.finished,
        failed=counts.failed,
        running=counts.running,
        left=counts.left,
        accounting=accounting,
        failures_by_status=failures_by_status,
        failed_tasks=failed_tasks,
    )


@contextlib.contextmanager
def _open_lines(path: Path) -> Iterator[Iterable[bytes]]:
    """The lines of a file, none when it is missing (a work directory where no task ended yet)."""
    try:
        source = path.open("rb")
    except FileNotFoundError:
        yield ()
        return
    with source:
        yield source


def parse_accounting(lines: Iterable[bytes], *, logs_of: set[int] | None = None) -> Accounting:
    """Parse the lines of ``accounting.tsv`` (its header and any short or malformed line are skipped).

    :param logs_of: the tasks whose last log to keep in ``Accounting.logs``
    :returns: the columns, the succeeded attempts' end times, the status counts and the slowest attempts
    """
    acc = Accounting()
    host_index: dict[str, int] = {}
    slowest: list[tuple[float, int, NamedAttempt]] = []  # a heap of the SLOWEST_SHOWN longest
    wanted = logs_of or set()
    for row, line in enumerate(lines):
        fields = line.rstrip(b"\r\n").split(b"\t")
        if len(fields) < _COLUMNS or not fields[0].isdigit():
            continue
        task, status, host, log = int(fields[0]), fields[2].decode(), fields[7].decode(), fields[13].decode()
        start, end, seconds = float(fields[4]), float(fields[5]), float(fields[6])
        acc.start.append(start)
        acc.end.append(end)
        acc.seconds.append(seconds)
        acc.host.append(host_index.setdefault(host, len(host_index)))
        acc.ran_to_end.append(status not in NOT_RUN_TO_END)
        acc.peak_rss_kb.append(int(fields[10]))
        acc.cpu_seconds += float(fields[11]) + float(fields[12])
        acc.attempts_by_status[status] = acc.attempts_by_status.get(status, 0) + 1
        if status in SUCCEEDED:
            acc.finished_ends.append(end)
        if task in wanted:
            acc.logs[task] = log
        if len(slowest) < SLOWEST_SHOWN or seconds > slowest[0][0]:
            named = NamedAttempt(task, int(fields[1]), status, seconds, host, log)
            (heapq.heappush if len(slowest) < SLOWEST_SHOWN else heapq.heapreplace)(slowest, (seconds, -row, named))
    acc.hosts = list(host_index)
    acc.slowest = [named for _, _, named in sorted(slowest, key=lambda item: (-item[0], -item[1]))]
    return acc


def read_failed(path: Path) -> tuple[dict[str, int], list[NamedAttempt]]:
    """:returns: the number of failed tasks per status, and the first FAILED_SHOWN of them (``ID STATUS COMMAND``)"""
    by_status: dict[str, int] = {}
    shown: list[NamedAttempt] = []
    with _open_lines(path) as lines:
        for line in lines:
            taskid, status, command = [*line.decode(errors="replace").rstrip("\n").split(" ", 2), "", ""][:3]
            if not taskid.isdigit():
                continue
            by_status[status] = by_status.get(status, 0) + 1
            if len(shown) < FAILED_SHOWN:
                shown.append(NamedAttempt(int(taskid), 0, status, 0.0, "", "", command))
    return dict(sorted(by_status.items(), key=lambda item: (-item[1], item[0]))), shown


def find_commands(store: WorkDir, tasks: set[int]) -> dict[int, str]:
    """:returns: the command of each of *tasks*, wherever the task is now: queued, held by a worker, or ended

    A slow attempt may have been stopped or lost (its task back in the queue) or retried (its task running again):
    its task is then in no ``finished`` or ``failed`` line. The files are read without the lock, in the order a
    task moves through them, so a task that moves on meanwhile is found in a later file.
    """
    commands = read_commands([store.toprocess], tasks)
    commands |= {task.taskid: task.command for task in store.claimed_tasks() if task.taskid in tasks}
    return commands | read_commands([store.finished, store.failed], tasks - commands.keys())


def read_commands(paths: Iterable[Path], tasks: set[int]) -> dict[int, str]:
    """:returns: the command of each of *tasks* found in ``toprocess`` (``ID[@ATTEMPT[:LOST]] COMMAND``),
    ``finished`` (``ID COMMAND``) or ``failed`` (``ID STATUS COMMAND``) lines
    """
    commands: dict[int, str] = {}
    for path in paths:
        field = 2 if path.name == "failed" else 1
        commands |= _commands_in(path, tasks - commands.keys(), field=field)
    return commands


def _commands_in(path: Path, tasks: set[int], *, field: int) -> dict[int, str]:
    """:returns: the command of each of *tasks* in the state file *path*, where it is the space-separated *field*"""
    commands: dict[int, str] = {}
    if not tasks:
        return commands  # all found already: spare reading a file as long as the tasklist
    with _open_lines(path) as lines:
        for line in lines:
            fields = line.decode(errors="replace").rstrip("\n").split(" ", field)
            taskid = fields[0].partition("@")[0]
            if len(fields) > field and taskid.isdigit() and int(taskid) in tasks:
                commands[int(taskid)] = fields[field]
    return commands


def _with_command(attempt: NamedAttempt, commands: dict[int, str]) -> NamedAttempt:
    return NamedAttempt(**{**attempt.__dict__, "command": commands.get(attempt.task, "")})


def _with_log(attempt: NamedAttempt, logs: dict[int, str]) -> NamedAttempt:
    return NamedAttempt(**{**attempt.__dict__, "log": logs.get(attempt.task, "")})


def finished_over_time(acc: Accounting) -> tuple[list[float], list[int]]:
    """:returns: the end times of the succeeded attempts, sorted, and how many had finished at each"""
    ends = sorted(acc.finished_ends)
    return ends, list(range(1, len(ends) + 1))


def running_by_host(acc: Accounting) -> dict[str, tuple[list[float], list[int]]]:
    """:returns: for each host, the times its number of running attempts changed and that number from then on

    An attempt runs from its start (included) to its end (excluded): one that starts as another ends on the same
    worker does not count twice.
    """
    starts: list[array[float]] = [array("d") for _ in acc.hosts]
    ends: list[array[float]] = [array("d") for _ in acc.hosts]
    for start, end, host in zip(acc.start, acc.end, acc.host, strict=True):
        starts[host].append(start)
        ends[host].append(end)
    curves: dict[str, tuple[list[float], list[int]]] = {}
    for name, host_starts, host_ends in zip(acc.hosts, starts, ends, strict=True):
        times: list[float] = []
        running: list[int] = []
        level = 0
        # Two sorted runs merged, rather than 2N (time, change) pairs sorted: a fraction of the memory and time.
        changes = heapq.merge(((end, -1) for end in sorted(host_ends)), ((start, 1) for start in sorted(host_starts)))
        for instant, delta in changes:  # at one instant, ends (-1) come before starts (+1)
            level += delta
            if times and times[-1] == instant:
                running[-1] = level
            else:
                times.append(instant)
                running.append(level)
        curves[name] = (times, running)
    return curves


def max_running(acc: Accounting) -> dict[str, int]:
    """:returns: the most attempts that ran at once on each host"""
    return {host: max(running, default=0) for host, (_, running) in running_by_host(acc).items()}


def durations(acc: Accounting) -> list[float]:
    """:returns: the seconds of each attempt that ran to its end (not stopped, lost or skipped)"""
    return [seconds for seconds, ran in zip(acc.seconds, acc.ran_to_end, strict=True) if ran]


def peak_memory_mb(acc: Accounting) -> list[float]:
    """:returns: the peak memory (MiB) of each attempt that ran to its end and has one recorded"""
    return [kb / 1024 for kb, ran in zip(acc.peak_rss_kb, acc.ran_to_end, strict=True) if ran and kb > 0]


def histogram(values: Iterable[float], *, bins: int = 30) -> tuple[list[float], list[int]]:
    """Count *values* in *bins* bins: log-spaced when they are positive and span more than two decades.

    :returns: the ``bins + 1`` edges and the count in each bin (the last bin includes its upper edge); no edges
        and no counts for no values
    """
    data = list(values)
    if not data:
        return [], []
    low, high = min(data), max(data)
    logarithmic = low > 0 and high / low > 100
    scale, unscale = (math.log10, lambda x: 10**x) if logarithmic else (float, float)
    first, last = scale(low), scale(high)
    width = (last - first) / bins or 1.0
    counts = [0] * bins
    for value in data:
        counts[min(int((scale(value) - first) / width), bins - 1)] += 1
    edges = [unscale(first + width * i) for i in range(bins + 1)]
    return edges, counts


def header_rows(data: ReportData) -> Iterator[tuple[str, str]]:
    """:returns: the header of the report as (label, value) pairs"""
    span = data.span
    yield "work directory", data.workdir
    yield "tasks", f"{data.total} total: {data.finished} finished, {data.failed} failed, {data.left} left"
    if data.running:
        yield "running", f"{data.running} now"
    yield "attempts", str(data.accounting.size)
    if span is not None:
        yield "time span", f"{utc(span[0])} to {utc(span[1])} ({_hours(span[1] - span[0])})"
    cpu = data.accounting.cpu_seconds
    yield "CPU time", f"{data.cpu_hours:.2f} hours ({_hours(cpu)}: user + system, every attempt)"


def utc(epoch: float) -> str:
    """:returns: *epoch* as a UTC date and time"""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
