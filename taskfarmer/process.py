"""The one place that starts and kills task processes.

Each task starts in a session of its own, so that a Ctrl-C at the terminal reaches the farmer (which decides)
rather than every task. Each worker process is a "child subreaper" (Linux): anything a task leaves behind, even
a double-forked daemon, is re-parented to the worker instead of init, so killing "every descendant of the worker"
really ends the whole tree and no orphan survives a stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Final

import setproctitle

if TYPE_CHECKING:
    import resource
    from collections.abc import Callable, Mapping, Sequence

    import psutil  # imported where used: 15 ms of every start that most farms never need

_LOGGER: Final = logging.getLogger(__name__)
_PR_SET_CHILD_SUBREAPER: Final = 36
DEFAULT_GRACE: Final = 5.0
_KILL_WAIT: Final = 5.0
_POLL: Final = 0.02
_TAIL: Final = 300


def release_inherited_files() -> None:
    """Let go of every regular file a forked process inherited (a ``flock`` lives as long as any descriptor of its
    open file: a farmer killed while holding its lock must not leave the lock held by a copy in its worker).

    Each is pointed at ``/dev/null`` rather than closed: the parent's objects still hold those numbers, and one
    closed later (garbage collection) must not close a file this process opened meanwhile. Pipes stay open: the
    farmer learns of a worker's end by the closing of one of them.
    """
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir("/proc/self/fd"):  # noqa: PTH208  # numbers only
        fd = int(name)
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
            if fd > 2 and fd != null and stat.S_ISREG(os.fstat(fd).st_mode):
                os.dup2(null, fd, inheritable=False)
    os.close(null)


def set_title(title: str) -> None:
    """Show this process as *title* in ``ps`` and ``top`` (its command line, and its name cut to 15 bytes).

    A forked worker would otherwise show its farmer's command line, and ``pkill -f`` aimed at the farmer would hit it.
    ``SPT_NOENV``: the environment (``/proc/PID/environ``, which tools read to find a farm's processes) stays as it
    is, and a title longer than the original command line is cut.
    """
    os.environ["SPT_NOENV"] = "1"
    try:
        setproctitle.setproctitle(title)
    finally:
        del os.environ["SPT_NOENV"]  # not for the tasks


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux only).

    :returns: whether it worked
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class TaskProcess:
    """A started task process: its PID (also its process group and session ID) and a way to wait for it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.usage: resource.struct_rusage | None = None

    def wait(self) -> int:
        """Wait for the process to end; its resource usage (and its waited-for descendants') is in :attr:`usage`.

        :returns: its exit status; negative: killed by that signal
        """
        if self.returncode is None:
            _, status, self.usage = os.wait4(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def find_program(name: str, env: Mapping[str, str]) -> str | None:
    """:returns: the path a task's *name* runs (as ``execvp`` finds it on *env*'s PATH), ``None`` when none runs

    Remembered per name and PATH, as bash's ``hash`` does: a farm of short tasks would otherwise search PATH (a
    ``stat`` per directory) at every task. :func:`start` forgets a path that stopped working.
    """
    if "/" in name:
        return name
    key = _program_key(name, env)
    if key not in _PROGRAMS:
        found = shutil.which(name, path=key[1])
        if found is None:
            return None
        _PROGRAMS[key] = found
    return _PROGRAMS[key]


def _program_key(name: str, env: Mapping[str, str]) -> tuple[str, str]:
    return name, env.get("PATH", os.defpath)


_PROGRAMS: dict[tuple[str, str], str] = {}


def environ_copy() -> dict[str, str]:
    """:returns: a copy of ``os.environ``, made cheaply: a name or value is decoded again only when it changed

    ``dict(os.environ)`` decodes every name and value (some 300 Python calls for 45 variables), and a worker needs
    a copy for every task while only the task's own variables change between tasks.
    """
    encoded = getattr(os.environ, "_data", None)  # CPython keeps the encoded variables there
    if not isinstance(encoded, dict):
        return dict(os.environ)
    if encoded != _ENVIRON.encoded:
        _ENVIRON.refresh(encoded)
    return dict(_ENVIRON.decoded)


@dataclass
class _EnvironCopy:
    """The variables last seen in ``os.environ``, encoded (as it keeps them) and decoded."""

    encoded: dict[bytes, bytes]
    decoded: dict[str, str]

    def refresh(self, encoded: dict[bytes, bytes]) -> None:
        for name in self.encoded.keys() - encoded.keys():
            del self.decoded[os.fsdecode(name)]
        for name, value in encoded.items():
            if self.encoded.get(name) != value:
                self.decoded[os.fsdecode(name)] = os.fsdecode(value)
        self.encoded = dict(encoded)


_ENVIRON: Final = _EnvironCopy({}, {})


# What a worker ignores (Python: SIGPIPE, SIGXFSZ; the worker: the farmer's signals) a task would inherit ignored:
# `yes | head` would get EPIPE instead of dying of SIGPIPE, a trap on INT or USR1 would never fire. A task starts
# with them as a shell would start it.
_RESET_SIGNALS: Final = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def start(
    argv: list[str], *, cwd: str | None, env: Mapping[str, str], output: IO[bytes] | IO[str] | int
) -> TaskProcess:
    """Start a task process in a new session, stdin from /dev/null, stdout and stderr to *output*.

    ``posix_spawn`` rather than ``subprocess.Popen``: a third of the per-task overhead of the farmer goes away; and
    the program's path found once (:func:`find_program`), not searched in PATH by the child at every task.

    :raises OSError: when the executable cannot be run
    """
    _LOGGER.debug("starting %s", argv)
    out_fd = output if isinstance(output, int) else output.fileno()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out_fd, 1),
        (os.POSIX_SPAWN_DUP2, out_fd, 2),
    ]
    if cwd is not None:
        argv = ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd, *argv]
    program = find_program(argv[0], env)
    if program is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    spawn = functools.partial(
        os.posix_spawn, file_actions=actions, setsid=True, setsigdef=_RESET_SIGNALS, setsigmask=()
    )
    try:
        return TaskProcess(spawn(program, argv, env))
    except OSError:
        if program == argv[0]:
            raise
        _PROGRAMS.pop(_program_key(argv[0], env), None)  # moved or removed: search PATH again
        found = find_program(argv[0], env)
        if found is None or found == program:
            raise
        return TaskProcess(spawn(found, argv, env))


@dataclass(frozen=True)
class ToolResult:
    """How a helper command ended: its exit status and its output."""

    returncode: int
    stdout: str
    stderr: str

    def tail(self) -> str:
        """:returns: the last line of stderr (else stdout), shortened, for one-line messages"""
        text = (self.stderr.strip() or self.stdout.strip() or "no output").splitlines()[-1]
        return text[-_TAIL:]


def run_tool(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> ToolResult:
    """Run a helper command (an engine's probe, ``pixi shell-hook``...) to its end, killing its group at the deadline.

    Output goes to temporary files, not pipes: a grandchild that outlives a killed command (a hanging module's
    ``sleep``) would hold a pipe open, and the wait would never end.

    :raises subprocess.TimeoutExpired: when it runs longer than *timeout* seconds (its process group is killed)
    :raises OSError: when it cannot be started
    """
    _LOGGER.info("running %s", list(argv))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(  # noqa: S603  # argv is built from a runner's validated options
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        _LOGGER.debug("%s exited with %d", argv[0], returncode)
        return ToolResult(returncode, _read(out), _read(err))


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")


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
    import psutil  # noqa: PLC0415  # loaded on the first kill: most farms never need it

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
    import psutil  # noqa: PLC0415  # loaded on the first kill: most farms never need it

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if _is_running(child)]


def group_alive(pgid: int) -> bool:
    """:returns: whether any process is left in process group *pgid*"""
    return _signal_reaches(os.killpg, pgid)


def pid_alive(pid: int) -> bool:
    """:returns: whether a process *pid* exists (another user's too)"""
    return _signal_reaches(os.kill, pid)


def _signal_reaches(send: Callable[[int, int], None], target: int) -> bool:
    try:
        send(target, 0)  # signal 0: only the checks
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but is another user's
    return True


def has_children() -> bool:
    """:returns: whether this process has any child, running or not yet reaped (one system call, reaping nothing)"""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _is_running(proc: psutil.Process) -> bool:
    import psutil  # noqa: PLC0415  # loaded on the first kill: most farms never need it

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_all_descendants(*, grace: float = DEFAULT_GRACE) -> None:
    """End every process below this one, then reap them: in a worker, whatever its finished task left behind.

    Only where every descendant belongs to the task (a worker process) and no thread waits on a child.
    """
    if has_children():
        victims = descendants()
        if victims:
            kill_tree(victims, grace=grace)
    reap_any()


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


def kill_farm_leftovers(*, grace: float = DEFAULT_GRACE) -> int:
    """In a farmer whose workers are gone: end what its tasks left behind (adopted by this subreaper process).

    Everything below the farmer is a task's, but multiprocessing's resource tracker.

    :returns: how many processes were found
    """
    if not has_children():  # the usual end: no /proc scan
        return 0
    victims = [proc for proc in descendants() if not _is_resource_tracker(proc)]
    if victims:
        kill_tree(victims, grace=grace)
        reap(victims)
    return len(victims)


def _is_resource_tracker(proc: psutil.Process) -> bool:
    import psutil  # noqa: PLC0415  # loaded on the first kill: most farms never need it

    try:
        return any("multiprocessing.resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False


def kill_marked(marker: str, value: str, *, grace: float = DEFAULT_GRACE) -> int:
    """Kill the processes below this one whose environment has ``marker=value`` (tasks of a dead worker).

    :returns: how many processes were found
    """
    import psutil  # noqa: PLC0415  # loaded on the first kill: most farms never need it

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
