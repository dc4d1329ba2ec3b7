"""Who holds a running task, and whether that holder is still alive.

A farmer is alive on this host while its worker process exists with the same start time (a reused PID does not
count); on another host, while it touches its ``farmers/`` file more often than the lease. Hosts are told apart by
the scheduler's node name (``SLURMD_NODENAME``) or the hostname, and reboots by the kernel's boot id.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, Final, TypeVar

_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_CTIME_TOLERANCE: Final = 0.5 / _CLOCK_TICKS  # the same tick count, read twice


@cache
def host_name() -> str:
    """:returns: the name of this node as the batch system knows it"""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


@cache
def boot_id() -> str:
    """:returns: an identifier that changes when this host reboots (empty where the kernel has none)"""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_ctime(pid: int) -> float | None:
    """When process *pid* started, in seconds since boot: unlike a wall-clock time, an NTP step or a resumed VM
    does not move it, so a live process is never taken for a reused PID.

    :returns: the start time, or ``None`` when the process does not exist or is a zombie (killed, not yet reaped:
        dead all the same)
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:  # noqa: PTH123  # a kernel file, read in one go
            fields = stat.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return None
    except OSError:
        return _psutil_ctime(pid)  # no /proc (not Linux): psutil's wall-clock start time
    if fields[0] == b"Z":
        return None
    return int(fields[19]) / _CLOCK_TICKS  # field 22 of /proc/PID/stat: start time in clock ticks since boot


def _psutil_ctime(pid: int) -> float | None:
    import psutil  # noqa: PLC0415  # only where /proc is missing (not Linux)

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


@dataclass(frozen=True)
class Holder:
    """A process that holds (or held) tasks: a farmer's main process or one of its workers."""

    host: str
    boot: str
    pid: int
    ctime: float

    @classmethod
    def this_process(cls) -> Holder:
        """:returns: the holder describing the calling process"""
        pid = os.getpid()
        return cls(host=host_name(), boot=boot_id(), pid=pid, ctime=process_ctime(pid) or time.monotonic())

    def is_local(self) -> bool:
        """:returns: whether this holder runs on this host (since its last boot)"""
        return self.host == host_name() and self.boot == boot_id()

    def is_alive_locally(self) -> bool:
        """:returns: for a local holder, whether its process still runs (a reused PID is not it)"""
        ctime = process_ctime(self.pid)
        return ctime is not None and abs(ctime - self.ctime) < _CTIME_TOLERANCE


@dataclass(frozen=True)
class FarmerRecord:
    """The content of ``farmers/<name>``: who the farmer is; the file's mtime is its heartbeat."""

    name: str
    holder: Holder
    started: float
    workers: int
    lease: float
    draining: bool = False

    @classmethod
    def new(cls, *, workers: int, lease: float) -> FarmerRecord:
        """:returns: a record for a farmer started by the calling process"""
        holder = Holder.this_process()
        name = f"{holder.host}.{holder.pid}.{secrets.token_hex(3)}"
        return cls(name=name, holder=holder, started=time.time(), workers=workers, lease=lease)

    def to_json(self) -> bytes:
        """:returns: the record as stored"""
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> FarmerRecord:
        """:returns: a record read back; raises ``ValueError``/``KeyError``/``TypeError`` on a damaged one"""
        return _from_fields(cls, json.loads(data))


_Record = TypeVar("_Record", "FarmerRecord", "SlotRecord")


def _from_fields(cls: type[_Record], raw: dict[str, Any]) -> _Record:
    """Build a record from its JSON, ignoring fields it does not know: a farmer of a newer version may share the
    work directory, and taking its records for damaged ones would make its live tasks look abandoned.
    """
    known = {f.name for f in fields(cls)}
    values = {key: value for key, value in raw.items() if key in known}
    holder = raw["holder"]
    values["holder"] = Holder(**{key: holder[key] for key in ("host", "boot", "pid", "ctime")})
    return cls(**values)


def farmer_pid(name: str) -> int:
    """:returns: the PID part of a farmer name ``HOST.PID.TOKEN`` (hosts may contain dots)"""
    return int(name.rsplit(".", 2)[1])


@dataclass(frozen=True)
class SlotRecord:
    """The content of ``running/<farmer>.<worker>``: the task that worker runs right now."""

    task: int
    command: str
    farmer: str
    worker: int
    holder: Holder
    started: float
    attempt: int = 1

    def to_json(self) -> bytes:
        """:returns: the record as stored"""
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> SlotRecord | None:
        """:returns: the record, or ``None`` for an idle slot"""
        if not data.strip():
            return None
        return _from_fields(cls, json.loads(data))

    def stack_entry(self) -> bytes:
        """:returns: the ``toprocess`` line that puts this task back in the queue, for its next attempt"""
        return stack_entry(self.task, self.command, self.attempt + 1)


def stack_entry(taskid: int, command: str, attempt: int, lost: int = 0) -> bytes:
    """:returns: a ``toprocess`` line: ``ID COMMAND``; ``ID@ATTEMPT COMMAND`` for a task that runs again;
    ``ID@ATTEMPT:LOST COMMAND`` when *lost* farmers (or workers) died while running it
    """
    line = command.encode(errors="surrogateescape")  # a command read with surrogateescape keeps its bytes
    if lost:
        return b"%d@%d:%d %s\n" % (taskid, attempt, lost, line)
    if attempt <= 1:
        return b"%d %s\n" % (taskid, line)
    return b"%d@%d %s\n" % (taskid, attempt, line)


def parse_stack_entry(line: bytes) -> tuple[int, int, int, str]:
    """:returns: ``(task ID, attempt, lost, command)`` of a ``toprocess`` line (without its newline)"""
    head, _, command = line.decode().partition(" ")
    taskid, _, attempt_lost = head.partition("@")
    attempt, _, lost = attempt_lost.partition(":")
    return int(taskid), int(attempt or 1), int(lost or 0), command
