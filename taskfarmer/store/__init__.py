"""The work directory: the state of one tasklist, shared by every farmer that works on it.

Layout (all plain text but the internals starting with a dot)::

    toprocess       ID COMMAND per task left; the next task is the LAST line (a stack, see _ingest)
    finished        ID COMMAND per task that exited 0
    failed          ID STATUS COMMAND per task that did not (STATUS: exit:N, signal:NAME, timeout, invalid:...)
    running/        one file per worker slot: the task it runs now (JSON)
    farmers/        one file per live farmer (JSON); its mtime is the farmer's heartbeat
    logs/           log_ID (first attempt), log_ID.N (attempt N): the task's stdout and stderr
    timeline.json   Chrome trace events, one per task attempt (open in ui.perfetto.dev)
    accounting.tsv  one line per task attempt: status, times, host, worker, peak memory, CPU time, log
    tasklist.json   how much of the tasklist was taken in, with a digest to notice edits
    .journal        the redo record of the change in progress (see _journal)
    .lockfile       which lock file every farmer of this directory must use

Every change happens under one file lock (``filelock``) and through the journal, so each task is at every
instant in exactly one of toprocess, running, finished or failed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from taskfarmer.errors import TaskListError, WorkDirError
from taskfarmer.store import _files
from taskfarmer.store._ingest import (
    MAX_TASK_BYTES,
    IngestFiles,
    IngestResult,
    Invalid,
    TaskListState,
    check_unchanged,
    ingest,
    open_tasklist,
)
from taskfarmer.store._journal import Action, CopyAt, Journal, Replace, Truncate, Unlink, WriteAt
from taskfarmer.store._leases import FarmerRecord, Holder, SlotRecord, farmer_pid, host_name, parse_stack_entry
from taskfarmer.store._lock import DescriptorLock, LockTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "MAX_TASK_BYTES",
    "FarmerRecord",
    "Holder",
    "IngestResult",
    "Invalid",
    "Outcome",
    "SlotRecord",
    "Task",
    "WorkDir",
    "host_name",
]

_LOGGER: Final = logging.getLogger(__name__)
LOCK_TIMEOUT: Final = 600.0
_EMPTY_TIMELINE: Final = b"[\n]\n"
_TIMELINE_NAME_CHARS: Final = 80
_COUNT_BLOCK: Final = 256 * 1024
_LOCK_INSIDE: Final = "the work directory"  # what .lockfile says for the default lock, whatever the mount path


@dataclass(frozen=True)
class Task:
    """One line of the tasklist: its ID (0-based line number), its command, and which attempt this is."""

    taskid: int
    command: str
    attempt: int = 1


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
        return self.returncode == 0 and not self.reason

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


@dataclass
class Counts:
    """How many tasks are in each state, over the whole list and every farmer."""

    toprocess: int = 0
    running: int = 0
    finished: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        """:returns: the number of tasks in the list"""
        return self.toprocess + self.running + self.finished + self.failed


def recorded_lock_path(workdir: Path) -> Path | None:
    """:returns: the lock file the farmers of an existing work directory use (``None``: none recorded yet)"""
    recorded = _files.read_small(workdir / ".lockfile").decode(errors="replace")
    if not recorded:
        return None
    return workdir / ".lock" if recorded == _LOCK_INSIDE else Path(recorded)


def default_lock_path(workdir: Path, lock_dir: Path | None) -> Path:
    """Where the work directory's lock file goes: *lock_dir*, else ``$SCRATCH``, else the work directory.

    ``$TMPDIR`` is never used: it is node-local on clusters, and a lock there protects nothing across nodes.
    """
    directory = lock_dir or (Path(os.environ["SCRATCH"]) if os.environ.get("SCRATCH") else None)
    if directory is None:
        return workdir / ".lock"
    digest = hashlib.md5(str(workdir.resolve()).encode(), usedforsecurity=False).hexdigest()
    return directory / f"taskfarmer-{digest}.lock"


class WorkDir:
    """The state store of one tasklist. Safe to use from many processes and hosts at once."""

    def __init__(self, path: Path, *, lock_path: Path | None = None) -> None:
        """:param path: the work directory
        :param lock_path: the lock file (default: :func:`default_lock_path` without override)
        """
        self.path = path
        self.lock_path = lock_path or default_lock_path(path, None)
        self._lock = DescriptorLock(self.lock_path)
        self._lock_agreed = False
        self._journal = Journal(path, sync=_files.filesystem_type(path.parent) in _files.NETWORK_FILESYSTEMS)
        self.toprocess = path / "toprocess"
        self.finished = path / "finished"
        self.failed = path / "failed"
        self.timeline = path / "timeline.json"
        self.accounting = path / "accounting.tsv"
        self.logs = path / "logs"
        self.running = path / "running"
        self.farmers = path / "farmers"
        self._state = path / "tasklist.json"
        self.drain_file = path / "drain"

    # -- setting up -------------------------------------------------------------------------------------------------

    def create(self) -> None:
        """Create the directories and files; harmless when another farmer did it first.

        :raises WorkDirError: when the work directory or the lock cannot be made (nothing is left behind then)
        """
        made = [d for d in (self.path, self.logs, self.running, self.farmers) if not d.exists()]
        try:
            for directory in made:
                directory.mkdir(parents=True, exist_ok=True)
            if not os.access(self.path, os.W_OK):
                raise PermissionError(errno.EACCES, "permission denied", str(self.path))
        except OSError as exc:
            _remove_empty(made)
            msg = f"Cannot use work directory {self.path}: {exc.strerror or exc}. Pick another one with --workdir."
            raise WorkDirError(msg) from exc
        try:
            with self.locked():
                for name in (self.toprocess, self.finished, self.failed):
                    name.touch(exist_ok=True)
                if _files.size(self.timeline) == 0:
                    _files.write_at(self.timeline, 0, _EMPTY_TIMELINE)
                if _files.size(self.accounting) == 0:
                    _files.write_at(self.accounting, 0, ACCOUNTING_HEADER)
        except WorkDirError:
            _remove_empty(made)
            raise

    def _check_lock_agreement(self) -> None:
        """Make sure every farmer of this work directory locks the same file: the first one records which.

        A farmer with ``$SCRATCH`` set and one without (an HTCondor job without ``getenv``, a Slurm job with
        ``--export=NONE``) would otherwise each lock a file of its own, and exclude nothing.

        :raises WorkDirError: when this farmer would lock another file than the one recorded
        """
        inside = self.lock_path.parent.resolve() == self.path.resolve()
        mine = _LOCK_INSIDE if inside else str(self.lock_path.resolve())
        record = self.path / ".lockfile"
        with contextlib.suppress(FileExistsError):
            fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _files.pwrite_all(fd, mine.encode(), 0)
            finally:
                os.close(fd)
        recorded = _files.read_small(record).decode(errors="replace")
        if recorded and recorded != mine:
            msg = (
                f"Work directory {self.path} is locked through {recorded}, but this farmer would lock {mine}"
                " ($SCRATCH set differently?): give every farmer the same --lockdir."
            )
            raise WorkDirError(msg)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the work directory lock, after completing any change a dead farmer left half done."""
        if not self._lock_agreed:
            self._check_lock_agreement()
            self._lock_agreed = True
        try:
            self._lock.acquire(timeout=LOCK_TIMEOUT)
        except LockTimeoutError as exc:
            msg = f"Could not lock {self.lock_path} within {LOCK_TIMEOUT:.0f} s: a farmer holding it hangs."
            raise WorkDirError(msg) from exc
        except OSError as exc:
            msg = (
                f"Cannot lock {self.lock_path}: {exc.strerror or exc}. Its filesystem may not support file locks:"
                " set --lockdir (or $SCRATCH) to a directory on a filesystem that does."
            )
            raise WorkDirError(msg) from exc
        try:
            self._journal.recover()
            yield
        finally:
            self._lock.release()

    def sync_tasklist(self, tasklist: Path) -> IngestResult | None:
        """Take in the tasklist's new lines (all of them on the first run, the appended ones later).

        :returns: what was taken in, ``None`` when nothing was new
        :raises TaskListError: when the tasklist cannot be read, was truncated or changed
        """
        with self.locked():
            return self._sync_tasklist_locked(tasklist)

    def _sync_tasklist_locked(self, tasklist: Path) -> IngestResult | None:
        state = TaskListState.from_json(_files.read_small(self._state))
        with open_tasklist(tasklist) as source:
            digest = check_unchanged(tasklist, state, source) if state else hashlib.sha256()
            if digest is None:
                return None
            stack_path, rejects_path = self.path / ".toprocess.new", self.path / ".rejects.new"
            with (
                stack_path.open("wb") as stack,
                rejects_path.open("wb") as rejects,
                tempfile.TemporaryFile(dir=self.path) as scratch,
            ):
                files = IngestFiles(stack=stack, scratch=scratch, rejects=rejects)
                result = ingest(source, start=state, digest=digest, files=files)
                with self.toprocess.open("rb") as old:
                    while block := old.read(_COUNT_BLOCK):
                        stack.write(block)
        self._journal.commit(
            [
                Replace(stack_path.name, self.toprocess.name),
                CopyAt(rejects_path.name, self.failed.name, _files.size(self.failed)),
                Unlink(rejects_path.name),
                WriteAt(self._state.name, 0, result.state.to_json()),
            ]
        )
        return result

    # -- farmers ----------------------------------------------------------------------------------------------------

    def register(self, farmer: FarmerRecord) -> None:
        """Announce a farmer (its file's mtime is then its heartbeat) and add it to the timeline."""
        meta = {"name": "process_name", "ph": "M", "pid": farmer.holder.pid, "args": {"name": farmer.name}}
        with self.locked():
            self._journal.commit([WriteAt(f"farmers/{farmer.name}", 0, farmer.to_json()), self._timeline_append(meta)])

    def update_farmer(self, farmer: FarmerRecord) -> None:
        """Rewrite a registered farmer's record (its state changed, e.g. it drains); also a heartbeat."""
        with self.locked():
            self._journal.commit([WriteAt(f"farmers/{farmer.name}", 0, farmer.to_json())])

    def heartbeat(self, farmer: FarmerRecord) -> None:
        """Tell other hosts this farmer is alive."""
        path = self.farmers / farmer.name
        try:
            os.utime(path)
        except FileNotFoundError:
            # Another farmer presumed us dead (lease expired) and gave our tasks away; come back.
            _LOGGER.warning("farmer %s was presumed dead by another farmer; registering again", farmer.name)
            self.register(farmer)

    def unregister(self, farmer: FarmerRecord) -> None:
        """Remove a farmer that stops, with its (idle) slot files."""
        with self.locked():
            actions: list[Action] = [Unlink(str(p.relative_to(self.path))) for p in self._slot_files(farmer.name)]
            actions.append(Unlink(f"farmers/{farmer.name}"))
            self._journal.commit(actions)

    def _slot_files(self, farmer_name: str) -> list[Path]:
        return sorted(self.running.glob(f"{farmer_name}.*"))

    # -- the task life cycle ----------------------------------------------------------------------------------------

    def slot_path(self, farmer_name: str, worker: int) -> Path:
        """:returns: the file that records what worker *worker* of a farmer runs"""
        return self.running / f"{farmer_name}.{worker}"

    def claim(self, slot: SlotRecord, *, tasklist: Path | None = None) -> Task | None:
        """Take the next task for *slot*: it is recorded in the slot's file, on top of the queue no more.

        :param tasklist: when given and the queue is empty, look for lines appended to it
        :returns: the task, or ``None`` when no task is left to process
        """
        with self.locked():
            return self._claim_locked(slot, [], tasklist)

    def finish_and_claim(
        self,
        slot: SlotRecord,
        outcome: Outcome,
        *,
        claim_next: bool,
        retry: bool = False,
        tasklist: Path | None = None,
    ) -> Task | None:
        """Record how *slot*'s task ended and, in the same lock, claim the next one.

        :param retry: put the (failed) task back on top of the queue instead of in ``failed``
        :returns: the next task, or ``None`` (none left, or *claim_next* false)
        """
        with self.locked():
            actions = self._finish_or_record(slot, outcome, retry=retry)
            if retry or not claim_next:
                # A retry is pushed on toprocess: it must be there (and the slot free) before a claim reads the top.
                self._journal.commit([*actions, WriteAt(self._slot_name(slot), 0, b"")])
                actions = []
            if not claim_next:
                return None
            return self._claim_locked(slot, actions, tasklist)

    def _finish_or_record(self, slot: SlotRecord, outcome: Outcome, *, retry: bool) -> list[Action]:
        status = "ok" if outcome.succeeded else outcome.status
        records: list[Action] = [
            self._timeline_append(self._timeline_event(slot, outcome, status)),
            WriteAt(self.accounting.name, _files.size(self.accounting), _accounting_line(slot, outcome, status)),
        ]
        current = self.read_slot(self.path / self._slot_name(slot))
        if current is not None and (current.task, current.holder) == (slot.task, slot.holder):
            return [self._state_line(slot, outcome, retry=retry), *records]
        # Another farmer presumed this one dead and gave the task back: the queued copy decides its fate now.
        _LOGGER.warning("task %d was given back while it ran here: its result is only accounted", slot.task)
        return records

    def release(self, slot: SlotRecord) -> bool:
        """Give *slot*'s task back to the queue, on top, so that it runs next (a stopped or killed task).

        :returns: whether the task was still held by that slot (``False``: someone recovered it already)
        """
        with self.locked():
            return self._release_locked(slot)

    def _slot_name(self, slot: SlotRecord) -> str:
        """:returns: the slot's file relative to the work directory (as journal actions name files)"""
        return str(self.slot_path(slot.farmer, slot.worker).relative_to(self.path))

    def _claim_locked(self, slot: SlotRecord, actions: list[Action], tasklist: Path | None) -> Task | None:
        top = _files.read_last_line(self.toprocess)
        if top is None and tasklist is not None:
            # The finish (with its slot freed) must be complete before the sync rewrites toprocess.
            self._journal.commit([*actions, WriteAt(self._slot_name(slot), 0, b"")])
            actions = []
            self._sync_in_claim(tasklist)
            top = _files.read_last_line(self.toprocess)
        if top is None:
            self._journal.commit([*actions, WriteAt(self._slot_name(slot), 0, b"")])
            return None
        offset, line = top
        taskid, attempt, command = parse_stack_entry(line)
        task = Task(taskid, command, attempt)
        record = SlotRecord(
            task=task.taskid,
            command=task.command,
            farmer=slot.farmer,
            worker=slot.worker,
            holder=slot.holder,
            started=time.time(),
            attempt=task.attempt,
        )
        self._journal.commit(
            [*actions, WriteAt(self._slot_name(slot), 0, record.to_json()), Truncate("toprocess", offset)]
        )
        return task

    def _sync_in_claim(self, tasklist: Path) -> None:
        try:
            self._sync_tasklist_locked(tasklist)
        except TaskListError as exc:
            _LOGGER.warning("not taking in new tasklist lines: %s", exc)

    def _state_line(self, slot: SlotRecord, outcome: Outcome, *, retry: bool) -> WriteAt:
        """:returns: the line that moves the task out of running: to finished, failed, or back on top (retry)"""
        if outcome.succeeded:
            target, line = self.finished, b"%d %s\n" % (slot.task, slot.command.encode())
        elif retry:
            target, line = self.toprocess, slot.stack_entry()
        else:
            target, line = self.failed, b"%d %s %s\n" % (slot.task, outcome.status.encode(), slot.command.encode())
        return WriteAt(target.name, _files.size(target), line)

    def _timeline_event(self, slot: SlotRecord, outcome: Outcome, status: str) -> dict[str, object]:
        return {
            "name": slot.command[:_TIMELINE_NAME_CHARS],
            "cat": "task",
            "ph": "X",
            "ts": round(outcome.started * 1e6),
            "dur": round((outcome.ended - outcome.started) * 1e6),
            "pid": farmer_pid(slot.farmer),
            "tid": slot.worker,
            "args": {
                "task": slot.task,
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

    def _timeline_append(self, event: dict[str, object]) -> WriteAt:
        # Keep timeline.json valid JSON at all times: overwrite the closing "\n]\n" with the event and a new close.
        end = _files.size(self.timeline)
        if end < len(_EMPTY_TIMELINE):
            return WriteAt(self.timeline.name, 0, b"[\n" + json.dumps(event).encode() + b"\n]\n")
        separator = b"," if end > len(_EMPTY_TIMELINE) else b""
        return WriteAt(self.timeline.name, end - 3, separator + b"\n" + json.dumps(event).encode() + b"\n]\n")

    def _release_locked(self, slot: SlotRecord) -> bool:
        current = self.read_slot(self.path / self._slot_name(slot))
        if current is None or current.task != slot.task or current.holder != slot.holder:
            return False
        self._journal.commit(
            [
                WriteAt("toprocess", _files.size(self.toprocess), slot.stack_entry()),
                WriteAt(self._slot_name(slot), 0, b""),
            ]
        )
        return True

    # -- recovery of dead farmers -----------------------------------------------------------------------------------

    @staticmethod
    def read_slot(path: Path) -> SlotRecord | None:
        """:returns: the task a slot file records, ``None`` for an idle, missing or damaged one"""
        try:
            return SlotRecord.from_json(_files.read_small(path))
        except (ValueError, KeyError, TypeError):
            _LOGGER.warning("ignoring damaged slot file %s", path)
            return None

    def read_farmers(self) -> dict[str, tuple[FarmerRecord, float]]:
        """:returns: every registered farmer with the age in seconds of its heartbeat"""
        now = time.time()
        farmers: dict[str, tuple[FarmerRecord, float]] = {}
        for path in self.farmers.iterdir():
            try:
                record = FarmerRecord.from_json(path.read_bytes())
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                _LOGGER.warning("ignoring damaged farmer file %s", path)
                continue
            farmers[record.name] = (record, age)
        return farmers

    def recover_dead(self, *, me: str | None = None) -> list[Task]:
        """Put back in the queue the tasks of farmers and workers that are dead, and forget those farmers.

        A holder on this host is dead when its process is gone (or its PID reused); elsewhere, when its farmer's
        heartbeat is older than that farmer's lease.

        :param me: the calling farmer, never presumed dead (its own dead workers are recovered)
        :returns: the tasks put back
        """
        with self.locked():
            farmers = self.read_farmers()
            returned: list[Task] = []
            for slot_path in sorted(self.running.iterdir()):
                returned.extend(self._recover_slot(slot_path, farmers, me))
            for name, (record, age) in farmers.items():
                if name != me and self._farmer_dead(record, age) and not self._slot_files(name):
                    self._journal.commit([Unlink(f"farmers/{name}")])
            return returned

    def _recover_slot(
        self, slot_path: Path, farmers: dict[str, tuple[FarmerRecord, float]], me: str | None
    ) -> list[Task]:
        farmer_name, _, _ = slot_path.name.rpartition(".")
        record = self.read_slot(slot_path)
        farmer = farmers.get(farmer_name)
        if farmer is not None and farmer_name != me and farmer[0].holder.is_local() and not self._farmer_dead(*farmer):
            # A live farmer on this host recovers its own dead workers, after killing what they left running.
            return []
        if record is not None and not self._holder_dead(record.holder, farmer):
            return []
        if record is None and farmer is not None and not self._farmer_dead(*farmer):
            return []  # an idle slot of a live farmer
        relative = str(slot_path.relative_to(self.path))
        if record is None:
            self._journal.commit([Unlink(relative)])
            return []
        _LOGGER.warning("task %d was held by dead farmer %s: back in the queue", record.task, farmer_name)
        self._journal.commit(
            [WriteAt("toprocess", _files.size(self.toprocess), record.stack_entry()), Unlink(relative)]
        )
        return [Task(record.task, record.command)]

    def forget_farmer(self, name: str) -> list[Task]:
        """Put back the tasks of farmer *name*, alive or not (for a node known lost before its lease expires).

        :returns: the tasks put back
        """
        with self.locked():
            returned = []
            for slot_path in self._slot_files(name):
                record = self.read_slot(slot_path)
                relative = str(slot_path.relative_to(self.path))
                actions: list[Action] = [Unlink(relative)]
                if record is not None:
                    actions.insert(0, WriteAt("toprocess", _files.size(self.toprocess), record.stack_entry()))
                    returned.append(Task(record.task, record.command))
                self._journal.commit(actions)
            self._journal.commit([Unlink(f"farmers/{name}")])
            return returned

    def requeue_failed(self, select: Callable[[int, str], bool]) -> list[int]:
        """Move the failed tasks that *select* (task ID, status) picks back to the queue, to run next.

        :returns: their IDs
        """
        with self.locked():
            keep: list[bytes] = []
            back: list[bytes] = []
            with self.failed.open("rb") as failed:
                for line in failed:
                    taskid, status, command = [*line.rstrip(b"\n").split(b" ", 2), b"", b""][:3]
                    # An invalid line (not UTF-8, too long) cannot run, and its recorded command is only a preview.
                    runnable = taskid.isdigit() and not status.startswith(b"invalid:")
                    chosen = runnable and select(int(taskid), status.decode(errors="replace"))
                    (back if chosen else keep).append(line if not chosen else b"%s %s\n" % (taskid, command))
            if not back:
                return []
            rebuilt = self.path / ".failed.new"
            rebuilt.write_bytes(b"".join(keep))
            # Reversed: the stack's top is its end, so the first of them runs first.
            entries = b"".join(reversed(back))
            self._journal.commit(
                [WriteAt("toprocess", _files.size(self.toprocess), entries), Replace(rebuilt.name, self.failed.name)]
            )
            return [int(line.split(b" ", 1)[0]) for line in back]

    @staticmethod
    def _farmer_dead(record: FarmerRecord, age: float) -> bool:
        if record.holder.is_local():
            return not record.holder.is_alive_locally()
        return age > record.lease

    def _holder_dead(self, holder: Holder, farmer: tuple[FarmerRecord, float] | None) -> bool:
        if holder.is_local():
            return not holder.is_alive_locally()
        if farmer is None:
            return True  # its farmer unregistered or was recovered: nobody heartbeats for it
        return self._farmer_dead(*farmer)

    def stale_holders(self, *, me: str) -> list[str]:
        """:returns: other farmers holding tasks whose heartbeat is late but whose lease has not expired yet"""
        stale = []
        for name, (record, age) in self.read_farmers().items():
            if name == me or record.holder.is_local():
                continue
            late = age > max(2 * heartbeat_interval(record.lease), 1.0)
            if late and age <= record.lease and any(self.read_slot(p) for p in self._slot_files(name)):
                stale.append(name)
        return stale

    # -- reading ----------------------------------------------------------------------------------------------------

    def drain_requested(self) -> bool:
        """:returns: whether someone asked every farmer of this work directory to drain"""
        return self.drain_file.exists()

    def counts(self) -> Counts:
        """:returns: the number of tasks in each state (reads the state files: O(list) bytes, no lock)"""
        counts = Counts(
            toprocess=_count_lines(self.toprocess),
            finished=_count_lines(self.finished),
            failed=_count_lines(self.failed),
        )
        counts.running = sum(1 for path in self.running.iterdir() if self.read_slot(path))
        return counts


def _remove_empty(directories: list[Path]) -> None:
    """Undo the creation of *directories* (deepest first), keeping any a concurrent farmer already uses."""
    for directory in reversed(directories):
        with contextlib.suppress(OSError):
            for name in (".lock", ".lockfile"):  # created here, by this farmer: the directory is new
                (directory / name).unlink(missing_ok=True)
            directory.rmdir()


ACCOUNTING_COLUMNS: Final = (
    "task attempt status returncode start end seconds host worker farmer peak_rss_kb cpu_user_s cpu_system_s log"
)
ACCOUNTING_HEADER: Final = "\t".join(ACCOUNTING_COLUMNS.split()).encode() + b"\n"


def _accounting_line(slot: SlotRecord, outcome: Outcome, status: str) -> bytes:
    fields = (
        slot.task,
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


def heartbeat_interval(lease: float) -> float:
    """:returns: how often a farmer with this lease touches its heartbeat file"""
    return max(lease / 10, 0.5)


def _count_lines(path: Path) -> int:
    count = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as source:
        while block := source.read(_COUNT_BLOCK):
            count += block.count(b"\n")
    return count
