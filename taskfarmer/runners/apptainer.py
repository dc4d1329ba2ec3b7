"""Apptainer and Singularity: each task in a container, ``apptainer exec [options] IMAGE /bin/bash -c SCRIPT``.

The command line is used directly, not spython's Python API: spython runs ``singularity --version`` before every
call, splits string commands on spaces and can hang on a large stderr; a list argv has none of those problems.

Environment. Without ``cleanenv`` Apptainer passes the caller's environment into the container as it is, so
``PROC_NUMBER`` and ``TASKFARMER_*`` reach the task. With ``cleanenv`` they are passed explicitly. Values are
passed with ``env NAME=VALUE ... SHELL -c SCRIPT`` inside the container, not with ``--env`` or
``APPTAINERENV_NAME``: Apptainer reads ``--env`` as comma-separated CSV and evaluates both as shell words
(``$``, backquotes), so ``X=a,b`` or a path with ``$`` would not arrive as written (apptainer/apptainer#1152,
sylabs/singularity#43 and #1131). ``variables`` go through ``env`` in both modes, so they win over the image's
own environment, as they do for every other runner.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

from taskfarmer import process
from taskfarmer.errors import ConfigError
from taskfarmer.runners.base import TASK_KEY_VARIABLE, CommandRunner
from taskfarmer.runners.engine import DEFAULT_PROBE_TIMEOUT, require_engine, runner_label

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

_LOGGER: Final = logging.getLogger(__name__)
# Image sources Apptainer and Singularity read as URIs; anything else is a local SIF file or sandbox directory.
URI_SCHEMES: Final = frozenset(
    {"docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "oras", "library", "shub", "http", "https"}
)
# Options of `exec` that start the container with a clean environment, like cleanenv = true.
CLEANING_OPTIONS: Final = frozenset({"-e", "--cleanenv", "-C", "--containall", "--compat"})
# The variables a task gets from the farmer (besides `variables`), passed explicitly into a clean environment.
TASK_VARIABLES: Final = ("PROC_NUMBER",)
TASK_VARIABLE_PREFIX: Final = "TASKFARMER_"


@dataclass(frozen=True)
class Engine:
    """An Apptainer or Singularity executable that answered ``--version``."""

    path: str
    version: str  # the first line of `--version`: "apptainer version 1.4.5", "singularity-ce version 4.1.0"

    @property
    def flavor(self) -> str:
        """Tell the engine from its version line: ``apptainer``, ``singularity-ce``, or ``singularity`` (older)."""
        return self.version.split(" ", 1)[0] if self.version else "unknown"


def find_engine(candidates: Sequence[str], *, label: str, timeout: float = DEFAULT_PROBE_TIMEOUT) -> Engine:
    """Find the first of *candidates* on PATH that answers ``--version`` (see :func:`engine.require_engine`).

    :param label: the runner, as messages name it
    :raises EngineNotFoundError: none exists, or the first that exists hangs, fails or cannot run
    """
    found = require_engine(candidates, runner=label, probe=["--version"], timeout=timeout)
    return Engine(found.path, found.answer)


@functools.lru_cache(maxsize=16)
def _resolve(candidates: tuple[str, ...], search_path: str) -> str:
    # Which executable a task runs; the --version probe belongs to preflight (the farmer's main process).
    for candidate in candidates:
        if shutil.which(candidate, path=search_path) is not None:
            return candidate
    return candidates[0]  # not found: the task fails with 127 "command not found", as in a shell


def is_uri(image: str) -> bool:
    """Tell whether *image* is a URI the engine fetches or converts (``docker://...``), not a local path."""
    scheme, sep, _ = image.partition(":")
    return bool(sep) and scheme in URI_SCHEMES


def check_bind(bind: str) -> str:
    """Check a bind mount ``src[:dst[:opts]]``: a source, and an absolute ``dst`` when there is one.

    :returns: *bind*, with ``~`` and ``$VARS`` expanded
    :raises ValueError: otherwise, saying what is wrong
    """
    expanded = _expand(bind.strip())
    source, _, rest = expanded.partition(":")
    target = rest.partition(":")[0]
    if not source or (rest and not target.startswith("/")):
        msg = f"bind {bind!r} is not /host/path[:/container/path[:ro]]"
        raise ValueError(msg)
    return expanded


class ApptainerRunner(CommandRunner):
    """Runs each task in an Apptainer (or Singularity) container: ``apptainer exec [options] IMAGE SHELL -c SCRIPT``.

    :param image: a SIF file, a sandbox directory, or a URI (``docker://``, ``oras://``, ``library://``...); a
        local path is made absolute (tasks may run in a temporary directory) after ``~`` and ``$VARS`` expansion
    :param setup: commands run in the container before each task, in the same shell
    :param binds: bind mounts ``src[:dst[:opts]]`` (shell words, so a path may be quoted), each one a ``--bind``
    :param cleanenv: start from a clean environment (``--cleanenv``); ``PROC_NUMBER``, ``TASKFARMER_*`` and
        ``variables`` are then passed explicitly
    :param contain: minimal /dev and empty /tmp and $HOME instead of the host's (``--contain``)
    :param nv: NVIDIA GPU support (``--nv``)
    :param rocm: AMD ROCm GPU support (``--rocm``)
    :param pwd: the directory the task starts in, inside the container (``--pwd``); default: the task's own
        directory when the container can see it
    :param shell: the shell inside the image that runs the setup and the task (busybox images: ``/bin/sh``)
    :param options: more options of ``exec`` (shell words), after those above, e.g. ``--writable-tmpfs``
    :param quiet: hide Apptainer's INFO and WARNING lines in the task logs (``apptainer --quiet exec``)
    :param executable: the engine's executable (name or path); default: ``apptainer``, else ``singularity``
    :param variables: environment variables for the tasks (see :class:`CommandRunner`)
    :param tempdir: run each task in a new temporary directory (see :class:`CommandRunner`)
    :param grace: seconds between SIGTERM and SIGKILL when a task is stopped
    :param probe_timeout: seconds ``--version`` may take before the engine counts as unusable
    :param name: the runner's name, for messages (given by the farmer)
    :raises ValueError: an empty image, a malformed bind, or a relative ``pwd``
    """

    kind: ClassVar[str] = "apptainer"
    candidates: ClassVar[tuple[str, ...]] = ("apptainer", "singularity")

    def __init__(  # noqa: PLR0913  # one keyword per INI option
        self,
        *,
        image: str,
        setup: str = "",
        binds: list[str] | None = None,
        cleanenv: bool = False,
        contain: bool = False,
        nv: bool = False,
        rocm: bool = False,
        pwd: str = "",
        shell: str = "/bin/bash",
        options: list[str] | None = None,
        quiet: bool = False,
        executable: str = "",
        variables: Mapping[str, str] | None = None,
        tempdir: str = "false",
        grace: float = process.DEFAULT_GRACE,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        name: str = "",
    ) -> None:
        super().__init__(setup=setup, variables=variables, tempdir=tempdir, grace=grace, shell=shell)
        self.image = _image(image)
        self.binds = [check_bind(bind) for bind in binds or []]
        self.options = list(options or [])
        self.cleanenv = cleanenv
        self.switches = {"--cleanenv": cleanenv, "--contain": contain, "--nv": nv, "--rocm": rocm}
        self.pwd = _container_path(pwd, what="pwd")
        self.quiet = quiet
        self.executable = executable.strip()
        self.probe_timeout = probe_timeout
        self.name = name

    @property
    def label(self) -> str:
        """:returns: how messages name this runner"""
        return runner_label(self.kind, self.name)

    @property
    def clean(self) -> bool:
        """:returns: whether the container starts without the caller's environment (``cleanenv`` or an option)"""
        return self.cleanenv or any(option in CLEANING_OPTIONS for option in self.options)

    def command(self, script: str) -> list[str]:
        """Return ``[engine, "exec", flags..., image, ["env", NAME=VALUE...], shell, "-c", script]``.

        Pure but for the choice of the engine on PATH and, with a clean environment, the task's ``PROC_NUMBER``
        and ``TASKFARMER_*`` variables, which the worker sets in its own environment before each task.
        """
        argv = [self._executable(), *(["--quiet"] if self.quiet else []), "exec"]
        argv += [switch for switch, on in self.switches.items() if on]
        if self.pwd:
            argv += ["--pwd", self.pwd]
        for bind in self.binds:
            argv += ["--bind", bind]
        argv += [*self.options, self.image]
        assignments = [f"{key}={value}" for key, value in self._passed_variables(os.environ).items()]
        if assignments:
            argv += ["env", *assignments]
        return [*argv, self.shell, "-c", script]

    def environment(self) -> dict[str, str]:
        """Return the base's environment; for a clean container, plus the task's key as ``*ENV_`` variable.

        The key (digits and a dot: nothing the engine could evaluate) is set just before the task starts, after
        :meth:`command`; processes the task leaves behind are found by it.
        """
        env = super().environment()
        if self.clean:
            env[f"{self._env_prefix()}{TASK_KEY_VARIABLE}"] = env[TASK_KEY_VARIABLE]
        return env

    def preflight(self, *, workdir: Path) -> None:
        """Check that the engine answers ``--version`` in time and that a local image exists.

        :raises EngineNotFoundError: the engine is missing, hangs or fails (naming the runner)
        :raises ConfigError: the image is a local path that does not exist
        """
        del workdir  # nothing of the container lives there
        engine = find_engine(self._candidates(), label=self.label, timeout=self.probe_timeout)
        _LOGGER.info("%s: %s (%s)", self.label, engine.path, engine.version)
        if not is_uri(self.image) and not Path(self.image).exists():
            msg = (
                f"The {self.label} cannot use image {self.image}: no such file or directory."
                " Give a SIF file, a sandbox directory or a URI such as docker://ubuntu:24.04."
            )
            raise ConfigError(msg)

    def _candidates(self) -> tuple[str, ...]:
        return (self.executable,) if self.executable else self.candidates

    def _executable(self) -> str:
        return _resolve(self._candidates(), os.environ.get("PATH", os.defpath))

    def _env_prefix(self) -> str:
        # Apptainer reads APPTAINERENV_ (and SINGULARITYENV_ with a complaint); Singularity only SINGULARITYENV_.
        # Apptainer's `singularity` is a symlink to `apptainer`: look through it.
        path = shutil.which(self._executable()) or self._executable()
        return "APPTAINERENV_" if "apptainer" in Path(path).resolve().name else "SINGULARITYENV_"

    def _passed_variables(self, environ: Mapping[str, str]) -> dict[str, str]:
        passed = {key: environ[key] for key in sorted(environ) if self.clean and _is_task_variable(key)}
        passed.update(self.variables)
        return passed


class SingularityRunner(ApptainerRunner):
    """:class:`ApptainerRunner` preferring the ``singularity`` executable (SingularityCE, or Apptainer's alias)."""

    kind: ClassVar[str] = "singularity"
    candidates: ClassVar[tuple[str, ...]] = ("singularity", "apptainer")


def _image(image: str) -> str:
    image = image.strip()
    if not image:
        msg = "the image is empty (give a SIF file, a sandbox directory or a URI such as docker://ubuntu:24.04)"
        raise ValueError(msg)
    if is_uri(image):
        return image
    return str(Path(_expand(image)).absolute())


def _expand(text: str) -> str:
    # Not Path(...).expanduser(): a bind spec is not a path, and Path would rewrite its slashes.
    return os.path.expanduser(os.path.expandvars(text))  # noqa: PTH111


def _is_task_variable(key: str) -> bool:
    return key in TASK_VARIABLES or (key.startswith(TASK_VARIABLE_PREFIX) and key != TASK_KEY_VARIABLE)


def _container_path(path: str, *, what: str) -> str:
    path = path.strip()
    if path and not path.startswith("/"):
        msg = f"{what} {path!r} is not an absolute path inside the container"
        raise ValueError(msg)
    return path
