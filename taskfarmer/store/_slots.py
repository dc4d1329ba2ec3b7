"""Slot files: what one worker holds, as a small append-only log (``running/FARMER.WORKER``).

A worker claims tasks in batches. Its slot file then reads, one JSON object per line::

    {"tasks": [[ID, ATTEMPT, COMMAND], ...], "farmer": ..., "worker": ..., "holder": {...}, "claimed": T}
    {"start": I, "attempt": A, "at": T, "log": PATH}               task I of the batch started
    {"end": I, "attempt": A, "state": "finished", "line": ..., "account": ..., "event": {...}}

The first line is written under the work directory lock, through the journal, when the batch is claimed. The
``start`` and ``end`` lines are appended by the worker alone, without the lock: each costs one write on a
descriptor the worker keeps open, instead of a dozen requests under the one lock every farmer shares. An ``end``
line carries everything the shared files need (the ``finished``/``failed`` line, the accounting line, the timeline
event), so that the outcomes of a batch reach those files in one locked change when the worker claims its next
batch, or, if the worker died, when any farmer recovers its slot. A task with an ``end`` line is done: it never
runs again. A task started without one goes back to the queue, as does every task of the batch not started yet.

An empty slot file is an idle slot. A line cut short (the node crashed during the write) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from taskfarmer.store import _files
from taskfarmer.store._leases import Holder, SlotRecord, stack_entry

if TYPE_CHECKING:
    from pathlib import Path

FINISHED: Final = "finished"
FAILED: Final = "failed"
RETRY: Final = "retry"  # an attempt that failed and runs again at once: accounted, still held


@dataclass(frozen=True)
class Task:
    """One line of the tasklist: its ID (0-based line number), its command, and which attempt this is."""

    taskid: int
    command: str
    attempt: int = 1
    lost: int = 0  # farmers (or workers) that died while running it: a task that kills them is given up on


@dataclass(frozen=True)
class Ended:
    """How an attempt ended, as the shared files will record it."""

    index: int
    attempt: int
    state: str  # FINISHED, FAILED or RETRY
    line: bytes  # the ``finished`` or ``failed`` line (empty for a retry)
    account: bytes  # the ``accounting.tsv`` line
    event: dict[str, Any]  # the ``timeline.json`` event

    def to_json(self) -> bytes:
        """:returns: the slot file line"""
        record = {
            "end": self.index,
            "attempt": self.attempt,
            "state": self.state,
            "line": self.line.decode(errors="surrogateescape"),
            "account": self.account.decode(errors="surrogateescape"),
            "event": self.event,
        }
        return json.dumps(record).encode() + b"\n"

    @classmethod
    def from_fields(cls, raw: dict[str, Any]) -> Ended:
        """:returns: the record of a parsed slot file line"""
        return cls(
            index=int(raw["end"]),
            attempt=int(raw["attempt"]),
            state=str(raw["state"]),
            line=str(raw["line"]).encode(errors="surrogateescape"),
            account=str(raw["account"]).encode(errors="surrogateescape"),
            event=dict(raw["event"]),
        )


@dataclass(frozen=True)
class Started:
    """An attempt of a task of the batch began."""

    index: int
    attempt: int
    at: float
    log: str = ""


@dataclass
class SlotView:
    """A slot file read back: the batch and what became of each of its tasks."""

    farmer: str
    worker: int
    holder: Holder
    claimed: float
    tasks: list[Task]
    started: dict[int, Started] = field(default_factory=dict)  # index -> its latest attempt
    ended: list[Ended] = field(default_factory=list)

    def done(self) -> set[int]:
        """:returns: the indices of the tasks that ended for good (finished or failed)"""
        return {end.index for end in self.ended if end.state != RETRY}

    def running(self) -> list[SlotRecord]:
        """:returns: the tasks started and not ended for good, as records of what runs"""
        done = self.done()
        records = []
        for index, start in sorted(self.started.items()):
            if index in done or self._retry_pending(index, start):
                continue
            task = self.tasks[index]
            records.append(
                SlotRecord(task.taskid, task.command, self.farmer, self.worker, self.holder, start.at, start.attempt)
            )
        return records

    def _retry_pending(self, index: int, start: Started) -> bool:
        # A failed attempt that will run again, whose next start is not written yet: not running, still held.
        return any(e.index == index and e.state == RETRY and e.attempt >= start.attempt for e in self.ended)

    def accounted(self, start: Started) -> bool:
        """:returns: whether the attempt *start* began has its ``end`` line (its accounting is written)"""
        return any(e.index == start.index and e.attempt == start.attempt for e in self.ended)

    def unstarted(self) -> list[int]:
        """:returns: the indices of the tasks not started yet, in batch order"""
        return [i for i in range(len(self.tasks)) if i not in self.started and i not in self.done()]

    def back_to_queue(self) -> list[tuple[Task, Started | None]]:
        """:returns: every task not ended for good, with its interrupted attempt (``None``: never started)"""
        done = self.done()
        return [(task, self.started.get(i)) for i, task in enumerate(self.tasks) if i not in done]


def claim_line(*, slot: SlotRecord, tasks: list[Task]) -> bytes:
    """:returns: the first line of a slot file that holds *tasks*"""
    record = {
        "tasks": [[t.taskid, t.attempt, t.command, t.lost] for t in tasks],
        "farmer": slot.farmer,
        "worker": slot.worker,
        "holder": slot.holder.__dict__,
        "claimed": time.time(),
    }
    return json.dumps(record).encode() + b"\n"


def parse(data: bytes) -> SlotView | None:
    """:returns: the slot file's content, ``None`` for an idle slot
    :raises ValueError: for a damaged first line (``KeyError``/``TypeError`` too)
    """
    lines = data.split(b"\n")[:-1]  # the part after the last newline is an incomplete write
    if not lines or not lines[0].strip():
        return None
    head = json.loads(lines[0])
    if "task" in head:
        return _legacy_view(data)
    view = SlotView(
        farmer=str(head["farmer"]),
        worker=int(head["worker"]),
        holder=_holder(head["holder"]),
        claimed=float(head["claimed"]),
        tasks=[Task(int(t[0]), str(t[2]), int(t[1]), int(t[3]) if len(t) > 3 else 0) for t in head["tasks"]],
    )
    for line in lines[1:]:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            _add(view, json.loads(line))
    return view


def _add(view: SlotView, raw: dict[str, Any]) -> None:
    if "start" in raw:
        index = int(raw["start"])
        view.started[index] = Started(index, int(raw["attempt"]), float(raw["at"]), str(raw.get("log", "")))
    elif "end" in raw:
        view.ended.append(Ended.from_fields(raw))


def _legacy_view(data: bytes) -> SlotView | None:
    """A slot file of the previous version: one running task, as one JSON record."""
    record = SlotRecord.from_json(data)
    if record is None:
        return None
    task = Task(record.task, record.command, record.attempt)
    view = SlotView(record.farmer, record.worker, record.holder, record.started, [task])
    view.started[0] = Started(0, record.attempt, record.started)
    return view


def _holder(raw: dict[str, Any]) -> Holder:
    return Holder(**{key: raw[key] for key in ("host", "boot", "pid", "ctime")})


def holds_tasks(data: bytes) -> bool:
    """:returns: whether a slot file's content *data* holds a batch (not idle, not damaged)"""
    try:
        return parse(data) is not None
    except (ValueError, KeyError, TypeError):
        return False


def read(path: Path) -> SlotView | None:
    """:returns: the slot file at *path*, ``None`` when idle, missing or damaged"""
    try:
        return parse(_files.read_small(path))
    except (ValueError, KeyError, TypeError):
        return None


def requeue_entry(task: Task, started: Started | None, *, died: bool) -> bytes:
    """:returns: the ``toprocess`` line of a task given back: its next attempt if it had started, counting the
    death of its holder (*died*) if it was running then
    """
    attempt = started.attempt + 1 if started is not None else task.attempt
    return stack_entry(task.taskid, task.command, attempt, task.lost + (died and started is not None))


class SlotLog:
    """The worker's side of its slot file: the batch it holds and the lines it appends to it, lock-free."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tasks: list[Task] = []
        self.ended: list[Ended] = []  # outcomes not yet in the shared files
        self.started: dict[int, Started] = {}
        self._fd: int | None = None
        self._end = 0
        self.recoveries = -1  # the work directory's count of taken-away slots when this batch was claimed

    def hold(self, tasks: list[Task], *, size: int, recoveries: int) -> None:
        """Start a new batch: the slot file now holds *tasks* in *size* bytes (written under the lock)."""
        self.close()
        self.tasks, self.ended, self.started = tasks, [], {}
        self._end, self.recoveries = size, recoveries
        if tasks:
            self._fd = os.open(self.path, os.O_WRONLY)

    def start(self, index: int, *, attempt: int, log: str) -> None:
        """Record that task *index* of the batch starts its attempt *attempt*."""
        self._record_start(Started(index, attempt, time.time(), log))

    def record_log(self, index: int, log: str) -> None:
        """Record where the output of the current attempt of task *index*, stopped, is: its start line is written
        again with *log* (``""``: it printed nothing), which the record of its interruption then names.
        """
        if log != self.started[index].log:
            self._record_start(replace(self.started[index], log=log))

    def _record_start(self, started: Started) -> None:
        self.started[started.index] = started
        raw = {"start": started.index, "attempt": started.attempt, "at": started.at, "log": started.log}
        self._append(json.dumps(raw).encode() + b"\n")

    def end(self, ended: Ended) -> None:
        """Record how an attempt ended: from now on the task is done (or, for a retry, runs again)."""
        self.ended.append(ended)
        self._append(ended.to_json())

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            msg = f"slot file {self.path} holds no batch"
            raise RuntimeError(msg)
        _files.pwrite_all(self._fd, line, self._end)
        self._end += len(line)

    def view(self, slot: SlotRecord) -> SlotView:
        """:returns: what the slot file says, from what this worker wrote"""
        return SlotView(
            slot.farmer, slot.worker, slot.holder, 0.0, list(self.tasks), dict(self.started), list(self.ended)
        )

    @property
    def size(self) -> int:
        """:returns: the bytes this worker wrote to its slot file for the current batch"""
        return self._end

    def close(self) -> None:
        """Let go of the slot file's descriptor (written data reaches a network filesystem's server now)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
