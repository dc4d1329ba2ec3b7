"""How an attempt is written down: its ``finished``/``failed`` line, its accounting line, its timeline event."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from taskfarmer.store._leases import farmer_pid
from taskfarmer.store._slots import FAILED, FINISHED, RETRY, Ended, Started, Task

if TYPE_CHECKING:
    from taskfarmer.store._leases import SlotRecord

EMPTY_TIMELINE: Final = b"[\n]\n"
ACCOUNTING_COLUMNS: Final = (
    "task attempt status returncode start end seconds host worker farmer peak_rss_kb cpu_user_s cpu_system_s log"
)
ACCOUNTING_HEADER: Final = "\t".join(ACCOUNTING_COLUMNS.split()).encode() + b"\n"
SKIPPED: Final = "skipped:outputs"  # its declared outputs existed: finished without running (--skip-existing)
STOPPED: Final = "stopped"  # an attempt killed by a stop: the task went back to the queue
LOST: Final = "lost"  # an attempt whose farmer or worker died: the task went back to the queue
GAVE_BACK: Final = (STOPPED, LOST)  # statuses of attempts that ended no task: it went back to the queue


@dataclass(frozen=True)
class Outcome:
    """How one attempt of a task ended."""

    returncode: int
    started: float
    ended: float
    attempt: int = 1
    log: str = ""
    reason: str = ""  # a policy that ended the task (e.g. "timeout"); empty when it ended by itself
    peak_rss_kb: int = 0  # 0: unknown
    cpu_user: float = 0.0
    cpu_system: float = 0.0

    @property
    def duration(self) -> float:
        """:returns: the wall-clock seconds the attempt took"""
        return self.ended - self.started

    @property
    def succeeded(self) -> bool:
        """:returns: whether the task goes to ``finished``"""
        return self.returncode == 0 and self.reason in ("", SKIPPED)

    @property
    def status(self) -> str:
        """:returns: the STATUS column of ``failed`` (``exit:N``, ``signal:NAME`` or the policy)"""
        if self.reason:
            return self.reason
        if self.returncode < 0:
            with contextlib.suppress(ValueError):
                return f"signal:{signal.Signals(-self.returncode).name}"
            return f"signal:{-self.returncode}"
        return f"exit:{self.returncode}"


def ended(slot: SlotRecord, index: int, task: Task, outcome: Outcome, *, retry: bool) -> Ended:
    """:returns: the record of an attempt that ended by itself (or by a policy), as its slot file keeps it"""
    status = outcome.status if outcome.reason or not outcome.succeeded else "ok"
    if outcome.succeeded:
        state, line = FINISHED, b"%d %s\n" % (task.taskid, task.command.encode())
    elif retry:
        state, line = RETRY, b""
    else:
        state, line = FAILED, b"%d %s %s\n" % (task.taskid, outcome.status.encode(), task.command.encode())
    return Ended(
        index=index,
        attempt=outcome.attempt,
        state=state,
        line=line,
        account=accounting_line(slot, task.taskid, outcome, status),
        event=timeline_event(slot, task, outcome, status),
    )


def interrupted(slot: SlotRecord, task: Task, started: Started, *, status: str) -> tuple[bytes, dict[str, Any]]:
    """:returns: the accounting line and the timeline event of an attempt that a stop or a death cut short"""
    outcome = Outcome(-1, started.at, max(time.time(), started.at), attempt=started.attempt, log=started.log)
    return accounting_line(slot, task.taskid, outcome, status), timeline_event(slot, task, outcome, status)


def accounting_line(slot: SlotRecord, taskid: int, outcome: Outcome, status: str) -> bytes:
    """:returns: the ``accounting.tsv`` line of an attempt"""
    fields = (
        taskid,
        outcome.attempt,
        status,
        outcome.returncode,
        f"{outcome.started:.3f}",
        f"{outcome.ended:.3f}",
        f"{outcome.duration:.3f}",
        slot.holder.host,
        slot.worker,
        slot.farmer,
        outcome.peak_rss_kb,
        f"{outcome.cpu_user:.3f}",
        f"{outcome.cpu_system:.3f}",
        outcome.log,
    )
    return "\t".join(str(field) for field in fields).encode() + b"\n"


def timeline_event(slot: SlotRecord, task: Task, outcome: Outcome, status: str) -> dict[str, Any]:
    """:returns: the Chrome trace event of an attempt (named by its task; the command is in its arguments)"""
    return {
        "name": f"task {task.taskid}",
        "cat": "task",
        "ph": "X",
        "ts": round(outcome.started * 1e6),
        "dur": round((outcome.ended - outcome.started) * 1e6),
        "pid": farmer_pid(slot.farmer),
        "tid": slot.worker,
        "args": {
            "task": task.taskid,
            "command": task.command,
            "status": status,
            "returncode": outcome.returncode,
            "attempt": outcome.attempt,
            "host": slot.holder.host,
            "farmer": slot.farmer,
            "log": outcome.log,
            "peak_rss_kb": outcome.peak_rss_kb,
            "cpu_s": round(outcome.cpu_user + outcome.cpu_system, 3),
        },
    }


def timeline_append(size: int, events: list[dict[str, Any]]) -> tuple[int, bytes]:
    r"""Append *events* to a ``timeline.json`` of *size* bytes, keeping it valid JSON at all times: its closing
    ``\\n]\\n`` is overwritten by the events and a new close.

    :returns: ``(offset, bytes)`` to write
    """
    body = b",\n".join(json.dumps(event).encode() for event in events)
    if size < len(EMPTY_TIMELINE):
        return 0, b"[\n" + body + b"\n]\n"
    separator = b"," if size > len(EMPTY_TIMELINE) else b""
    return size - 3, separator + b"\n" + body + b"\n]\n"
