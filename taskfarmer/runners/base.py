"""The runner contract: ``run(taskid, command, logfh) -> exit status`` and ``terminate()``.

:class:`Runner` is the base PyTaskFarmer runners were written against, kept as it was so that they work unchanged.
:class:`CommandRunner` is the base of every runner we ship: a subclass only says which argv runs a shell script
(:meth:`CommandRunner.command`, pure, no I/O); starting, logging, the per-task temporary directory and killing the
whole process tree live here, once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shlex
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from taskfarmer import process
from taskfarmer.errors import EngineNotFoundError

if TYPE_CHECKING:
    import resource
    from collections.abc import Mapping

    import psutil

_LOGGER: Final = logging.getLogger(__name__)
TASK_KEY_VARIABLE: Final = "TASKFARMER_TASK_KEY"
_keys = itertools.count()


class Runner:
    """Executes one task at a time and can be stopped from another thread.

    Subclass it and implement :meth:`run` and :meth:`terminate`, as for PyTaskFarmer. INI keys of the runner's
    section become keyword arguments of the constructor (strings, unless the parameter is annotated ``bool``,
    ``int``, ``float``, ``list[str]`` or ``Mapping[str, str]``).
    """

    def __init__(self) -> None:
        """Take no arguments here, so that PyTaskFarmer subclasses calling ``super().__init__()`` keep working."""

    def run(self, taskid: int, command: str, logfh: IO[str]) -> int:
        """Run *command* and return its exit status (0 is success); write its output to *logfh*.

        :param taskid: the task's ID (its line number in the tasklist); ``PROC_NUMBER`` holds it too
        :param command: the shell command line of the task
        :param logfh: the task's log file, open for writing
        :returns: the exit status; negative: killed by that signal
        """
        raise NotImplementedError

    def terminate(self) -> bool | None:
        """Stop the running task, if any. Called from another thread while :meth:`run` waits.

        :returns: whether something was running (``None``: the runner cannot tell)
        """
        return None

    def preflight(self, *, workdir: Path) -> None:
        """Check once, in the farmer's main process before any task is claimed, that the runner can work.

        Engine runners check their executable or API here (and clean up what a farmer killed with ``kill -9``
        left behind), so that a missing engine is one clear error instead of every task failing one by one.

        :param workdir: the work directory of the farm
        :raises TaskFarmerError: (a subclass) when the runner cannot work
        """

    def describe(self, command: str) -> str:
        """Say what a task would run, without running it (``taskfarmer runners NAME --command CMD``)."""
        del command
        return f"{type(self).__module__}.{type(self).__qualname__} starts its tasks itself: no dry run to show"

    def cleanup(self, *, workdir: Path) -> None:
        """Remove what dead workers of this farm left outside their process tree (containers), in the main process.

        Called when a worker died and when the farmer stops; a task's own processes are already killed then.

        :param workdir: the work directory of the farm
        """


class CommandRunner(Runner):
    """A runner that executes each task as ``bash -c SCRIPT``, possibly wrapped in an engine's command line.

    :param setup: shell commands run before each task in the same shell (``source env.sh`` ...); when they
        fail, the task does not run and fails with their status
    :param variables: environment variables for the tasks (already parsed from ``KEY=VALUE`` lines or a ``.env``)
    :param tempdir: run each task in a new temporary directory, removed afterwards: ``true`` (under ``$TMPDIR``),
        a directory to create it in, or ``false`` (run in the farmer's directory)
    :param grace: seconds between SIGTERM and SIGKILL when a task is stopped (the farmer gives its ``--grace``
        unless the runner's definition sets one)
    :param shell: the shell that interprets the task line
    :param name: the runner's name (its INI section), for messages; the farmer gives it
    """

    def __init__(  # noqa: PLR0913  # one keyword per INI option
        self,
        *,
        setup: str = "",
        variables: Mapping[str, str] | None = None,
        tempdir: str = "false",
        grace: float = process.DEFAULT_GRACE,
        shell: str = "bash",
        name: str = "",
    ) -> None:
        super().__init__()
        self.name = name
        self.setup = setup.strip()
        self.variables = dict(variables or {})
        self.tempdir = _parse_tempdir(tempdir)
        if grace < 0:
            msg = f"option 'grace' = {grace}: must be 0 or more seconds"
            raise ValueError(msg)
        self.grace = grace
        self.shell = shell
        self._lock = threading.Lock()
        self._proc: process.TaskProcess | None = None
        self._key = ""
        self.last_usage: resource.struct_rusage | None = None  # of the last task: for the accounting

    def command(self, script: str) -> list[str]:
        """:returns: the argv that runs the shell *script* (pure: no I/O)"""
        return [self.shell, "-c", script]

    def preflight(self, *, workdir: Path) -> None:
        """Check that the ``shell`` option names an executable, when the shell runs on this host.

        Engine runners wrap the shell in the engine's command line (the shell is then the image's) and check
        their engine in a preflight of their own.

        :param workdir: the work directory of the farm (not used)
        :raises EngineNotFoundError: when the shell is not found
        """
        del workdir
        self.check_shell()

    def check_shell(self) -> None:
        """The part of :meth:`preflight` that a dry run (``taskfarmer runners NAME``) does too: it changes nothing.

        :raises EngineNotFoundError: when the shell runs on this host and is not found
        """
        if self.command(":")[0] == self.shell and shutil.which(self.shell, path=self.environment().get("PATH")) is None:
            msg = f"Runner [{self.name}]: shell = {self.shell}: no such executable on PATH (option shell)."
            raise EngineNotFoundError(msg)

    def script(self, command: str) -> str:
        """:returns: the shell script for one task: the setup, then the task line, which runs only if setup succeeded"""
        if not self.setup:
            return command
        # The braces keep `source` effects in this shell; the newline keeps the task's own && and || apart from them.
        return f"{{ {self.setup}\n}} || exit $?\n{command}"

    def describe(self, command: str) -> str:
        """:returns: the exact command line a task running *command* gets, shell-quoted for reading"""
        return shlex.join(self.command(self.script(command)))

    def environment(self) -> dict[str, str]:
        """:returns: the environment of a task: the worker's, the ``variables``, and a key to find its processes"""
        env = process.environ_copy()
        env.update(self.variables)
        env[TASK_KEY_VARIABLE] = self._key
        return env

    def run(self, taskid: int, command: str, logfh: IO[str]) -> int:
        """Run the task, wait for it, and end whatever it left running in the background."""
        self.last_usage = None
        cwd = self._make_tempdir(taskid)
        script = self.script(command)
        argv = self.command(script)
        try:
            with self._lock:
                self._key = f"{os.getpid()}.{next(_keys)}"
                self._proc = self._start(argv, script, cwd=cwd, output=logfh)
            returncode = self._proc.wait()
        except OSError as exc:
            # Worded and numbered as bash reports it: the line may have been executed without bash (BasicRunner).
            not_found = isinstance(exc, FileNotFoundError) and "/" not in argv[0]
            logfh.write(f"pytaskfarmer: {argv[0]}: {'command not found' if not_found else exc.strerror or exc}\n")
            return 126 if isinstance(exc, PermissionError) else 127
        else:
            self.last_usage = self._proc.usage
            return returncode
        finally:
            self._end_leftovers()
            if cwd is not None:
                shutil.rmtree(cwd, ignore_errors=True)

    def _start(self, argv: list[str], script: str, *, cwd: str | None, output: IO[str]) -> process.TaskProcess:
        """Start the task's process (a subclass may start it otherwise when *argv* cannot run)."""
        del script  # the argv says it all here
        return process.start(argv, cwd=cwd, env=self.environment(), output=output)

    def _end_leftovers(self) -> None:
        # Most tasks leave nothing behind: two cheap checks spare the scan of every process on the node.
        with self._lock:
            proc = self._proc
        if proc is not None and (process.group_alive(proc.pid) or process.has_children()):
            self.terminate()
        with self._lock:
            self._proc = None

    def terminate(self) -> bool:
        """Kill the task's whole process tree: SIGTERM, then SIGKILL after ``grace`` seconds.

        :returns: whether any process of the task was still running
        """
        with self._lock:
            proc, key = self._proc, self._key
        if proc is None:
            return False
        victims = self._task_processes(proc.pid, key, reaped=proc.returncode is not None)
        if victims:
            process.kill_tree(victims, grace=self.grace)
        return bool(victims)

    @staticmethod
    def _task_processes(pid: int, key: str, *, reaped: bool) -> list[psutil.Process]:
        # The task's own tree, plus orphans it left that this (subreaper) process adopted: they carry its key.
        # Once the task is reaped its PID may be another process's already: then only the key tells.
        import psutil  # noqa: PLC0415  # loaded on the first kill: most farms never need it

        victims: list[psutil.Process] = []
        if not reaped:
            victims = process.descendants(pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                leader = psutil.Process(pid)
                if leader.status() != psutil.STATUS_ZOMBIE:
                    victims.append(leader)
        known = {p.pid for p in victims}
        for proc in process.descendants():
            with contextlib.suppress(psutil.Error):
                if proc.pid not in known and proc.environ().get(TASK_KEY_VARIABLE) == key:
                    victims.append(proc)
        return victims

    def _make_tempdir(self, taskid: int) -> str | None:
        if self.tempdir is None:
            return None
        return tempfile.mkdtemp(prefix=f"taskfarmer-{taskid}-", dir=self.tempdir or None)


def _parse_tempdir(value: str) -> str | None:
    """``true`` -> ``""`` (the default temporary area), ``false`` -> ``None``, anything else: the parent directory.

    :raises ValueError: for a value that is neither a yes/no nor an existing directory (checked when the farmer
        starts: not every task failing later)
    """
    lowered = value.strip().lower()
    if lowered in _NO:
        return None
    if lowered in _YES:
        return ""
    directory = Path(os.path.expandvars(value.strip())).expanduser()
    if not directory.is_dir():
        msg = f"tempdir must be true, false or an existing directory, not {value!r}"
        raise ValueError(msg)
    return str(directory)


_YES: Final = frozenset({"true", "yes", "on", "1"})
_NO: Final = frozenset({"", "false", "no", "off", "0"})
