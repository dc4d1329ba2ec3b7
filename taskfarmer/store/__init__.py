"""The work directory: the state of one tasklist, shared by every farmer that works on it.

Layout (all plain text but the internals starting with a dot)::

    toprocess       ID COMMAND per task left; the next task is the LAST line (a stack, see _ingest)
    finished        ID COMMAND per task that exited 0
    failed          ID STATUS COMMAND per task that did not (STATUS: exit:N, signal:NAME, timeout, invalid:...)
    running/        one file per worker slot: the batch of tasks it holds and what became of each (see _slots)
    farmers/        one file per live farmer (JSON); its mtime is the farmer's heartbeat
    logs/           log_ID (first attempt), log_ID.N (attempt N): the task's stdout and stderr
    timeline.json   Chrome trace events, one per task attempt (open in ui.perfetto.dev)
    accounting.tsv  one line per task attempt: status, times, host, worker, peak memory, CPU time, log
    tasklist.json   how much of the tasklist was taken in, with a digest to notice edits
    tasklist.path   the tasklist the directory was started for (named when another is given with it)
    .journal        the sizes of the shared files after the last change, and the change in progress (see _journal)
    .lockfile       which lock file every farmer of this directory must use

Every change of the shared files happens under one file lock (``filelock``) and through the journal, so each
task is at every instant in exactly one of toprocess, running (a slot file), finished or failed. A worker claims
its tasks in batches and appends their outcomes to its own slot file without the lock: see ``_slots``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from taskfarmer.errors import TaskListError, WorkDirError
from taskfarmer.store import _files, _slots
from taskfarmer.store._ingest import (
    LINES,
    MAX_TASK_BYTES,
    UNREADABLE,
    IngestFiles,
    IngestResult,
    Invalid,
    TaskListState,
    check_unchanged,
    ingest,
    open_tasklist,
    started_for,
)
from taskfarmer.store._journal import Action, ConflictError, CopyAt, Journal, Replace, Truncate, Unlink, WriteAt
from taskfarmer.store._leases import FarmerRecord, Holder, SlotRecord, host_name, parse_stack_entry, stack_entry
from taskfarmer.store._lock import DescriptorLock, LockTimeoutError
from taskfarmer.store._records import (
    ACCOUNTING_COLUMNS,
    ACCOUNTING_HEADER,
    EMPTY_TIMELINE,
    GAVE_BACK,
    LOST,
    SKIPPED,
    STOPPED,
    Outcome,
    ended,
    interrupted,
    timeline_append,
)
from taskfarmer.store._slots import SlotLog, SlotView, Task
from taskfarmer.words import id_list

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

_Result = TypeVar("_Result")

__all__ = [
    "ACCOUNTING_COLUMNS",
    "ACCOUNTING_HEADER",
    "GAVE_BACK",
    "MAX_TASK_BYTES",
    "SKIPPED",
    "UNREADABLE",
    "FarmerRecord",
    "Holder",
    "IngestResult",
    "Invalid",
    "Outcome",
    "RemoteHolder",
    "SlotLog",
    "SlotRecord",
    "SlotView",
    "StaleViewError",
    "Task",
    "WorkDir",
    "ended",
    "host_name",
    "slot_counts",
]

_LOGGER: Final = logging.getLogger(__name__)
LOCK_TIMEOUT: Final = 600.0
DEFAULT_MAX_LOST: Final = 3
STALE_PATIENCE: Final = 5.0  # seconds a farmer waits for its view of the work directory to catch up
_UNFIT_WINDOW: Final = 64  # lines a claim looks past the tasks this farmer cannot run
_COUNT_BLOCK: Final = 256 * 1024
_LOCK_INSIDE: Final = "the work directory"  # what .lockfile says for the default lock, whatever the mount path


@dataclass
class Counts:
    """How many tasks are in each state, over the whole list and every farmer."""

    toprocess: int = 0  # in the queue (``toprocess``)
    running: int = 0
    finished: int = 0
    failed: int = 0
    claimed: int = 0  # taken from the queue by a worker, in its batch, not started yet

    @property
    def total(self) -> int:
        """:returns: the number of tasks in the list"""
        return self.toprocess + self.claimed + self.running + self.finished + self.failed

    @property
    def left(self) -> int:
        """:returns: the tasks not run yet, queued or claimed"""
        return self.toprocess + self.claimed


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
        self.lock_seconds = 0.0  # how long the last lock hold took, waiting included (batches grow with it)
        self.max_lost = DEFAULT_MAX_LOST  # deaths of farmers running a task after which it fails as lost:K
        self.queue_left = 0  # about how many tasks the queue held after the last claim
        self.farm_workers = 1  # the workers of every registered farmer, at the last claim
        self._pending: list[Action] = []
        self.unfit = 0  # tasks on top of the queue this farmer could not run, at the last claim of none
        self.tasklist_error = ""  # why lines added to the tasklist could not be taken in (it was changed)
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
        self._started_for = path / "tasklist.path"  # the tasklist it was started for (for messages only)
        self.drain_file = path / "drain"
        self.stale_file = path / "stale"

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

            def change() -> None:
                sizes = self._journal.sizes()
                state_files = (self.toprocess, self.finished, self.failed)
                made_files: list[Action] = [WriteAt(name.name, 0, b"") for name in state_files if not name.exists()]
                if sizes[self.timeline.name] == 0:
                    made_files.append(WriteAt(self.timeline.name, 0, EMPTY_TIMELINE))
                if sizes[self.accounting.name] == 0:
                    made_files.append(WriteAt(self.accounting.name, 0, ACCOUNTING_HEADER))
                self._journal.commit(made_files)

            self._transaction(change)
        except WorkDirError:
            _remove_empty(made)
            raise

    def check_not_foreign(self) -> None:
        """Refuse a work directory that another tool made (PyTaskFarmer 0.1.0 writes the same state files).

        PyTaskFarmer numbers tasks by counting non-comment lines, and its ``failed`` has no status column: taking
        its files over would run finished tasks again and misread the failed ones.

        :raises WorkDirError: naming what was found and what to do
        """
        if not self.path.is_dir() or (self.path / ".lockfile").exists() or self._state.exists():
            return  # ours: a farmer of this version records its lock file before it writes any state file
        if not any(_files.size(path) for path in (self.toprocess, self.finished, self.failed)):
            return
        msg = (
            f"Work directory {self.path} holds toprocess/finished/failed but no tasklist.json: it was made by another"
            " tool (PyTaskFarmer 0.1.0?), whose task numbers differ from this version's. Use a new --workdir (see"
            " 'Coming from PyTaskFarmer' in the README)."
        )
        raise WorkDirError(msg)

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
        """Hold the work directory lock, after completing any change a dead farmer left half done.

        :raises StaleViewError: when this node's view of the work directory stays older than what was recorded
        """
        if not self._lock_agreed:
            self._check_lock_agreement()
            self._lock_agreed = True
        asked = time.monotonic()
        self._acquire()
        try:
            self._begin()
            yield
        finally:
            self._journal.end()
            self._lock.release()
            self.lock_seconds = time.monotonic() - asked

    def _transaction(self, operation: Callable[[], _Result]) -> _Result:
        """Run *operation* under the lock; run it again, from a fresh view, when another farmer's change was not
        visible to this one (its commit found the generation marker moved: nothing was changed).

        :raises StaleViewError: when the view stays older than the marker for too long
        """
        deadline = time.monotonic() + STALE_PATIENCE
        pause = 0.05
        adopted = False
        while True:
            try:
                with self.locked():
                    return operation()
            except ConflictError as exc:  # noqa: PERF203  # a retry loop: conflicts are rare, and cost a sleep
                if time.monotonic() < deadline:
                    _LOGGER.info("the work directory changed unseen (%s): looking again", exc)
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                if not adopted:
                    # The view never caught up: the marker is one ahead because a farmer died between moving it
                    # and writing its record (nothing of that change was applied). Take its generation over, once.
                    adopted = self._journal.adopt_next = True
                    continue
                raise StaleViewError(self.path / ".journal", str(exc)) from exc

    def _acquire(self) -> None:
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

    def _begin(self) -> None:
        """Read what the last lock holder recorded; wait a little while this node's view is older than that."""
        deadline = time.monotonic() + STALE_PATIENCE
        pause = 0.05
        while isinstance(problem := self._journal.begin(), str):
            self._journal.end()
            if time.monotonic() > deadline:
                raise StaleViewError(self.path / ".journal", problem)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def sync_tasklist(self, tasklist: Path, *, numbering: str | None = None) -> IngestResult | None:
        """Take in the tasklist's new lines (all of them on the first run, the appended ones later).

        :param numbering: how task IDs are counted (``lines`` or ``tasks``); a list taken in before keeps its own
        :returns: what was taken in, ``None`` when nothing was new
        :raises TaskListError: when the tasklist cannot be read, was truncated or changed, or *numbering* is not
            the one the work directory started with
        """

        def change() -> IngestResult | None:
            return self._sync_tasklist_locked(tasklist, numbering=numbering)

        return self._transaction(change)

    def _sync_tasklist_locked(self, tasklist: Path, *, numbering: str | None = None) -> IngestResult | None:
        state = TaskListState.from_json(_files.read_small(self._state))
        if state is not None and numbering is not None and numbering != state.numbering:
            msg = (
                f"Work directory {self.path} numbers its tasks by {state.numbering}, not by {numbering}: give"
                f" --numbering {state.numbering} (or none), or use a new --workdir."
            )
            raise TaskListError(msg)
        with open_tasklist(tasklist) as source:
            try:
                digest = check_unchanged(tasklist, state, source) if state else hashlib.sha256()
            except TaskListError as exc:
                first = _files.read_small(self._started_for).decode(errors="replace").strip()
                raise TaskListError(f"{exc}{started_for(tasklist, first)}") from None
            if digest is None:
                return None
            stack_path, rejects_path = self.path / ".toprocess.new", self.path / ".rejects.new"
            with (
                stack_path.open("wb") as stack,
                rejects_path.open("wb") as rejects,
                tempfile.TemporaryFile(dir=self.path) as scratch,
            ):
                files = IngestFiles(stack=stack, scratch=scratch, rejects=rejects)
                result = ingest(source, start=state, digest=digest, files=files, numbering=numbering or LINES)
                with self.toprocess.open("rb") as old:
                    while block := old.read(_COUNT_BLOCK):
                        stack.write(block)
        self._journal.commit(
            [
                Replace(stack_path.name, self.toprocess.name),
                CopyAt(rejects_path.name, self.failed.name, self._journal.sizes()[self.failed.name]),
                Unlink(rejects_path.name),
                WriteAt(self._state.name, 0, result.state.to_json()),
                # The list this work directory is for, named in messages when another is given with it.
                *([WriteAt(self._started_for.name, 0, f"{tasklist.absolute()}\n".encode())] if state is None else []),
            ]
        )
        return result

    # -- farmers ----------------------------------------------------------------------------------------------------

    def register(self, farmer: FarmerRecord) -> None:
        """Announce a farmer (its file's mtime is then its heartbeat) and add it to the timeline."""
        meta = {"name": "process_name", "ph": "M", "pid": farmer.holder.pid, "args": {"name": farmer.name}}

        def change() -> None:
            actions: list[Action] = [
                WriteAt(f"farmers/{farmer.name}", 0, farmer.to_json()),
                self._timeline_write([meta]),
            ]
            self._journal.commit(actions, workers=self._journal.state.workers + farmer.workers)

        self._transaction(change)

    def update_farmer(self, farmer: FarmerRecord) -> None:
        """Rewrite a registered farmer's record (its state changed, e.g. it drains); also a heartbeat."""

        def change() -> None:
            self._journal.commit([WriteAt(f"farmers/{farmer.name}", 0, farmer.to_json())])

        self._transaction(change)

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
        """Remove a farmer that stops, with its slot files (the tasks a slot still holds go back to the queue)."""

        def change() -> None:
            for path in self._slot_files(farmer.name):
                self._give_back_slot(path, status=LOST)
            workers = max(self._journal.state.workers - farmer.workers, 0)
            self._journal.commit([Unlink(f"farmers/{farmer.name}")], workers=workers)

        self._transaction(change)

    def _slot_files(self, farmer_name: str) -> list[Path]:
        return sorted(self.running.glob(f"{farmer_name}.*"))

    # -- the task life cycle ----------------------------------------------------------------------------------------

    def slot_path(self, farmer_name: str, worker: int) -> Path:
        """:returns: the file that records what worker *worker* of a farmer runs"""
        return self.running / f"{farmer_name}.{worker}"

    def exchange(
        self,
        log: SlotLog,
        slot: SlotRecord,
        *,
        want: int,
        tasklist: Path | None = None,
        fits: Callable[[str], bool] | None = None,
    ) -> list[Task]:
        """Settle *slot*'s batch and claim the next one, in one lock hold.

        The outcomes the worker appended to its slot file go to ``finished``, ``failed``, ``accounting.tsv`` and
        ``timeline.json``; tasks of the batch that did not end go back on top of the queue (a started one with its
        next attempt, accounted as stopped); then up to *want* tasks are taken from the top of the queue.

        :param log: the worker's slot file, holding the new batch afterwards
        :param want: how many tasks to claim (0: claim none, the slot becomes idle)
        :param tasklist: when given and the queue is empty, look for lines appended to it
        :param fits: whether this farmer can run a task (its command); those it cannot stay on top of the queue
            for others (``self.unfit`` counts them when nothing was claimed)
        :returns: the tasks claimed, in the order to run them (none left: empty)
        """

        def change() -> list[Task]:
            self._pending = self._settle(log.view(slot), status=STOPPED, taken=self._taken_away(log))
            tasks, queue = self._take(want, tasklist, slot, log, fits) if want else ([], [])
            line = _slots.claim_line(slot=slot, tasks=tasks) if tasks else b""
            self._journal.commit([*self._pending, *queue, WriteAt(self._slot_name(slot), 0, line)])
            log.hold(tasks, size=len(line), recoveries=self._journal.state.recoveries)
            self.farm_workers = self._journal.state.workers
            return tasks

        return self._transaction(change)

    def _taken_away(self, log: SlotLog) -> bool:
        """:returns: whether a farmer that presumed this one dead settled its slot (its results are then only
        accounted: the queued copies of its tasks decide their fate)
        """
        if not log.tasks or log.recoveries == self._journal.state.recoveries:
            return False
        if _files.size(log.path) == log.size:
            return False
        _LOGGER.warning("tasks of %s were given back while they ran here: their results are only accounted", log.path)
        return True

    def _take(
        self, want: int, tasklist: Path | None, slot: SlotRecord, log: SlotLog, fits: Callable[[str], bool] | None
    ) -> tuple[list[Task], list[Action]]:
        """Find up to *want* tasks on top of the queue that this farmer can run (*fits*).

        ``self._pending`` holds what must be committed with the claim.

        :returns: the tasks, in the order to run them, and the actions that take them off the queue (leaving those
            it passed over on top, in their order)
        """
        window = want + (_UNFIT_WINDOW if fits else 0)
        top = self._read_top(window)
        if not top and tasklist is not None:
            # The settling must be complete (the slot idle) before the sync rewrites toprocess.
            self._journal.commit([*self._pending, WriteAt(self._slot_name(slot), 0, b"")])
            self._pending = []
            log.hold([], size=0, recoveries=self._journal.state.recoveries)  # settled: a retry must not redo it
            self._sync_in_claim(tasklist)
            top = self._read_top(window)
        tasks: list[Task] = []
        passed: list[bytes] = []
        examined = 0
        for line in reversed(top):  # the stack's top is its last line: it runs first
            if len(tasks) == want:
                break
            examined += 1
            taskid, attempt, lost, command = parse_stack_entry(line)
            if fits is None or fits(command):
                tasks.append(Task(taskid, command, attempt, lost))
            else:
                passed.append(line)
        self.unfit = len(passed) if not tasks else 0
        if not tasks:
            return [], []
        size = self._journal.sizes()[self.toprocess.name]
        start = size - sum(len(line) + 1 for line in top[len(top) - examined :])
        # Lines left, estimated from the mean length of the lines read (those claimed and the next ones): the
        # claimed lines alone may be much shorter than the rest, and too large a guess gives the tail to one worker.
        claimed_bytes = (size - start) / len(tasks)
        window_bytes = sum(len(line) + 1 for line in top) / len(top)
        self.queue_left = int(start / max(claimed_bytes, window_bytes, 1))
        queue: list[Action] = [Truncate(self.toprocess.name, start)]
        if passed:
            queue.append(WriteAt(self.toprocess.name, start, b"".join(line + b"\n" for line in reversed(passed))))
        return tasks, queue

    def _read_top(self, count: int) -> list[bytes]:
        """:returns: the last *count* lines of toprocess (fewer when it is shorter)
        :raises ConflictError: when toprocess is not as the last lock holder recorded it (an old view)
        """
        expected = self._journal.sizes()[self.toprocess.name]
        seen = _files.read_last_lines(self.toprocess, count)
        size = seen[2] if seen else 0
        if size != expected:
            msg = f"toprocess has {size} bytes here, {expected} recorded"
            raise ConflictError(msg)
        return seen[1] if seen else []

    def _settle(self, view: SlotView, *, status: str, taken: bool = False, died: bool = False) -> list[Action]:
        """:returns: the actions that write what *view*'s batch did to the shared files and put back on top of the
        queue what it did not do; *status* accounts the attempts cut short; *taken*: account only; *died*: the
        batch's farmer died, which counts against the task it was running (see ``max_lost``)
        """
        sizes = self._journal.sizes()
        lines: dict[str, bytes] = {self.finished.name: b"", self.failed.name: b"", self.accounting.name: b""}
        events = []
        for end in view.ended:
            if end.state in (_slots.FINISHED, _slots.FAILED) and not taken:
                lines[end.state] += end.line
            lines[self.accounting.name] += end.account
            events.append(end.event)
        back = b""
        for task, started in view.back_to_queue():
            if started is not None and not view.accounted(started):
                identity = SlotRecord(task.taskid, task.command, view.farmer, view.worker, view.holder, started.at)
                cut_short = replace(started, log=self._span_to_stream_end(started.log))
                account, event = interrupted(identity, task, cut_short, status=status)
                lines[self.accounting.name] += account
                events.append(event)
            if taken:
                continue
            if died and started is not None and task.lost + 1 >= self.max_lost:
                # It was running each time its holder died: it may be what kills them. Give up on it.
                _LOGGER.warning("task %d was running in %d farmers that died: failed", task.taskid, task.lost + 1)
                lines[self.failed.name] += b"%d lost:%d %s\n" % (task.taskid, task.lost + 1, task.command.encode())
                continue
            back = _slots.requeue_entry(task, started, died=died) + back  # the first of the batch ends up on top
        actions: list[Action] = [WriteAt(name, sizes[name], data) for name, data in lines.items() if data]
        if events:
            actions.append(self._timeline_write(events))
        if back:
            actions.append(WriteAt(self.toprocess.name, sizes[self.toprocess.name], back))
        return actions

    def _span_to_stream_end(self, log: str) -> str:
        """:returns: *log*, or if it is the span in a stream that its worker had no time to measure (``@OFFSET+0``:
        it died), the span from its start to the stream's end: what the attempt printed before it was cut short
        """
        name, at, span = log.partition("@")
        offset, _, length = span.partition("+")
        if not at or length != "0" or not offset.isdigit():
            return log
        try:
            size = (self.path / name).stat().st_size
        except OSError:
            return log
        return f"{name}@{offset}+{max(size - int(offset), 0)}"

    def _give_back_slot(
        self, path: Path, *, status: str, maybe_alive: bool = False, farmer_died: bool = False
    ) -> list[Task]:
        """Settle the slot file at *path* of a worker that is gone, and remove it (under the lock).

        :param maybe_alive: the worker may still run (a farmer forgotten by hand): it must learn that its slot
            was taken, as a worker on another host presumed dead does
        :param farmer_died: the worker's whole farmer is gone (not just the worker): its running task counts it
        :returns: the tasks put back in the queue
        """
        view = _slots.read(path)
        relative = str(path.relative_to(self.path))
        if view is None:
            self._journal.commit([Unlink(relative)])
            return []
        taken = maybe_alive or not view.holder.is_local()  # a lease expired: the holder may only be late
        recoveries = self._journal.state.recoveries + taken
        settled = self._settle(view, status=status, died=farmer_died)
        self._journal.commit([*settled, Unlink(relative)], recoveries=recoveries)
        returned = [
            task
            for task, started in view.back_to_queue()
            if started is None or not farmer_died or task.lost + 1 < self.max_lost
        ]
        if returned:
            tasks = id_list([task.taskid for task in returned])
            if farmer_died:
                _LOGGER.warning("%s, held by farmer %s, which is gone: back in the queue", tasks, view.farmer)
            else:  # its farmer says so too, if it lives
                _LOGGER.info("%s, of worker %d of %s: back in the queue", tasks, view.worker, view.farmer)
        return returned

    def _timeline_write(self, events: list[dict[str, object]]) -> WriteAt:
        offset, data = timeline_append(self._journal.sizes()[self.timeline.name], events)
        return WriteAt(self.timeline.name, offset, data)

    def _slot_name(self, slot: SlotRecord) -> str:
        """:returns: the slot's file relative to the work directory (as journal actions name files)"""
        return str(self.slot_path(slot.farmer, slot.worker).relative_to(self.path))

    def _sync_in_claim(self, tasklist: Path) -> None:
        try:
            self._sync_tasklist_locked(tasklist)
        except TaskListError as exc:
            if not self.tasklist_error:  # said once, not at every claim
                _LOGGER.warning("not taking in new tasklist lines: %s", exc)
            self.tasklist_error = str(exc)
        else:
            self.tasklist_error = ""  # restored (or caught while being rewritten): its new lines are taken in

    # -- recovery of dead farmers -----------------------------------------------------------------------------------

    @staticmethod
    def read_slot(path: Path) -> SlotView | None:
        """:returns: the batch a slot file holds, ``None`` for an idle, missing or damaged one"""
        return _slots.read(path)

    def claimed_tasks(self) -> list[Task]:
        """:returns: every task a worker holds now, running or not started yet (no lock: what the slot files say)"""
        return [task for path in sorted(self.running.iterdir()) if (view := _slots.read(path)) for task in view.tasks]

    def running_tasks(self) -> list[SlotRecord]:
        """:returns: the tasks running now, in every farmer (no lock: what the slot files say)"""
        return [record for view in self.slot_views() for record in view.running()]

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
        if not self._anything_dead(me):
            return []  # the usual case, found without the lock: nothing to recover

        def change() -> list[Task]:
            farmers = self.read_farmers()
            returned: list[Task] = []
            for slot_path in sorted(self.running.iterdir()):
                if self._worth_a_look(slot_path, farmers, me):
                    returned.extend(self._recover_slot(slot_path, farmers, me))
            for name, (record, age) in farmers.items():
                if name != me and self._farmer_dead(record, age) and not self._slot_files(name):
                    self._forget(record)
            return returned

        return self._transaction(change)

    def _anything_dead(self, me: str | None) -> bool:
        """:returns: whether a farmer, or a worker of *me*, looks dead (read without the lock, to spare it)"""
        farmers = self.read_farmers()
        if any(name != me and self._farmer_dead(*farmer) for name, farmer in farmers.items()):
            return True
        for slot_path in self.running.iterdir():
            if not self._worth_a_look(slot_path, farmers, me):
                continue
            view = _slots.read(slot_path)
            farmer_name = slot_path.name.rpartition(".")[0]
            if farmer_name != me or (view is not None and not view.holder.is_alive_locally()):
                return True
        return False

    def _worth_a_look(self, slot_path: Path, farmers: dict[str, tuple[FarmerRecord, float]], me: str | None) -> bool:
        """:returns: whether the slot may need recovering: a live farmer's slots are its own business (but for
        *me*: its workers may have died), so they are not even read
        """
        farmer_name = slot_path.name.rpartition(".")[0]
        if farmer_name == me:
            return True
        farmer = farmers.get(farmer_name)
        if farmer is None:
            # Unregistered or forgotten: its slots are orphans. But a farmer file there that could not be read is a
            # farmer all the same (a client cache can serve it half written): never give its tasks away for that.
            return not (self.farmers / farmer_name).exists()
        return self._farmer_dead(*farmer)

    def _forget(self, record: FarmerRecord) -> None:
        workers = max(self._journal.state.workers - record.workers, 0)
        self._journal.commit([Unlink(f"farmers/{record.name}")], workers=workers)

    def _recover_slot(
        self, slot_path: Path, farmers: dict[str, tuple[FarmerRecord, float]], me: str | None
    ) -> list[Task]:
        farmer_name, _, _ = slot_path.name.rpartition(".")
        view = _slots.read(slot_path)
        farmer = farmers.get(farmer_name)
        if farmer is not None and farmer_name != me and farmer[0].holder.is_local() and not self._farmer_dead(*farmer):
            # A live farmer on this host recovers its own dead workers, after killing what they left running.
            return []
        if view is not None and not self._holder_dead(view.holder, farmer):
            return []
        if view is None and farmer is not None and not self._farmer_dead(*farmer):
            return []  # an idle slot of a live farmer
        farmer_died = farmer_name != me and (farmer is None or self._farmer_dead(*farmer))
        return self._give_back_slot(slot_path, status=LOST, farmer_died=farmer_died)

    def forget_farmer(self, name: str) -> list[Task]:
        """Put back the tasks of farmer *name*, alive or not (for a node known lost before its lease expires).

        :returns: the tasks put back
        """

        def change() -> list[Task]:
            returned = []
            for slot_path in self._slot_files(name):
                returned.extend(self._give_back_slot(slot_path, status=LOST, maybe_alive=True, farmer_died=True))
            record = self.read_farmers().get(name)
            if record is not None:
                self._forget(record[0])
            self._journal.commit([Unlink(f"farmers/{name}")])
            return returned

        return self._transaction(change)

    def requeue_failed(self, select: Callable[[int, str], bool]) -> list[int]:
        """Move the failed tasks that *select* (task ID, status) picks back to the queue, to run next, each as its
        next attempt.

        :returns: their IDs
        """
        # Read before the lock, as it may be long (accounting.tsv only grows); under it, only what was added since.
        attempts: dict[int, int] = {}
        read = self._last_attempts({taskid for taskid, _ in self._failed_entries(select)}, attempts)

        def change() -> list[int]:
            chosen: list[tuple[int, str]] = []
            keep: list[bytes] = []
            with self.failed.open("rb") as failed:
                for line in failed:
                    entry = _chosen_failed(line, select)
                    if entry is None:
                        keep.append(line)
                    else:
                        chosen.append(entry)
            if not chosen:
                return []
            self._last_attempts({taskid for taskid, _ in chosen}, attempts, start=read)  # failed meanwhile
            back = [stack_entry(taskid, command, attempts.get(taskid, 0) + 1) for taskid, command in chosen]
            rebuilt = self.path / ".failed.new"
            rebuilt.write_bytes(b"".join(keep))
            # Reversed: the stack's top is its end, so the first of them runs first.
            entries = b"".join(reversed(back))
            self._journal.commit(
                [
                    WriteAt("toprocess", self._journal.sizes()["toprocess"], entries),
                    Replace(rebuilt.name, self.failed.name),
                ]
            )
            return [taskid for taskid, _ in chosen]

        return self._transaction(change)

    def _failed_entries(self, select: Callable[[int, str], bool]) -> list[tuple[int, str]]:
        with self.failed.open("rb") as failed:
            return [chosen for line in failed if (chosen := _chosen_failed(line, select))]

    def _last_attempts(self, tasks: set[int], last: dict[int, int], *, start: int = 0) -> int:
        """Update *last* with the number of the last attempt of each of *tasks* that ``accounting.tsv`` records
        from byte *start* on.

        :returns: the offset up to which it was read (whole lines)
        """
        with contextlib.suppress(FileNotFoundError), self.accounting.open("rb") as lines:
            lines.seek(start)
            for line in lines:
                if not line.endswith(b"\n"):
                    break  # half written: read again under the lock
                start += len(line)
                taskid, attempt = [*line.split(b"\t", 2), b""][:2]
                if taskid.isdigit() and int(taskid) in tasks and attempt.isdigit():
                    last[int(taskid)] = max(last.get(int(taskid), 0), int(attempt))
        return start

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

    def remote_holders(self, *, me: str) -> dict[str, RemoteHolder]:
        """:returns: the farmers of other hosts that hold tasks, with how often they heartbeat and what their files
        show now (see :meth:`holder_marks`). One whose lease has expired is still listed: until
        :meth:`recover_dead` gives its tasks back, they are its.
        """
        farmers = {
            name: record
            for name, (record, _) in self.read_farmers().items()
            if name != me and not record.holder.is_local()
        }  # this host's farmers are checked by PID
        slots: dict[str, list[tuple[str, int]]] = {}
        holding: set[str] = set()
        for path in sorted(self.running.iterdir()) if farmers else []:  # one listing for them all
            name = path.name.rpartition(".")[0]
            if name in farmers:
                data = _files.read_small(path)
                slots.setdefault(name, []).append((path.name, len(data)))
                holding |= {name} if _slots.holds_tasks(data) else set()
        return {
            name: RemoteHolder(
                every=heartbeat_interval(farmers[name].lease),
                slots=tuple(slot for slot, _ in slots[name]),
                mark=(_files.mtime_ns(self.farmers / name), *(size for _, size in slots[name])),
            )
            for name in holding
        }

    def holder_marks(self, holders: Mapping[str, RemoteHolder]) -> dict[str, tuple[int | None, ...]]:
        """:returns: for each of *holders*, what its files show of its life, to compare with its ``mark``: its
        heartbeat, and the size of each of its slot files (a worker appends to its own at each task's start and end;
        read through an open, as NFS then revalidates: a cached size could differ without a change). A change is a
        sign of life; so is a file gone (the farmer ended, or its tasks were given back).
        """
        return {
            name: (
                _files.mtime_ns(self.farmers / name),
                *(_files.size(self.running / slot) for slot in holder.slots),
            )
            for name, holder in holders.items()
        }

    # -- reading ----------------------------------------------------------------------------------------------------

    def drain_requested(self) -> bool:
        """:returns: whether someone asked every farmer of this work directory to drain"""
        return self.drain_file.exists()

    def mark_stale(self, message: str) -> None:
        """Stop every farmer of this work directory, on every node: one of them saw a stale view of it."""
        with contextlib.suppress(OSError):  # the farmer that saw it stops anyway
            self.stale_file.write_text(f"{message}\n")

    def stale_mark(self) -> str:
        """:returns: why a farmer found this work directory stale, with what to do ("": none did)"""
        try:
            why = _files.read_small(self.stale_file).decode(errors="replace").strip()
        except OSError:  # no work directory there (yet): nothing found it stale
            return ""
        if not why:
            return ""
        return f"{why} Once the filesystem is fixed, remove {self.stale_file} and run again."

    def counts(self, views: list[SlotView] | None = None) -> Counts:
        """:param views: the slot files, if the caller has read them already
        :returns: the number of tasks in each state, with what the slot files hold and have not yet written to
        the shared files (reads the state files: O(list) bytes, no lock)
        """
        counts = slot_counts(self.slot_views() if views is None else views)
        counts.toprocess = _count_lines(self.toprocess)
        counts.finished += _count_lines(self.finished)
        counts.failed += _count_lines(self.failed)
        return counts

    def slot_views(self) -> list[SlotView]:
        """:returns: every worker's slot file, read back (no lock; one read per worker, whatever the list's length)"""
        views = (_slots.read(path) for path in sorted(self.running.iterdir()))
        return [view for view in views if view is not None]


@dataclass(frozen=True)
class RemoteHolder:
    """A farmer of another host that holds tasks, as one out of work watches it for a sign of life."""

    every: float  # seconds between its heartbeats
    slots: tuple[str, ...]  # its slot files in running/
    mark: tuple[int | None, ...]  # what its files showed: heartbeat time, then each slot file's size


class StaleViewError(WorkDirError):
    """A file of the work directory looks, from this node, older than the last farmer left it: its filesystem caches."""

    def __init__(self, path: Path, detail: str) -> None:
        fstype = _files.filesystem_type(path.parent) or "unknown"
        super().__init__(
            f"Stale view of {path} on this node ({detail}) after {STALE_PATIENCE:.0f} s: its {fstype} filesystem"
            " serves cached data to a farmer holding the lock, so farmers on other nodes would run tasks twice."
            " Turn the client caches off (GlusterFS: volume options performance.* off and mount options"
            " attribute-timeout=0,entry-timeout=0; NFS: no 'nocto'), or use another filesystem;"
            " `taskfarmer check-fs DIR` tests one. (A file edited by hand while no farmer ran: remove"
            f" {path.parent / '.journal'}, it is rebuilt.)"
        )


def _chosen_failed(line: bytes, select: Callable[[int, str], bool]) -> tuple[int, str] | None:
    """:returns: the task ID and command of a ``failed`` line that *select* picks, ``None`` for one it leaves"""
    taskid, status, command = [*line.rstrip(b"\n").split(b" ", 2), b"", b""][:3]
    # An invalid line (not UTF-8, too long) cannot run, and its recorded command is only a preview.
    if (
        not taskid.isdigit()
        or status.startswith(b"invalid:")
        or not select(int(taskid), status.decode(errors="replace"))
    ):
        return None
    return int(taskid), command.decode(errors="surrogateescape")  # bytes as they were, whatever their encoding


def _remove_empty(directories: list[Path]) -> None:
    """Undo the creation of *directories* (deepest first), keeping any a concurrent farmer already uses."""
    for directory in reversed(directories):
        with contextlib.suppress(OSError):
            for name in (".lock", ".lockfile"):  # created here, by this farmer: the directory is new
                (directory / name).unlink(missing_ok=True)
            directory.rmdir()


def heartbeat_interval(lease: float) -> float:
    """:returns: how often a farmer with this lease touches its heartbeat file"""
    return max(lease / 10, 0.5)


def heartbeat_late(age: float, lease: float) -> bool:
    """:returns: whether a heartbeat *age* seconds old is late for a farmer with this lease (two were missed)"""
    return age > 2 * heartbeat_interval(lease)


def slot_counts(views: list[SlotView]) -> Counts:
    """:returns: what the slot files hold: tasks running, claimed, and ended but not yet written to the shared files"""
    counts = Counts()
    for view in views:
        done = [end.state for end in view.ended]
        counts.finished += done.count(_slots.FINISHED)
        counts.failed += done.count(_slots.FAILED)
        running = len(view.running())
        counts.running += running
        counts.claimed += len(view.back_to_queue()) - running
    return counts


def _count_lines(path: Path) -> int:
    count = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as source:
        while block := source.read(_COUNT_BLOCK):
            count += block.count(b"\n")
    return count
