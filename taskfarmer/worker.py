"""One worker process: claim a task, run it with the runner, record how it ended; again, until none is left.

A watcher thread ends the running task when the farmer says stop, when the worker gets SIGTERM, or when the
farmer's main process is gone (a worker never outlives its farmer); the task then goes back to the queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from taskfarmer import config, process
from taskfarmer.store import Holder, Outcome, SlotRecord, Task, WorkDir

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Event

    from taskfarmer.config import Definition

_LOGGER: Final = logging.getLogger(__name__)
_WATCH_INTERVAL: Final = 0.2
EXIT_DONE: Final = 0  # no task left
EXIT_STOPPED: Final = 3  # told to stop; its task went back to the queue
SLOT_VARIABLE: Final = "TASKFARMER_SLOT"
FARMER_VARIABLE: Final = "TASKFARMER_FARMER"


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


def worker_main(spec: WorkerSpec, stop: Event, events: Connection) -> None:
    """Entry point of a worker process; exits with :data:`EXIT_DONE` or :data:`EXIT_STOPPED`."""
    logging.basicConfig(level=spec.log_level, format=f"%(asctime)s worker {spec.worker}: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the farmer decides
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    process.become_subreaper()
    worker = Worker(spec, stop, events)
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop())
    code = worker.run()
    events.close()
    os._exit(code)  # skip multiprocessing's atexit work: the task state is already on disk


class Worker:
    """The claim -> run -> record loop of one worker slot."""

    def __init__(self, spec: WorkerSpec, stop: Event, events: Connection) -> None:
        self.spec = spec
        self._farm_stop = stop
        self._events = events
        self._local_stop = threading.Event()
        self._task_running = threading.Event()
        self._killed = False
        self.store = WorkDir(Path(spec.workdir), lock_path=Path(spec.lock_path))
        self.runner, self.variables = config.build_runner(spec.runner)
        self.handler = config.build_tasklist(spec.handler)
        self.slot = SlotRecord(-1, "", spec.farmer, spec.worker, Holder.this_process(), 0.0)
        self._watch = threading.Condition()
        self._terminating = False
        self._logs_abs = self.store.logs.resolve()
        threading.Thread(target=self._watch_tasks, name="watcher", daemon=True).start()
        os.environ.update(self.variables)
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
        """:returns: whether this worker must claim nothing more"""
        return self._local_stop.is_set() or self._farm_stop.is_set() or os.getppid() != self.spec.parent_pid

    def run(self) -> int:
        """Work until no task is left or a stop is requested.

        :returns: the worker's exit status
        """
        tasklist = Path(self.spec.tasklist)
        task = None if self.stopping() else self.store.claim(self.slot, tasklist=tasklist)
        while task is not None:
            self.slot = replace(self.slot, task=task.taskid, command=task.command)
            outcome = self._execute(task)
            process.reap_any()
            if outcome is None:
                _LOGGER.info("task %d stopped: back in the queue", task.taskid)
                if self.store.release(self.slot):
                    self._send("returned", self.slot.task, "")
                return EXIT_STOPPED
            _LOGGER.info(
                "task %d %s after %.2f s",
                self.slot.task,
                outcome.status if not outcome.succeeded else "finished",
                outcome.ended - outcome.started,
            )
            task = self.store.finish_and_claim(self.slot, outcome, claim_next=not self.stopping(), tasklist=tasklist)
            self._send("end", self.slot.task, "ok" if outcome.succeeded else outcome.status)
        return EXIT_STOPPED if self.stopping() else EXIT_DONE

    def _send(self, kind: str, taskid: int, detail: str) -> None:
        with contextlib.suppress(OSError):  # the farmer is gone: stopping() notices it
            self._events.send((kind, self.spec.worker, taskid, detail))

    def _execute(self, task: Task) -> Outcome | None:
        """Run one task.

        :returns: its outcome, or ``None`` when it was killed because of a stop
        """
        attempt, log_path, logfh = self._open_log(task.taskid)
        self._prepare_environment(task, attempt, log_path)
        self._send("start", task.taskid, task.command)
        _LOGGER.info("task %d started (attempt %d): %s", task.taskid, attempt, task.command)
        with self._watch:
            self._killed = False
            self._task_running.set()
        started = time.time()
        with logfh:
            returncode, reason = self._run_runner(task, logfh)
        ended = time.time()
        with self._watch:
            self._task_running.clear()
            # A kill under way decides whether the task ended by itself (recorded) or by the stop (returned).
            self._watch.wait_for(lambda: not self._terminating)
            if self._killed:
                return None
        return Outcome(returncode, started, ended, attempt=attempt, log=f"logs/{log_path.name}", reason=reason)

    def _run_runner(self, task: Task, logfh: IO[str]) -> tuple[int, str]:
        try:
            command = self.handler.command(task.command, taskid=task.taskid)
            returncode = self.runner.run(task.taskid, command, logfh)
        except Exception:  # noqa: BLE001  # a user's runner or handler failing fails its task, not the farm
            logfh.write(f"pytaskfarmer: the runner failed:\n{traceback.format_exc()}")
            return 1, "error:runner"
        if not isinstance(returncode, int):
            logfh.write(f"pytaskfarmer: the runner returned {returncode!r} instead of an exit status\n")
            return 1, "error:runner"
        return returncode, ""

    def _watch_tasks(self) -> None:
        """Kill the task when a stop comes; keep killing until the runner returns (it may be starting it)."""
        while True:
            self._task_running.wait()
            time.sleep(_WATCH_INTERVAL)
            with self._watch:
                if not (self._task_running.is_set() and self.stopping()):
                    continue
                self._terminating = True
            killed: bool | None = None  # a runner whose terminate() raises is treated as having killed the task
            try:
                killed = self.runner.terminate()
            finally:
                with self._watch:
                    self._killed = self._killed or killed is None or bool(killed)
                    self._terminating = False
                    self._watch.notify_all()

    def _open_log(self, taskid: int) -> tuple[int, Path, IO[str]]:
        """Create the log of the next attempt (``log_ID``, then ``log_ID.2``...): a rerun never overwrites one."""
        attempt = 1
        while True:
            path = self.store.logs / (f"log_{taskid}" if attempt == 1 else f"log_{taskid}.{attempt}")
            with contextlib.suppress(FileExistsError):
                return attempt, path, path.open("x", encoding="utf-8", errors="replace")
            attempt += 1

    def _prepare_environment(self, task: Task, attempt: int, log_path: Path) -> None:
        # The worker is a process of its own that runs one task at a time: its environment is the task's.
        os.environ["PROC_NUMBER"] = os.environ["TASKFARMER_TASK_ID"] = str(task.taskid)
        os.environ["TASKFARMER_ATTEMPT"] = str(attempt)
        os.environ["TASKFARMER_LOG"] = str(self._logs_abs / log_path.name)
