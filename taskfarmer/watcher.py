"""The watcher thread of a worker: ends the running task when the farm stops, or when the task breaks a policy.

It wakes up a few times a second while a task runs, and kills the task (through the runner, whole process tree)
when the worker must stop, when the task runs past ``--task-timeout``, or when the task's processes together use
more memory than ``--task-memory``. The worker asks it afterwards why the task ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from taskfarmer import process

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskfarmer.runners import Runner

_LOGGER: Final = logging.getLogger(__name__)
WATCH_INTERVAL: Final = 0.2
STOP: Final = "stop"
TIMEOUT: Final = "timeout"
MEMORY: Final = "memory"


@dataclass(frozen=True)
class Verdict:
    """Why a task ended early (``None``: it ended by itself) and the largest memory use the watcher saw."""

    killed_for: str | None
    peak_rss_kb: int


class TaskWatcher:
    """Watches one task at a time for a worker; see the module docstring.

    :param runner: the runner whose :meth:`~taskfarmer.runners.Runner.terminate` ends the task
    :param stopping: tells whether the worker must stop
    :param timeout: seconds a task may run (``None``: no limit)
    :param memory: bytes of resident memory a task's processes may use together (``None``: no limit)
    """

    def __init__(
        self, runner: Runner, *, stopping: Callable[[], bool], timeout: float | None, memory: int | None
    ) -> None:
        self._runner = runner
        self._stopping = stopping
        self._timeout = timeout
        self._memory = memory
        self._condition = threading.Condition()
        self._running = False
        self._terminating = False
        self._killed_for: str | None = None
        self._task_runner = runner
        self._task_memory = memory
        self._deadline = 0.0
        self._peak_rss = 0
        threading.Thread(target=self._watch, name="watcher", daemon=True).start()

    def task_started(self, *, runner: Runner | None = None, memory: int | None = None) -> None:
        """Start watching a task that is about to start.

        :param runner: the runner it runs in, when not the worker's own (a ``runner=`` directive)
        :param memory: its own memory limit (a ``memory=`` directive), instead of the farm's
        """
        with self._condition:
            self._task_runner = runner or self._runner
            self._task_memory = memory if memory is not None else self._memory
            self._killed_for = None
            self._peak_rss = 0
            self._deadline = time.monotonic() + self._timeout if self._timeout else 0.0
            self._running = True

    def task_ended(self) -> Verdict:
        """Stop watching; wait for a kill under way, whose reason decides what happens to the task.

        :returns: why the task was killed, if it was
        """
        with self._condition:
            self._running = False
            self._condition.wait_for(lambda: not self._terminating)
            return Verdict(self._killed_for, self._peak_rss // 1024)

    def _watch(self) -> None:
        # A look every WATCH_INTERVAL whether a task runs or not: waking this thread at each task's start would cost
        # more, on a farm of short tasks, than a few idle looks a second.
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._condition:
                reason = self._reason() if self._running else None
                if reason is None:
                    continue
                self._terminating = True
            self._kill(reason)

    def _reason(self) -> str | None:
        if self._stopping():
            return STOP
        if self._deadline and time.monotonic() > self._deadline:
            return TIMEOUT
        if self._task_memory is not None and self._sample_memory() > self._task_memory:
            return MEMORY
        return None

    def _sample_memory(self) -> int:
        # In a worker process, every descendant belongs to the running task (orphans are adopted: subreaper).
        import psutil  # noqa: PLC0415  # loaded by the first sample (--task-memory): most farms never need it

        total = 0
        for proc in process.descendants():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        self._peak_rss = max(self._peak_rss, total)
        return total

    def _kill(self, reason: str) -> None:
        killed: bool | None = None  # a runner whose terminate() raises is taken to have killed the task
        try:
            killed = self._task_runner.terminate()
        except Exception:  # a user's runner failing must not end the watching of every later task
            _LOGGER.exception("the runner's terminate() failed")
        finally:
            with self._condition:
                if killed is None or killed:
                    self._killed_for = self._killed_for or reason
                self._terminating = False
                self._condition.notify_all()
