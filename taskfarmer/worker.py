"""One worker process: claim a batch of tasks, run each with the runner, record how it ended; again, until none is
left.

The outcome of each task goes to the worker's own slot file at once (without the lock every farmer shares), and to
the shared ``finished``/``failed``/``accounting.tsv``/``timeline.json`` when the worker claims its next batch.
Its watcher thread (``watcher``) ends the running task when the farmer says stop, when the worker gets SIGTERM,
or when the farmer's main process is gone (a worker never outlives its farmer): the task then goes back to the
queue. A drain lets the running task finish and claims nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from taskfarmer import config, process
from taskfarmer.batching import BatchSizer
from taskfarmer.directives import split
from taskfarmer.errors import TaskFarmerError, WorkDirError
from taskfarmer.logs import FILES, TaskLog, TaskLogs
from taskfarmer.plan import MISSING, Planner, TaskPlan, bound, missing_outputs
from taskfarmer.store import SKIPPED, Holder, Outcome, SlotLog, SlotRecord, Task, WorkDir, ended
from taskfarmer.watcher import STOP, TaskWatcher

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext

    from taskfarmer.config import Definition
    from taskfarmer.packing import Allocation, ResourcePool

_LOGGER: Final = logging.getLogger(__name__)
EXIT_DONE: Final = 0  # no task left
EXIT_STOPPED: Final = 3  # told to stop; its task went back to the queue
EXIT_STORE: Final = 5  # the work directory cannot be trusted from this node (a stale view): the farm stops
SLOT_VARIABLE: Final = "TASKFARMER_SLOT"
# Exit statuses of a task killed by the signals batch systems stop jobs with (negative: the signal; 128+N: a shell's).
_STOP_DEATHS: Final = frozenset(
    code for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL) for code in (-sig, 128 + sig)
)
_STOP_SIGNAL_WAIT: Final = 0.5
FARMER_VARIABLE: Final = "TASKFARMER_FARMER"
WORKER_NAME: Final = "taskfarmer-w"  # how a worker process shows in ps and top: taskfarmer-w0, taskfarmer-w1...
# The signals a farmer handles (stop, drain): blocked while it starts a worker, which sets its own handlers first.
FARMER_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP})


@dataclass(frozen=True)
class TaskPolicy:
    """Limits each task of a farm lives under."""

    timeout: float | None = None  # seconds a task may run; then it is killed and fails with "timeout"
    memory: int | None = None  # bytes its processes may use together; then killed, fails with "memory"
    retries: int = 0  # how many times a failed task runs again before it counts as failed


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (picklable: it crosses to a spawned process)."""

    workdir: str
    lock_path: str
    tasklist: str
    farmer: str
    worker: int
    runner: Definition
    handler: Definition
    parent_pid: int
    log_level: int = logging.WARNING
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    environment: tuple[tuple[str, str], ...] = ()  # for this slot only (GPU binding)
    log_mode: str = FILES
    max_failures: int | None = None  # the farm's failed tasks after which no worker claims another
    grace: float = process.DEFAULT_GRACE  # between SIGTERM and SIGKILL of a task (unless its runner sets its own)
    work_end: float | None = None  # epoch seconds: when the allocation (or --timeout) ends; no task past it is claimed
    claim_until: float | None = None  # epoch seconds after which no task is claimed (work_end - --task-duration)
    skip_existing: bool = False  # a task whose declared outputs all exist is recorded as finished, not run
    forward_logs: bool = False  # log records and task starts go to the farmer (which shows them in its live view)
    forked: bool = False  # a fork of the farmer, not a new interpreter: what it inherited is let go first


class FarmFlags:
    """What the farmer tells its workers (stop, drain) and the failures they count, in shared memory without locks.

    A multiprocessing ``Event`` or ``Value`` takes a shared semaphore: a process killed with ``kill -9`` while
    holding it would hang every other. Here each cell has one writer: the farmer for the flags, each worker for
    its own failure counter.
    """

    _STOP, _DRAIN, _COUNTERS = 0, 1, 2

    def __init__(self, context: BaseContext, *, workers: int) -> None:
        self._cells: Any = context.RawArray("i", self._COUNTERS + workers)

    def stop(self) -> None:
        """Tell every worker to kill its task, give it back and exit."""
        self._cells[self._STOP] = 1

    @property
    def stopping(self) -> bool:
        """:returns: whether the farm stops"""
        return bool(self._cells[self._STOP])

    def drain(self) -> None:
        """Tell every worker to finish its task and claim no more."""
        self._cells[self._DRAIN] = 1

    @property
    def draining(self) -> bool:
        """:returns: whether the farm drains"""
        return bool(self._cells[self._DRAIN])

    def add_failure(self, worker: int) -> None:
        """Count a task of *worker* that failed for good (only that worker calls this)."""
        self._cells[self._COUNTERS + worker] += 1

    @property
    def failures(self) -> int:
        """:returns: the tasks of the farm that failed for good"""
        return sum(self._cells[self._COUNTERS :])


def worker_main(spec: WorkerSpec, flags: FarmFlags, pool: ResourcePool, events: Connection) -> None:
    """Entry point of a worker process; exits with :data:`EXIT_DONE` or :data:`EXIT_STOPPED`.

    It starts with the farmer's signals blocked (:data:`FARMER_SIGNALS`), and unblocks them once its own handlers
    are set.
    """
    if spec.forked:
        process.release_inherited_files()
    logging.basicConfig(
        level=spec.log_level, format=f"%(asctime)s worker {spec.worker}: %(message)s", force=spec.forked
    )
    if spec.forward_logs:  # the farmer draws a live view on the terminal: its lines go above it, not through it
        logging.getLogger().handlers = [_ForwardedLogs(events, spec.worker)]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the farmer decides
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # so does a closed terminal
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    process.become_subreaper()
    process.set_title(f"{WORKER_NAME}{spec.worker} of farmer {spec.farmer} (pytaskfarmer)")
    worker = Worker(spec, flags=flags, pool=pool, events=events)
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FARMER_SIGNALS)
    try:
        code = worker.run()
    except WorkDirError as exc:
        worker.report_error(str(exc))
        code = EXIT_STORE
    events.close()
    os._exit(code)  # skip multiprocessing's atexit work: the task state is already on disk


class Worker:
    """The claim -> run -> record loop of one worker slot."""

    def __init__(self, spec: WorkerSpec, *, flags: FarmFlags, pool: ResourcePool, events: Connection) -> None:
        self.spec = spec
        self._flags = flags
        self._pool = pool
        self._events = events
        self._local_stop = threading.Event()
        self.store = WorkDir(Path(spec.workdir), lock_path=Path(spec.lock_path))
        self.runner, self.variables = config.build_runner(spec.runner, grace=spec.grace)
        self._planner = Planner((self.runner, self.variables), default_name=spec.runner.name, grace=spec.grace)
        self.handler = config.build_tasklist(spec.handler)
        # Who runs the tasks (farmer, worker, host): what the records of each attempt name, whatever the task.
        self.slot = SlotRecord(-1, "", spec.farmer, spec.worker, Holder.this_process(), 0.0)
        self._slot_log = SlotLog(self.store.slot_path(spec.farmer, spec.worker))
        self._sizer = BatchSizer()
        self._index = 0  # of the running task in the batch
        self.watcher = TaskWatcher(
            self.runner, stopping=self.stopping, timeout=spec.policy.timeout, memory=spec.policy.memory
        )
        stream_name = f"stream.{spec.farmer}.{spec.worker}"
        self.logs = TaskLogs(self.store.logs.resolve(), mode=spec.log_mode, stream_name=stream_name)
        os.environ.update(dict(spec.environment))
        os.environ.update(
            {
                SLOT_VARIABLE: f"{spec.farmer}.{spec.worker}",
                FARMER_VARIABLE: spec.farmer,
                "TASKFARMER_WORKER": str(spec.worker),
                "TASKFARMER_WORKDIR": str(self.store.path.resolve()),
                "TASKFARMER_HOST": self.slot.holder.host,
            }
        )

    def request_stop(self) -> None:
        """Stop after (killing) the current task; safe to call from a signal handler."""
        self._local_stop.set()

    def stopping(self) -> bool:
        """:returns: whether this worker must kill its task and claim nothing more"""
        return self._local_stop.is_set() or self._flags.stopping or os.getppid() != self.spec.parent_pid

    def _may_start(self) -> bool:
        """:returns: whether this worker may start another task (or claim more)"""
        limit = self.spec.max_failures
        too_many = limit is not None and self._flags.failures >= limit
        too_late = self.spec.claim_until is not None and time.time() >= self.spec.claim_until
        return not (self.stopping() or self._flags.draining or too_many or too_late)

    def run(self) -> int:
        """Work until no task is left (that it can run), a stop, or a drain.

        :returns: the worker's exit status
        """
        try:
            return self._work()
        finally:
            self.logs.finish()

    def _work(self) -> int:
        tasks = self._claim()
        while tasks:
            for self._index, task in enumerate(tasks):
                if not self._may_start():
                    return self._give_back()  # the tasks of the batch not started yet go back, on top
                started = time.monotonic()
                if not self._run_task(task):
                    return self._give_back(returned=task)
                self._sizer.ran(time.monotonic() - started)
            tasks = self._claim()
        if self.store.unfit:
            self._send("unfit", -1, str(self.store.unfit))
        if self.store.tasklist_error:  # as its last look found it: a list restored since is taken in, and no error
            self._send("tasklist", -1, self.store.tasklist_error)
        return EXIT_DONE if self._may_start() else EXIT_STOPPED

    def _claim(self) -> list[Task]:
        """Record the batch just run in the shared files and claim the next one (none when this worker stops)."""
        want = 0
        if self._may_start():
            want = self._sizer.size(
                lock_seconds=self.store.lock_seconds,
                queue_left=self.store.queue_left,
                workers=self.store.farm_workers,
            )
        tasklist = Path(self.spec.tasklist)
        return self.store.exchange(self._slot_log, self.slot, want=want, tasklist=tasklist, fits=self._fits)

    def _fits(self, command: str) -> bool:
        """:returns: whether this farmer can run the task of *command* (cores, GPUs, time left); one that cannot
        stays in the queue for farmers that can
        """
        try:
            _, directive = split(command)
        except TaskFarmerError:
            return True  # claimed, it fails with a clear status
        if not self._pool.fits(cores=directive.cores, gpus=directive.gpus):
            return False
        end = self.spec.work_end
        return end is None or directive.duration is None or time.time() + directive.duration <= end

    def _give_back(self, *, returned: Task | None = None) -> int:
        self.store.exchange(self._slot_log, self.slot, want=0)
        if returned is not None:
            _LOGGER.info("task %d stopped: back in the queue", returned.taskid)
            self._send("returned", returned.taskid, "")
        return EXIT_STOPPED

    def _run_task(self, task: Task) -> bool:
        """Run *task* on the cores and GPUs it needs, again at once while it fails and has retries left.

        :returns: ``False`` when it was stopped (it goes back to the queue)
        """
        try:
            plan = self._planner.plan(task)
        except TaskFarmerError as exc:
            self._record_unrun(task, reason="invalid:directive", message=str(exc))
            return True
        if self.spec.skip_existing and plan.outputs and not missing_outputs(plan.outputs):
            self._record_unrun(task, reason=SKIPPED, message="")
            return True
        needs = plan.directive
        allocation = self._pool.acquire(
            self.spec.worker, cores=needs.cores, gpus=needs.gpus, stopping=lambda: not self._may_start()
        )
        if allocation is None:
            return False
        try:
            return self._attempts(task, plan, allocation)
        finally:
            self._pool.release(self.spec.worker)

    def _attempts(self, task: Task, plan: TaskPlan, allocation: Allocation) -> bool:
        failures = 0  # of this task here: an attempt stopped or lost elsewhere does not use up --retries
        while True:
            outcome = self._execute(task, plan, allocation)
            if outcome is None:
                return False
            failures += not outcome.succeeded
            retry = not outcome.succeeded and failures <= self.spec.policy.retries
            self._record(task, outcome, retry=retry)
            if not retry:
                return True
            task = replace(task, attempt=outcome.attempt + 1)

    def _record(self, task: Task, outcome: Outcome, *, retry: bool) -> None:
        if not (outcome.succeeded or retry):
            self._flags.add_failure(self.spec.worker)
        _LOGGER.info("task %d %s after %.2f s", task.taskid, _describe(outcome, retry=retry), outcome.duration)
        self._slot_log.end(ended(self.slot, self._index, task, outcome, retry=retry))
        status = "ok" if outcome.succeeded else outcome.status
        self._send("retry" if retry else "end", task.taskid, status, outcome.log)

    def _record_unrun(self, task: Task, *, reason: str, message: str) -> None:
        """Record a task that is not run: its directive is wrong, or its outputs exist already."""
        log = ""
        if message:
            opened = self.logs.open(task.taskid, task.attempt)
            opened.handle.write(f"pytaskfarmer: not run: {message}\n")
            log = self.logs.close(opened)
        now = time.time()
        outcome = Outcome(0 if reason == SKIPPED else 2, now, now, attempt=task.attempt, log=log, reason=reason)
        self._record(task, outcome, retry=False)

    def report_error(self, message: str) -> None:
        """Tell the farmer why this worker cannot go on (it stops the farm and says so)."""
        self._send("error", -1, message)

    def _send(self, kind: str, taskid: int, detail: str, extra: str = "") -> None:
        with contextlib.suppress(OSError):  # the farmer is gone: stopping() notices it
            self._events.send((kind, self.spec.worker, taskid, detail, extra))

    def _execute(self, task: Task, plan: TaskPlan, allocation: Allocation) -> Outcome | None:
        """Run one task.

        :returns: its outcome, or ``None`` when it was killed because of a stop
        """
        if self.stopping():
            return None  # claimed just as the stop came: give it back unrun
        log = self.logs.open(task.taskid, task.attempt)
        self._slot_log.start(self._index, attempt=log.attempt, log=log.location())
        self._prepare_environment(task, log)
        if self.spec.forward_logs:  # only a live view shows each running task: spare the farmer an event per task
            self._send("start", task.taskid, task.command)
        _LOGGER.info("task %d started (attempt %d): %s", task.taskid, log.attempt, task.command)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        memory = plan.directive.memory if plan.directive.memory is not None else self.spec.policy.memory
        self.watcher.task_started(runner=plan.runner, memory=memory)
        started = time.time()
        with bound(plan, allocation):
            returncode, reason = self._run_runner(task, plan, log.handle)
        ended = time.time()
        verdict = self.watcher.task_ended()
        # Anything the task left below this (subreaper) worker ends with it, even what cleared its environment.
        process.kill_all_descendants(grace=self.spec.grace)
        if verdict.killed_for == STOP or self._stopped_meanwhile(returncode):
            # What it printed (in stream mode, its span is known only now; none: its file goes once it is given back)
            self._slot_log.record_log(self._index, self.logs.close(log))
            return None
        missing = missing_outputs(plan.outputs) if returncode == 0 and not (verdict.killed_for or reason) else []
        if missing:
            with contextlib.suppress(ValueError, OSError):  # said where the user looks, unless a runner closed it
                log.handle.write(f"pytaskfarmer: {MISSING}: absent or empty: {', '.join(missing)}\n")
            reason = MISSING
        location = self.logs.close(log)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return Outcome(
            returncode,
            started,
            ended,
            attempt=log.attempt,
            log=location,
            reason=verdict.killed_for or reason,
            peak_rss_kb=max(verdict.peak_rss_kb, self._peak_rss_kb(plan.runner, before, after)),
            cpu_user=after.ru_utime - before.ru_utime,
            cpu_system=after.ru_stime - before.ru_stime,
        )

    def _stopped_meanwhile(self, returncode: int) -> bool:
        """Tell whether the task was killed by the farm's stop, though not by the watcher.

        A batch system ending a job (Slurm at its time limit, ``scancel``, HTCondor's ``condor_rm``) signals every
        process of the job at once: the task may die of it before the watcher's next look. That task goes back to
        the queue, it did not fail. A task that ended by itself (any other status, 0 included) is recorded.
        """
        if returncode not in _STOP_DEATHS:
            return False
        deadline = time.monotonic() + _STOP_SIGNAL_WAIT  # this worker's own SIGTERM may be a moment behind
        while time.monotonic() < deadline:
            if self.stopping():
                return True
            time.sleep(0.02)
        return False

    @staticmethod
    def _peak_rss_kb(runner: object, before: resource.struct_rusage, after: resource.struct_rusage) -> int:
        # The kernel's figure for the task's largest process; RUSAGE_CHILDREN only shows it when it beat the past.
        usage = getattr(runner, "last_usage", None)
        if usage is not None:
            return int(usage.ru_maxrss)
        return int(after.ru_maxrss) if after.ru_maxrss > before.ru_maxrss else 0

    def _run_runner(self, task: Task, plan: TaskPlan, logfh: IO[str]) -> tuple[int, str]:
        try:
            command = self.handler.command(plan.line, taskid=task.taskid)
            returncode = plan.runner.run(task.taskid, command, logfh)
        except Exception:  # noqa: BLE001  # a user's runner or handler failing fails its task, not the farm
            logfh.write(f"pytaskfarmer: the runner failed:\n{traceback.format_exc()}")
            return 1, "error:runner"
        if not isinstance(returncode, int):
            logfh.write(f"pytaskfarmer: the runner returned {returncode!r} instead of an exit status\n")
            return 1, "error:runner"
        return returncode, ""

    @staticmethod
    def _prepare_environment(task: Task, log: TaskLog) -> None:
        # The worker is a process of its own that runs one task at a time: its environment is the task's.
        os.environ["PROC_NUMBER"] = os.environ["TASKFARMER_TASK_ID"] = str(task.taskid)
        os.environ["TASKFARMER_ATTEMPT"] = str(log.attempt)
        os.environ["TASKFARMER_LOG"] = str(log.path)


class _ForwardedLogs(logging.Handler):
    """Sends a worker's log lines to its farmer, as ``("log", worker, -1, line, "")`` events."""

    def __init__(self, events: Connection, worker: int) -> None:
        super().__init__()
        self._events = events
        self.setFormatter(logging.Formatter(f"%(asctime)s worker {worker}: %(message)s"))
        self._worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):
            self._events.send(("log", self._worker, -1, self.format(record), ""))


def _describe(outcome: Outcome, *, retry: bool) -> str:
    if outcome.succeeded:
        return "finished"
    return f"{outcome.status} (will run again)" if retry else outcome.status
