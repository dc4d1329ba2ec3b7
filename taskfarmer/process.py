"""The one place that starts and kills task processes.

Each task starts in a session of its own, so that a Ctrl-C at the terminal reaches the farmer (which decides)
rather than every task. Each worker process is a "child subreaper" (Linux): anything a task leaves behind, even
a double-forked daemon, is re-parented to the worker instead of init, so killing "every descendant of the worker"
really ends the whole tree and no orphan survives a stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from typing import IO, TYPE_CHECKING, Final

import psutil

if TYPE_CHECKING:
    from collections.abc import Mapping

_LOGGER: Final = logging.getLogger(__name__)
_PR_SET_CHILD_SUBREAPER: Final = 36
DEFAULT_GRACE: Final = 5.0
_KILL_WAIT: Final = 5.0
_POLL: Final = 0.02


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux only).

    :returns: whether it worked
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def start(argv: list[str], *, cwd: str | None, env: Mapping[str, str], output: IO[bytes] | IO[str] | int) -> subprocess.Popen[bytes]:
    """Start a task process in a new session, stdout and stderr to *output*.

    :raises OSError: when the executable cannot be run
    """
    _LOGGER.debug("starting %s", argv)
    return subprocess.Popen(  # noqa: S603  # argv comes from a runner's command(); the task is one argument
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )


def kill_tree(processes: list[psutil.Process], *, grace: float = DEFAULT_GRACE) -> None:
    """SIGTERM each process, wait up to *grace* seconds, then SIGKILL those left. Tolerates vanished processes.

    It never reaps (waits for) a process: the thread that started a task must get its real exit status from
    ``Popen.wait()``, which a reap here would turn into 0.
    """
    _signal_all(processes, signal.SIGTERM)
    alive = _wait_gone(processes, grace)
    if alive:
        _signal_all(alive, signal.SIGKILL)
        _wait_gone(alive, _KILL_WAIT)


def _signal_all(processes: list[psutil.Process], signum: int) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signum)


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = [proc for proc in processes if _is_running(proc)]
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL)
        alive = [proc for proc in alive if _is_running(proc)]
    return alive


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """:returns: every live descendant of *pid* (default: this process), zombies excluded"""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if _is_running(child)]


def _is_running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_any() -> None:
    """Collect the exit status of every finished child (adopted orphans of tasks), so none lingers as a zombie.

    Only for a worker process between tasks: a pending ``Popen.wait()`` elsewhere would lose its exit status.
    """
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def reap(processes: list[psutil.Process]) -> None:
    """Collect the exit status of those *processes* that are finished children of this one."""
    for proc in processes:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(proc.pid, os.WNOHANG)


def kill_marked(marker: str, value: str, *, grace: float = DEFAULT_GRACE) -> int:
    """Kill the processes below this one whose environment has ``marker=value`` (tasks of a dead worker).

    :returns: how many processes were found
    """
    victims = []
    for proc in descendants():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(marker) == value:
                victims.append(proc)
    for proc in list(victims):
        victims.extend(descendants(proc.pid))
    if victims:
        kill_tree(victims, grace=grace)
        reap(victims)
    return len(victims)
