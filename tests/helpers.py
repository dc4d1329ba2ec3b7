"""Helpers for tests that run real farmers: start them, wait for them, read their work directory."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final

import psutil

from taskfarmer.worker import WORKER_NAME

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

LONG: Final = 30.0  # seconds for what must happen
SHORT: Final = 1.0  # seconds for what must not happen
REPO: Final = Path(__file__).resolve().parents[1]


def farmer_argv(tasklist: Path, *args: str) -> list[str]:
    """:returns: the argv that runs ``pytaskfarmer.py`` on *tasklist* with this Python"""
    return [sys.executable, str(REPO / "bin" / "pytaskfarmer.py"), *args, str(tasklist)]


def run_farmer(
    tasklist: Path, *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``pytaskfarmer.py`` to its end. :returns: the completed process (text stdout/stderr)"""
    return subprocess.run(
        farmer_argv(tasklist, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def start_farmer(
    tasklist: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start ``pytaskfarmer.py`` in the background (its own process group). Reap it with :func:`cleanup`."""
    return subprocess.Popen(
        farmer_argv(tasklist, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )


def wait_for(predicate: Callable[[], bool], *, timeout: float = LONG, what: str = "condition") -> None:
    """Poll *predicate* until it holds; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout} s waiting for {what}"
            raise AssertionError(msg)
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    """:returns: the lines of a state file (empty list when missing)"""
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().splitlines()
    return []


def ids(path: Path) -> list[int]:
    """:returns: the task IDs (first column) of a state file such as finished, failed or toprocess"""
    return [int(line.split(" ", 1)[0].split("@")[0]) for line in lines(path) if line.strip()]


def descendants_of_session(sid: int) -> list[psutil.Process]:
    """:returns: the live processes whose session is *sid* or that carry a farmer marker from it"""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def workers_of(farmer_pid: int) -> list[psutil.Process]:
    """:returns: the farmer's live worker processes; a child that ends while it is looked at is left out"""
    found = []
    for proc in psutil.Process(farmer_pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.name().startswith(WORKER_NAME) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def processes_with_env(variable: str, value: str) -> list[psutil.Process]:
    """:returns: live processes whose environment has ``variable=value`` (tasks of a farmer, in any session)"""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(variable) == value:
                found.append(proc)
    return found


@contextlib.contextmanager
def cleanup(*procs: subprocess.Popen[str]) -> Iterator[None]:
    """Reap background farmers whatever happens: SIGTERM their group, then SIGKILL."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=LONG)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            proc.communicate()


def write_tasklist(path: Path, commands: Sequence[str]) -> Path:
    """Write *commands* one per line. :returns: *path*"""
    path.write_text("".join(f"{command}\n" for command in commands))
    return path


@functools.cache
def engine_available(name: str) -> str | None:
    """:returns: ``None`` when the engine can be used from tests, else why not"""
    probes: dict[str, Callable[[], str | None]] = {
        "docker": _docker_probe,
        "apptainer": lambda: None if shutil.which("apptainer") or shutil.which("singularity") else "not on PATH",
        "slurm": lambda: _command_probe(["sinfo", "-h"]),
        "htcondor": lambda: _command_probe(["condor_status", "-total"]),
        "glusterfs": _glusterfs_probe,
        "pytaskfarmer010": _pytaskfarmer010_probe,
        "chromium": lambda: _command_probe(["chromium", "--version"]),
    }
    return probes[name]()


def _command_probe(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} not on PATH"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return f"{argv[0]} did not answer within 20 s"
    return None if result.returncode == 0 else f"{argv[0]} failed: {result.stderr.strip()[:200]}"


def pytaskfarmer010() -> Path:
    """:returns: PyTaskFarmer 0.1.0's ``pytaskfarmer.py``, in a venv of its own (``ci/pytaskfarmer010-install.sh``)"""
    return Path(os.environ.get("TASKFARMER_PYTASKFARMER_010") or "/nonexistent/pytaskfarmer.py")


def _pytaskfarmer010_probe() -> str | None:
    if not os.access(pytaskfarmer010(), os.X_OK):
        return "$TASKFARMER_PYTASKFARMER_010 is no PyTaskFarmer 0.1.0 pytaskfarmer.py (ci/pytaskfarmer010-install.sh)"
    return None


GLUSTER_MOUNTS: Final = (
    "TASKFARMER_GLUSTER_SAFE_A",
    "TASKFARMER_GLUSTER_SAFE_B",
    "TASKFARMER_GLUSTER_CACHED_A",
    "TASKFARMER_GLUSTER_CACHED_B",
)
GLUSTER_BRICKS: Final = ("TASKFARMER_GLUSTER_SAFE_BRICK", "TASKFARMER_GLUSTER_CACHED_BRICK")


def _glusterfs_probe() -> str | None:
    """The four mount points ``ci/glusterfs-up.sh`` exports are each a mounted GlusterFS volume; its bricks exist."""
    mounts = {part.mountpoint: part.fstype for part in psutil.disk_partitions(all=True)}
    for variable in GLUSTER_MOUNTS:
        path = os.environ.get(variable)
        if not path:
            return f"${variable} is not set (eval the last line of ci/glusterfs-up.sh DIR)"
        if mounts.get(path) != "fuse.glusterfs":
            return f"${variable}={path} is not a mounted GlusterFS volume"
    for variable in GLUSTER_BRICKS:
        if not Path(os.environ.get(variable) or "/nonexistent").is_dir():
            return f"${variable} is not set to a brick directory (eval the last line of ci/glusterfs-up.sh DIR)"
    return None


@functools.cache
def _docker_probe() -> str | None:
    try:
        import docker  # noqa: PLC0415  # only for engine tests

        client = docker.from_env(timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001  # any failure means "not usable"
        return f"no Docker API engine answers ({exc.__class__.__name__}: {str(exc)[:200]})"
    finally:
        # docker-py leaves a failed connection's socket in a reference cycle: collect it now, not at session end.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    return None


def freeze_then_kill(
    find: Callable[[], list[psutil.Process]], *, while_frozen: Callable[[], object] | None = None
) -> int:
    """Stop every process *find* returns until it finds no new one (none can react to another's death), then
    SIGKILL them all: as if their node (host) was lost at once. *while_frozen* is called between the two (to look
    at what they held at the instant they died). :returns: how many processes were killed
    """
    stopped: dict[int, psutil.Process] = {}
    while new := [proc for proc in find() if proc.pid not in stopped]:
        for proc in new:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGSTOP)
            stopped[proc.pid] = proc
    if while_frozen is not None:
        while_frozen()
    for proc in stopped.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    return len(stopped)


def throttled(predicate: Callable[[], bool], every: float = 0.5) -> Callable[[], bool]:
    """:returns: *predicate*, evaluated at most once per *every* seconds (the cached answer in between)"""
    last = [float("-inf"), False]

    def check() -> bool:
        if time.monotonic() - last[0] >= every:
            last[:] = [time.monotonic(), predicate()]
        return bool(last[1])

    return check


def serve_and_wait(served: Path, waiting: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """``check-fs SERVED --peer-serve`` and ``check-fs WAITING --peer-wait`` at once, as on two hosts.

    :returns: the serving side (it prints the results), and what the waiting side printed
    """
    argv = [sys.executable, "-m", "taskfarmer", "check-fs"]
    waiter = subprocess.Popen([*argv, str(waiting), "--peer-wait"], stdout=subprocess.PIPE, text=True)
    try:
        server = subprocess.run(
            [*argv, str(served), "--peer-serve"], capture_output=True, text=True, timeout=LONG, check=False
        )
        waited, _ = waiter.communicate(timeout=10)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, waited
    return server, waited


@contextlib.contextmanager
def on_a_terminal(
    argv: list[str], cwd: Path, *, columns: int = 120
) -> Iterator[tuple[subprocess.Popen[bytes], bytearray]]:
    """Run *argv* in a pseudo-terminal of *columns* x 40, in a session of its own.

    :returns: the process, and everything it drew so far (it grows while the process runs); the process group is
        killed on leaving if it still runs
    """
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd, start_new_session=True)
    os.close(terminal)
    screen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield proc, screen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=LONG)
        reader.join(timeout=LONG)
        os.close(controller)


def in_a_terminal(argv: list[str], cwd: Path) -> tuple[int, bytes]:
    """Run *argv* to its end in a pseudo-terminal of 120 x 40. :returns: its exit status and everything it drew"""
    with on_a_terminal(argv, cwd) as (proc, screen):
        status = proc.wait(timeout=LONG)
    return status, bytes(screen)
