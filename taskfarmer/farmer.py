"""The farmer's main process: N worker processes on one work directory, kept alive until the list is done.

It never runs a task itself. It starts the workers, replaces one that dies (its task goes back to the queue),
heartbeats for other hosts, gives back the tasks of dead farmers, and on a stop (signal, ``--timeout``,
``--max-failures``) makes every worker end its task and return it. A drain (the file ``WORKDIR/drain`` or
SIGUSR2) lets running tasks finish and claims nothing more. It draws nothing: progress goes to a callback.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from taskfarmer import process
from taskfarmer.errors import WorkDirError
from taskfarmer.logs import FILES
from taskfarmer.packing import ResourcePool, pool_lock_path
from taskfarmer.store import FarmerRecord, RemoteHolder, WorkDir, heartbeat_interval
from taskfarmer.worker import (
    EXIT_DONE,
    EXIT_STOPPED,
    EXIT_STORE,
    FARMER_SIGNALS,
    SLOT_VARIABLE,
    FarmFlags,
    TaskPolicy,
    WorkerSpec,
    worker_main,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess
    from pathlib import Path
    from types import FrameType

    from taskfarmer.config import Definition

_LOGGER: Final = logging.getLogger(__name__)
_TICK: Final = 0.1
_STOP_WAIT_EXTRA: Final = 10.0  # beyond the runner's grace, before workers are killed outright
_RESPAWN_LIMIT: Final = 5  # deaths of one slot within _RESPAWN_WINDOW before the farmer gives up on it
_RESPAWN_WINDOW: Final = 60.0
_IDLE_POLL: Final = 2.0
_FIRST_POLL: Final = 0.1  # a farmer out of work looks at the others' slot files this soon, then less often
_DRAIN_CHECK: Final = 1.0  # seconds between two looks for WORKDIR/drain


class StopReason(enum.Enum):
    """Why a farmer stopped before the list was done."""

    SIGNAL = "signal"
    TIMEOUT = "timeout"
    IMMEDIATE = "Ctrl-C while stopping"
    WORKERS_FAILING = "workers keep dying"
    FAIL_FAST = "too many failed tasks, --max-failures"
    STORE = "the work directory cannot be trusted from this node"


@dataclass(frozen=True)
class FarmerOptions:
    """How one farmer runs."""

    tasklist: Path
    processes: int
    runner: Definition
    handler: Definition
    timeout: float | None = None
    lease: float = 600.0
    grace: float = process.DEFAULT_GRACE
    log_level: int = logging.WARNING
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    max_failures: int | None = None
    gpus: tuple[str, ...] = ()
    log_mode: str = FILES
    work_end: float | None = None  # epoch seconds: when the allocation (or --timeout) ends; no task past it is claimed
    claim_until: float | None = None  # epoch seconds after which no task is claimed (work_end - --task-duration)
    skip_existing: bool = False  # tasks whose declared outputs all exist are recorded as finished, not run
    forward_logs: bool = False  # workers send their log lines and task starts to the listener (a live view shows them)


@dataclass
class FarmerResult:
    """What one farmer did."""

    stopped: StopReason | None = None
    drained: bool = False
    drain_signalled: bool = False  # the drain came from SIGUSR2 (else from the drain file)
    out_of_time: bool = False
    ran: int = 0
    failed: int = 0
    retried: int = 0
    returned: list[int] = field(default_factory=list)  # this farmer's running tasks it gave back when stopping
    recovered: list[int] = field(default_factory=list)  # tasks of dead farmers it put back in the queue
    error: str = ""  # why the work directory could not be used (StopReason.STORE)
    unfit: int = 0  # tasks left on top of the queue that need more cores, GPUs or time than this farmer has
    tasklist_error: str = ""  # why lines added to the tasklist while it ran were not taken in


class Farmer:
    """Runs a tasklist with N worker processes until it is done or told to stop."""

    def __init__(
        self,
        store: WorkDir,
        options: FarmerOptions,
        *,
        listener: Callable[[tuple[Any, ...]], None],
        runner: object = None,
    ) -> None:
        """:param listener: receives the workers' events: ``("end", worker, taskid, status, log)`` and the others,
        ``("start", worker, taskid, command)`` only for a live view (``forward_logs``), and the farmer's own:
        ``("stopping", running, -1, grace, "again" after a Ctrl-C else "")``, ``("tick",)``
        :param runner: the runner built in this process, whose ``cleanup`` removes what dead workers left behind
        """
        self.store = store
        self._runner = runner
        self.options = options
        self.record = FarmerRecord.new(workers=options.processes, lease=options.lease)
        self._listener = listener
        self._context = multiprocessing.get_context("spawn")
        self._fork = multiprocessing.get_context("fork")
        self._flags = FarmFlags(self._context, workers=options.processes)
        self._slots_lock = pool_lock_path(self.record.name, host=self.record.holder.host)
        self._pool = ResourcePool(
            self._context,
            slots=options.processes,
            gpus=options.gpus,
            workers=options.processes,
            lock=self._slots_lock,
        )
        self._unfit = 0  # what the last workers to claim found they could not run
        # Once work ran out: other hosts' farmers holding tasks that showed no sign of life since, and when to read
        # every farmer's file again.
        self._unproven: dict[str, RemoteHolder] | None = None
        self._next_look = 0.0
        self._next_poll, self._poll = 0.0, _FIRST_POLL  # their slot files: looked at again after 0.1 s, 0.2 s... 2 s
        self._workers: dict[int, BaseProcess] = {}
        self._pipes: dict[int, Connection] = {}
        self._deaths: dict[int, list[float]] = {}
        self._interrupted = False  # the stop came from a Ctrl-C
        self._kill_now = False  # a Ctrl-C came while stopping: no more grace
        self._previous_handlers: dict[int, Any] = {}
        self.result = FarmerResult()

    # -- signals ----------------------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT, SIGTERM, SIGUSR1 and SIGHUP (its terminal closed) stop the farmer cleanly; a second SIGINT stops
        it at once. A SIGHUP ignored when the farmer started (``nohup``) stays ignored.

        The previous handlers come back when :meth:`run` returns.
        """
        for signum in FARMER_SIGNALS:
            if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # No I/O here: the main loop notices within one tick.
        if signum == signal.SIGUSR2:
            self._flags.drain()
            self.result.drain_signalled = True
            return
        if self.result.stopped is None:
            self.result.stopped = StopReason.SIGNAL
            self._interrupted = signum == signal.SIGINT
        elif signum == signal.SIGINT:  # already stopping: the user wants it over now
            self._kill_now = True
            if self.result.stopped in (StopReason.SIGNAL, StopReason.TIMEOUT):  # a stop of more weight keeps its say
                self.result.stopped = StopReason.IMMEDIATE

    # -- the main loop ----------------------------------------------------------------------------------------------

    def run(self) -> FarmerResult:
        """Farm until the list is done or a stop; the workdir must exist and hold the tasklist already."""
        process.become_subreaper()
        if self.store.drain_requested():
            self._flags.drain()  # a farmer started during a drain claims nothing
        self.store.register(self.record)
        try:
            self.result.recovered.extend(t.taskid for t in self.store.recover_dead(me=self.record.name))
            self._farm()
        except WorkDirError as exc:
            self._store_failed(str(exc))
        finally:
            self._shutdown()
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
        return self.result

    def _farm(self) -> None:
        deadline = time.monotonic() + self.options.timeout if self.options.timeout else None
        next_heartbeat = next_drain_check = 0.0
        for slot in range(self.options.processes):
            self._start_worker(slot)
        while self.result.stopped is None:
            self._drain_events(_TICK)
            self._listener(("tick",))
            if deadline is not None and time.monotonic() >= deadline:
                self.result.stopped = StopReason.TIMEOUT
            if time.monotonic() >= next_drain_check:
                # Not every tick: on a shared filesystem each look is a metadata operation, times every farmer.
                next_drain_check = time.monotonic() + _DRAIN_CHECK
                self._check_drain()
            self._reap_workers()
            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + heartbeat_interval(self.options.lease)
            if not self._workers and not self._more_work():
                return

    def _check_drain(self) -> None:
        if why := self.store.stale_mark():
            self._store_failed(why, mark=False)
        if not self._flags.draining and self.store.drain_requested():
            _LOGGER.warning("%s exists: finishing the running tasks, claiming no more", self.store.drain_file)
            self._flags.drain()
        if self._flags.draining and not self.record.draining:
            if self.result.drain_signalled:
                _LOGGER.warning("SIGUSR2: finishing the running tasks, claiming no more")
            self.record = replace(self.record, draining=True)
            self.store.update_farmer(self.record)  # says so in farmers/, for `taskfarmer status`

    def _more_work(self) -> bool:
        """All workers found the queue empty: start them again if tasks came back; wait for late farmers."""
        if self._must_end():
            return False
        now = time.monotonic()
        if now < self._next_poll:
            return True  # waiting for other hosts' farmers: the next look comes later (quickly at first)
        full_look = now >= self._next_look
        if full_look:  # it reads every farmer's file: while waiting, at the pace they heartbeat
            self.result.recovered.extend(t.taskid for t in self.store.recover_dead(me=self.record.name))
        if self._unfit:
            # The tasks left need more than this farmer has: they are for bigger farmers (or --proc, --gpus).
            self.result.unfit = self._unfit
            return False
        if self.store.toprocess.stat().st_size > 0:
            self._unproven, self._next_look, self._next_poll, self._poll = None, 0.0, 0.0, _FIRST_POLL
            for slot in range(self.options.processes):
                self._start_worker(slot)
            return True
        if not self._wait_for_holders():
            return False
        self._next_poll = now + self._poll
        self._poll = min(2 * self._poll, _IDLE_POLL)
        if full_look:
            self._next_look = now + max(min(held.every for held in (self._unproven or {}).values()) / 2, _IDLE_POLL)
        return True

    def _must_end(self) -> bool:
        """:returns: whether this farmer ends with work left: drained, or its allocation about to end"""
        if self._flags.draining:
            self.result.drained = True
        elif self.options.claim_until is not None and time.time() >= self.options.claim_until:
            self.result.out_of_time = True
        return self.result.drained or self.result.out_of_time

    def _wait_for_holders(self) -> bool:
        """:returns: whether farmers of other hosts that hold tasks have not shown a sign of life since this one ran
        out of work (a heartbeat, a task started or ended in their slot files). One that crashed shows none, and its
        tasks come back when its lease expires: leaving before would leave them to no one.
        """
        if self._unproven is None:  # work just ran out
            self._unproven = self.store.remote_holders(me=self.record.name)
            return bool(self._unproven)
        marks = self.store.holder_marks(self._unproven)
        self._unproven = {name: held for name, held in self._unproven.items() if marks[name] == held.mark}
        return bool(self._unproven)

    def _store_failed(self, message: str, *, mark: bool = True) -> None:
        if self.result.stopped is not StopReason.STORE:
            if mark:
                self.store.mark_stale(message)  # the farmers on other nodes stop too, within a second
            self.result.stopped, self.result.error = StopReason.STORE, message

    def _heartbeat(self) -> None:
        self.store.heartbeat(self.record)
        self.result.recovered.extend(t.taskid for t in self.store.recover_dead(me=self.record.name))

    def _drain_events(self, timeout: float) -> None:
        """Pass on the workers' events, at most every *timeout* seconds; return early when a worker ended.

        Waiting on the workers' ends only (not on their pipes) keeps this process from waking up for every task:
        a pipe holds a thousand events, more than a worker sends in one tick.
        """
        sentinels = [worker.sentinel for worker in self._workers.values()]
        if sentinels:
            multiprocessing.connection.wait(sentinels, timeout)
        else:
            time.sleep(timeout)
        for slot in list(self._pipes):
            self._read_pipe(slot)

    def _read_pipe(self, slot: int) -> None:
        pipe = self._pipes[slot]
        try:
            while pipe.poll():
                event = pipe.recv()
                self._count(event)
                self._listener(event)
        except (EOFError, OSError):
            del self._pipes[slot]

    def _count(self, event: tuple[Any, ...]) -> None:
        if event[0] == "end":
            self.result.ran += 1
            self.result.failed += event[3] != "ok"
            limit = self.options.max_failures
            if limit is not None and self._flags.failures >= limit and self.result.stopped is None:
                self.result.stopped = StopReason.FAIL_FAST
        elif event[0] == "retry":
            self.result.retried += 1
        elif event[0] == "returned":
            self.result.returned.append(event[2])
        elif event[0] == "unfit":
            self._unfit = max(self._unfit, int(event[3]))
        elif event[0] == "tasklist":
            self.result.tasklist_error = event[3]
        elif event[0] == "error":
            self._store_failed(event[3])

    # -- workers ----------------------------------------------------------------------------------------------------

    def _start_worker(self, slot: int) -> None:
        spec = WorkerSpec(
            workdir=str(self.store.path),
            lock_path=str(self.store.lock_path),
            tasklist=str(self.options.tasklist),
            farmer=self.record.name,
            worker=slot,
            runner=self.options.runner,
            handler=self.options.handler,
            parent_pid=os.getpid(),
            log_level=self.options.log_level,
            policy=self.options.policy,
            environment=gpu_environment(self.options.gpus, slot),
            log_mode=self.options.log_mode,
            max_failures=self.options.max_failures,
            work_end=self.options.work_end,
            claim_until=self.options.claim_until,
            skip_existing=self.options.skip_existing,
            forward_logs=self.options.forward_logs,
            grace=self.options.grace,
        )
        # A fork starts a worker in milliseconds, where a new interpreter takes a fifth of a second of CPU to import
        # what a worker needs; but a fork copies other threads' locks as they are: with a thread (the live view's)
        # running, a new interpreter it is.
        forked = threading.active_count() == 1
        spec = replace(spec, forked=forked)
        context = self._fork if forked else self._context
        receiver, sender = context.Pipe(duplex=False)
        args = (spec, self._flags, self._pool, sender)
        worker = context.Process(target=worker_main, args=args, name=f"worker-{slot}")
        # The farmer's signal handlers must not run in a forked worker before it sets its own: it unblocks them then.
        signal.pthread_sigmask(signal.SIG_BLOCK, FARMER_SIGNALS)
        try:
            worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FARMER_SIGNALS)
        sender.close()  # the worker holds the only sending end: EOF tells us it is gone
        self._workers[slot] = worker
        self._pipes[slot] = receiver

    def _reap_workers(self) -> None:
        for slot, worker in list(self._workers.items()):
            if worker.is_alive():
                continue
            worker.join()
            del self._workers[slot]
            if slot in self._pipes:
                self._read_pipe(slot)  # its last events
                self._pipes.pop(slot, None)
            if worker.exitcode not in (EXIT_DONE, EXIT_STOPPED, EXIT_STORE) and self.result.stopped is None:
                self._replace_dead_worker(slot, worker.exitcode)

    def _replace_dead_worker(self, slot: int, exitcode: int | None) -> None:
        _LOGGER.warning("worker %d died (exit status %s): its task goes back to the queue", slot, exitcode)
        process.kill_marked(SLOT_VARIABLE, f"{self.record.name}.{slot}", grace=self.options.grace)
        self._pool.release(slot)
        self._cleanup_runner()
        self.result.recovered.extend(t.taskid for t in self.store.recover_dead(me=self.record.name))
        now = time.monotonic()
        deaths = [t for t in self._deaths.get(slot, []) if now - t < _RESPAWN_WINDOW] + [now]
        self._deaths[slot] = deaths
        if len(deaths) >= _RESPAWN_LIMIT:
            _LOGGER.error("worker %d died %d times within %.0f s: stopping", slot, len(deaths), _RESPAWN_WINDOW)
            self.result.stopped = StopReason.WORKERS_FAILING
            return
        self._start_worker(slot)

    def _cleanup_runner(self) -> None:
        cleanup = getattr(self._runner, "cleanup", None)  # PyTaskFarmer runners have none
        if cleanup is not None:
            try:
                cleanup(workdir=self.store.path)
            except Exception:  # a user's runner failing to clean up must not stop the farm from stopping cleanly
                _LOGGER.exception("the runner's cleanup failed")

    # -- stopping ---------------------------------------------------------------------------------------------------

    def _running_here(self) -> int:
        """:returns: how many tasks this farmer's workers run now (their slot files say: a task's start is written
        there before it starts)
        """
        views = (self.store.read_slot(self.store.slot_path(self.record.name, slot)) for slot in self._workers)
        return sum(len(view.running()) for view in views if view is not None)

    def _shutdown(self) -> None:
        """Make every worker end its task and return it; kill the ones that do not; leave no process behind."""
        self._flags.stop()
        # The tasks get their runner's grace: --grace, unless the runner's INI sets its own.
        runner_grace = getattr(self._runner, "grace", None)  # a PyTaskFarmer runner has none
        task_grace = max(self.options.grace, runner_grace if isinstance(runner_grace, (int, float)) else 0.0)
        if self._workers and self.result.stopped is not None:
            again = "again" if self._interrupted else ""
            self._listener(("stopping", self._running_here(), -1, str(task_grace), again))
        deadline = time.monotonic() + task_grace + _STOP_WAIT_EXTRA
        while self._workers and time.monotonic() < deadline and not self._kill_now:
            self._drain_events(_TICK)
            self._listener(("tick",))  # the view stays alive while tasks end
            self._workers = {slot: w for slot, w in self._workers.items() if w.is_alive()}
        # A second Ctrl-C may have come while waiting: then no more grace for anything.
        grace = 0.0 if self._kill_now else self.options.grace
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.kill()
            worker.join()
        self._workers.clear()
        process.kill_farm_leftovers(grace=grace)
        self._cleanup_runner()
        self._drain_events(0)
        try:
            # Now mostly the tasks of this farmer's workers that had to be killed: count them as given back.
            self.result.returned.extend(t.taskid for t in self.store.recover_dead(me=self.record.name))
            self.store.unregister(self.record)
        except WorkDirError as exc:
            self._store_failed(str(exc))  # the next farmer that sees the work directory right recovers them
        self._slots_lock.unlink(missing_ok=True)


def gpu_environment(gpus: tuple[str, ...], slot: int) -> tuple[tuple[str, str], ...]:
    """The GPU a worker slot is bound to: slots share the GPUs round robin (several workers per GPU is fine).

    :returns: the variables that make CUDA and ROCm programs see only that GPU (none without ``--gpus``)
    """
    if not gpus:
        return ()
    gpu = gpus[slot % len(gpus)]
    return (
        ("CUDA_VISIBLE_DEVICES", gpu),
        ("ROCR_VISIBLE_DEVICES", gpu),
        ("HIP_VISIBLE_DEVICES", gpu),
        ("TASKFARMER_GPU", gpu),
    )
