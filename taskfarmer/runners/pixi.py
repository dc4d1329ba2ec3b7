"""Pixi: each task in a Pixi project's environment, or in a packed environment (pixi-pack) unpacked once per node.

Project mode (``manifest = path/to/pixi.toml``) enters the environment the way ``pixi shell`` does:
``pixi shell-hook --manifest-path M -e ENV --json`` runs once per worker (and once in the farmer's preflight,
which also installs the environment), and every task then runs as ``bash -c SCRIPT`` with the variables of that
JSON applied. Not ``pixi run`` per task, because ``pixi run``:

- starts pixi for every task (it reads the manifest and checks the lock file each time);
- parses the command with its own task shell, not bash, so a task line would not mean what it means elsewhere;
- lets every worker check, and maybe update, the lock file and the environment at the same moment.

Packed mode (``pack = environment.tar`` or a self-extracting ``environment.sh``) unpacks the archive once per
node into a node-local cache (see :func:`unpack_once`), then sources its ``activate.sh`` before each task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from filelock import FileLock, Timeout

from taskfarmer import process
from taskfarmer.errors import ConfigError, EngineNotFoundError, TaskFarmerError, WorkDirError
from taskfarmer.runners.base import CommandRunner
from taskfarmer.runners.engine import DEFAULT_PROBE_TIMEOUT, require_engine, runner_label

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

_LOGGER: Final = logging.getLogger(__name__)
DEFAULT_PREPARE_TIMEOUT: Final = 3600.0
UNPACKED_MARKER: Final = ".pytaskfarmer-unpacked"
ACTIVATE: Final = "activate.sh"
PIXI_PACK_METADATA: Final = "pixi-pack.json"


class PixiRunner(CommandRunner):
    """Runs each task in a Pixi environment: a project's (``manifest``) or a packed one (``pack``). Give one.

    :param manifest: project mode: the project's ``pixi.toml`` or ``pyproject.toml``
    :param environment: project mode: the environment's name
    :param frozen: project mode: use the lock file as it is, without checking it against the manifest
        (``--frozen``)
    :param locked: project mode: fail when the lock file is not up to date (``--locked``)
    :param pack: packed mode: an archive made by ``pixi-pack`` (``environment.tar``, unpacked with ``pixi-unpack``,
        which must be on PATH), a self-extracting ``environment.sh`` made by ``pixi-pack --create-executable``
        (runs with bash), or a plain tar holding ``activate.sh`` and ``env/`` (extracted by Python when
        ``pixi-unpack`` is not on PATH; its ``activate.sh`` must not depend on where it is unpacked)
    :param cache: packed mode: where archives are unpacked, one directory per archive; it should be node-local
        (default: ``$TMPDIR/pytaskfarmer-pixi-<uid>``; where the batch system gives each job its own ``$TMPDIR``,
        that means once per job: set ``cache = /tmp/...`` to share one copy between the jobs of a node)
    :param prepare_timeout: seconds to wait for the environment to be installed (``pixi shell-hook``) or unpacked,
        also by another process of the node
    :param probe_timeout: seconds ``pixi --version`` or ``pixi-unpack --version`` may take before the tool counts
        as unusable
    :param setup: commands run before each task, in the environment, in the same shell
    :param name: the runner's name, for messages (given by the farmer)
    :raises ValueError: neither or both of ``manifest`` and ``pack``; both ``frozen`` and ``locked``
    """

    def __init__(  # noqa: PLR0913  # one keyword per INI option
        self,
        *,
        manifest: str = "",
        environment: str = "default",
        frozen: bool = False,
        locked: bool = False,
        pack: str = "",
        cache: str = "",
        prepare_timeout: float = DEFAULT_PREPARE_TIMEOUT,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        setup: str = "",
        variables: Mapping[str, str] | None = None,
        tempdir: str = "false",
        grace: float = process.DEFAULT_GRACE,
        shell: str = "bash",
        name: str = "",
    ) -> None:
        super().__init__(setup=setup, variables=variables, tempdir=tempdir, grace=grace, shell=shell)
        if bool(manifest.strip()) == bool(pack.strip()):
            msg = "give either manifest (a Pixi project) or pack (an archive made by pixi-pack), and not both"
            raise ValueError(msg)
        if frozen and locked:
            msg = "frozen and locked exclude each other (frozen ignores the lock file's state, locked checks it)"
            raise ValueError(msg)
        self.manifest = _absolute(manifest) if manifest.strip() else None
        self.environment_name = environment.strip() or "default"
        self.frozen = frozen
        self.locked = locked
        self.pack = _absolute(pack) if pack.strip() else None
        self.cache = _absolute(cache) if cache.strip() else default_cache()
        self.prepare_timeout = prepare_timeout
        self.probe_timeout = probe_timeout
        self.name = name
        self._activation: dict[str, str] | None = None  # project mode: the variables of `pixi shell-hook`
        self._activate_script: Path | None = None  # packed mode: DIR/activate.sh once unpacked

    @property
    def label(self) -> str:
        """:returns: how messages name this runner"""
        return runner_label("pixi", self.name)

    def shell_hook_command(self) -> list[str]:
        """Build the argv that prints the project environment's variables as JSON (pure)."""
        argv = ["pixi", "shell-hook", "--manifest-path", str(self.manifest), "-e", self.environment_name, "--json"]
        if self.frozen:
            argv.append("--frozen")
        if self.locked:
            argv.append("--locked")
        return argv

    def script(self, command: str) -> str:
        """Build the task's script; in packed mode it first sources the environment's ``activate.sh``."""
        inner = super().script(command)
        if self._activate_script is None:
            return inner
        return f"{shlex.join(['source', str(self._activate_script)])} || exit $?\n{inner}"

    def environment(self) -> dict[str, str]:
        """Give the base environment with the project environment's variables, then ``variables``, on top."""
        env = super().environment()
        env.update(self._activation or {})
        env.update(self.variables)  # the user's own settings win over the environment's
        return env

    def preflight(self, *, workdir: Path) -> None:
        """Check the tools and prepare the environment once in the farmer: install it, or unpack it on this node.

        :raises EngineNotFoundError: pixi or pixi-unpack is needed but missing or not working
        :raises ConfigError: the project, environment or archive cannot be used
        :raises WorkDirError: the cache directory cannot be used
        """
        del workdir  # the environment lives in the project or the node's cache, not in the work directory
        if self.manifest is not None:
            require_engine(["pixi"], runner=self.label, probe=["--version"], timeout=self.probe_timeout)
        self.prepare()

    def prepare(self) -> None:
        """Enter the environment once in this process: run ``pixi shell-hook``, or unpack the archive (once per node).

        :raises TaskFarmerError: as :meth:`preflight`
        """
        if self.manifest is not None and self._activation is None:
            self._activation = self._shell_hook()
        if self.pack is not None and self._activate_script is None:
            self._activate_script = unpack_once(self, self.pack) / ACTIVATE

    def run(self, taskid: int, command: str, logfh: IO[str]) -> int:
        """Run the task in the environment; the first task of a worker enters it first (a failure fails the task)."""
        try:
            self.prepare()
        except TaskFarmerError as exc:
            logfh.write(f"pytaskfarmer: {exc}\n")
            return 1
        return super().run(taskid, command, logfh)

    def _shell_hook(self) -> dict[str, str]:
        argv = self.shell_hook_command()
        what = f"The {self.label} cannot enter environment '{self.environment_name}' of {self.manifest}"
        try:
            result = process.run_tool(argv, timeout=self.prepare_timeout)
        except subprocess.TimeoutExpired as exc:
            msg = f"{what}: '{shlex.join(argv)}' took more than {self.prepare_timeout:g} s. Raise prepare_timeout."
            raise ConfigError(msg) from exc
        except OSError as exc:
            msg = f"{what}: cannot run pixi ({exc.strerror or exc}). Load the module that provides it."
            raise EngineNotFoundError(msg) from exc
        if result.returncode != 0:
            msg = f"{what}: '{shlex.join(argv)}' exited with status {result.returncode}: {result.tail()}"
            raise ConfigError(msg + ". Check the manifest and the environment name.")
        return _hook_variables(result.stdout, what=what)


def _hook_variables(output: str, *, what: str) -> dict[str, str]:
    """Read the ``environment_variables`` of ``pixi shell-hook --json``.

    :raises ConfigError: when the output is not that JSON
    """
    try:
        variables = json.loads(output)["environment_variables"]
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"{what}: pixi shell-hook --json printed no environment_variables ({output.strip()[:200]!r})."
        raise ConfigError(msg + " Is this pixi too old or too new?") from exc
    return {str(key): str(value) for key, value in variables.items() if value is not None}


def _absolute(path: str) -> Path:
    return Path(os.path.expandvars(path.strip())).expanduser().absolute()


def default_cache() -> Path:
    """Give the default cache, ``$TMPDIR/pytaskfarmer-pixi-<uid>``: node-local on purpose, one per user."""
    return Path(tempfile.gettempdir()) / f"pytaskfarmer-pixi-{os.getuid()}"


def cache_entry(pack: Path, cache: Path) -> Path:
    """Name the directory an archive is unpacked into: ``CACHE/<archive stem>-<key>``.

    The key is a SHA-256 of the archive's real path, size and modification time, not of its bytes: hashing a
    multi-GB archive on a shared filesystem in every worker of every node would cost more than unpacking it. A
    replaced or rebuilt archive gets a new directory; old ones stay until the node's temporary area is cleaned.

    :raises OSError: when the archive cannot be read
    """
    real = pack.resolve()
    stat = real.stat()
    key = hashlib.sha256(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = real.name.split(".", 1)[0] or "environment"
    return cache / f"{stem}-{key}"


def unpack_once(runner: PixiRunner, pack: Path) -> Path:
    """Unpack *pack* into the runner's cache, unless a process of this node already did. Safe to call concurrently.

    The first process takes a lock (``filelock``, no soft-lock fallback: the cache is node-local, where ``flock``
    works), unpacks **in place** and writes :data:`UNPACKED_MARKER` last; later ones see the marker without locking.
    In place, not in a temporary directory renamed at the end: ``pixi-unpack`` installs conda packages, which keep
    their absolute prefix (in ``activate.sh``, scripts' ``#!`` lines, ...), so a renamed environment would break.
    A directory without the marker is what a killed unpack left: the lock holder removes it and starts again.

    :returns: the unpacked directory (holding ``activate.sh`` and ``env/``)
    :raises TaskFarmerError: missing archive, unusable cache, lock timeout, missing tool, or a failed unpack
    """
    target = _entry(runner, pack)
    if (target / UNPACKED_MARKER).is_file():
        return target
    with _node_lock(runner, pack, Path(f"{target}.lock")):
        if not (target / UNPACKED_MARKER).is_file():
            try:
                _unpack_fresh(runner, pack, target)
            except OSError as exc:
                msg = f"The {runner.label} cannot unpack {pack} into {target} ({exc.strerror or exc})."
                raise WorkDirError(msg + " Set cache to a node-local directory with room for it.") from exc
    return target


@contextlib.contextmanager
def _node_lock(runner: PixiRunner, pack: Path, path: Path) -> Iterator[None]:
    lock = FileLock(path, timeout=runner.prepare_timeout, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout as exc:
        msg = f"The {runner.label} waited {runner.prepare_timeout:g} s for another process to unpack {pack}"
        raise WorkDirError(msg + f" (lock {path}). Raise prepare_timeout, or end the process stuck unpacking.") from exc
    except OSError as exc:
        msg = f"The {runner.label} cannot lock {path} ({exc.strerror or exc})"
        raise WorkDirError(msg + ": set cache to a node-local directory where file locking works.") from exc
    try:
        yield
    finally:
        lock.release()


def _entry(runner: PixiRunner, pack: Path) -> Path:
    try:
        target = cache_entry(pack, runner.cache)
    except OSError as exc:
        msg = f"The {runner.label} cannot read its archive {pack} ({exc.strerror or exc}). Check the pack option."
        raise ConfigError(msg) from exc
    _make_private_dir(runner, runner.cache)
    return target


def _make_private_dir(runner: PixiRunner, path: Path) -> None:
    """Create the cache, and refuse one owned by someone else: we source the scripts it holds."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = path.stat().st_uid
    except OSError as exc:
        msg = f"The {runner.label} cannot create its cache {path} ({exc.strerror or exc}). Set cache elsewhere."
        raise WorkDirError(msg) from exc
    if owner != os.getuid():
        msg = f"The {runner.label} will not use the cache {path}: it belongs to uid {owner}, not to you."
        raise WorkDirError(msg + " Set cache to a directory of your own.")


def _unpack_fresh(runner: PixiRunner, pack: Path, target: Path) -> None:
    if target.exists():
        _LOGGER.warning("removing %s: an unpack of %s did not finish", target, pack)
        shutil.rmtree(target)
    _LOGGER.info("unpacking %s into %s", pack, target)
    argv = unpack_command(pack, target, pixi_unpack=shutil.which("pixi-unpack") is not None)
    if argv is None:
        _extract_plain_tar(runner, pack, target)
    else:
        if argv[0] == "pixi-unpack":
            require_engine(["pixi-unpack"], runner=runner.label, probe=["--version"], timeout=runner.probe_timeout)
        _run_unpacker(runner, argv, pack)
    if not (target / ACTIVATE).is_file():
        shutil.rmtree(target, ignore_errors=True)
        msg = f"The {runner.label} unpacked {pack}, but it holds no {ACTIVATE}. Give an archive made by pixi-pack."
        raise ConfigError(msg)
    (target / UNPACKED_MARKER).touch()


def unpack_command(pack: Path, target: Path, *, pixi_unpack: bool) -> list[str] | None:
    """Build the argv that unpacks *pack* into *target* (pure).

    :param pixi_unpack: whether ``pixi-unpack`` is on PATH
    :returns: the argv, or ``None``: extract it as a plain tar
    """
    if pack.suffix == ".sh":  # made by pixi-pack --create-executable: carries its own unpacker
        return ["bash", str(pack), "-o", str(target)]
    if pixi_unpack:
        return ["pixi-unpack", "-o", str(target), str(pack)]
    return None


def _run_unpacker(runner: PixiRunner, argv: list[str], pack: Path) -> None:
    # A private TMPDIR, removed afterwards: pixi-pack's self-extracting header copies the whole archive into a
    # `mktemp -d` it never removes, and a killed pixi-unpack leaves its own temporary directory behind.
    scratch = tempfile.mkdtemp(prefix=".unpack-", dir=runner.cache)
    try:
        result = process.run_tool(argv, timeout=runner.prepare_timeout, env={**os.environ, "TMPDIR": scratch})
    except subprocess.TimeoutExpired as exc:
        msg = f"The {runner.label} could not unpack {pack} within {runner.prepare_timeout:g} s. Raise prepare_timeout."
        raise ConfigError(msg) from exc
    except OSError as exc:
        msg = f"The {runner.label} cannot run {argv[0]} ({exc.strerror or exc}) to unpack {pack}."
        raise EngineNotFoundError(msg) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.returncode != 0:
        msg = f"The {runner.label} could not unpack {pack}: '{shlex.join(argv)}' exited with status"
        raise ConfigError(f"{msg} {result.returncode}: {result.tail()}")


def _extract_plain_tar(runner: PixiRunner, pack: Path, target: Path) -> None:
    """Extract a tar that holds ``activate.sh`` and ``env/``; refuse a pixi-pack archive (it needs installing)."""
    try:
        with tarfile.open(pack) as archive:
            names = {name.removeprefix("./") for name in archive.getnames()}
            if ACTIVATE not in names:
                _refuse_archive(runner, pack, pixi_pack=PIXI_PACK_METADATA in names)
            archive.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        msg = f"The {runner.label} cannot extract {pack} ({exc}). Check that it is a tar archive made by pixi-pack."
        raise ConfigError(msg) from exc


def _refuse_archive(runner: PixiRunner, pack: Path, *, pixi_pack: bool) -> None:
    if pixi_pack:
        msg = f"The {runner.label} needs the 'pixi-unpack' executable to install {pack}, but it is not on PATH."
        raise EngineNotFoundError(msg + " Install it (pixi global install pixi-unpack), or pick another runner.")
    msg = f"The {runner.label} cannot use {pack}: it is neither a pixi-pack archive nor a tar holding {ACTIVATE}."
    raise ConfigError(msg)
