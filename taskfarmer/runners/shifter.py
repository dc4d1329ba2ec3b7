"""Shifter (NERSC): each task in a container, ``shifter --image=docker:IMG ... -- /bin/bash -c SCRIPT``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from taskfarmer import process
from taskfarmer.runners.base import CommandRunner
from taskfarmer.runners.engine import DEFAULT_PROBE_TIMEOUT, require_engine, runner_label

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

# Image types Shifter knows; anything else is a Docker reference ("ubuntu:22.04", "registry:5000/img:tag").
IMAGE_TYPES: Final = ("docker", "custom", "id", "local")
# Shifter refuses bind targets there (its udiRoot owns them).
FORBIDDEN_TARGETS: Final = ("/dev", "/etc", "/proc", "/var")


class ShifterRunner(CommandRunner):
    """Runs each task in a Shifter container: ``shifter --image=docker:IMG [options] -- /bin/bash -c SCRIPT``.

    Shifter passes the caller's whole environment into the container (the image's ``ENV`` wins), so
    ``PROC_NUMBER``, ``TASKFARMER_*`` and ``variables`` reach the task; the host's ``BASH_ENV`` does not (see
    :meth:`environment`). Shifter refuses to run as root: run the farmer as yourself (on a NERSC node you always
    do); the tests' stand-in does not refuse.

    :param image: the image; without a Shifter image type (``docker:``, ``custom:``, ``id:``, ``local:``)
        ``docker:`` is put in front, so ``ubuntu:22.04`` becomes ``--image=docker:ubuntu:22.04``
    :param setup: commands run in the container before each task, in the same shell; an empty setup is no setup
    :param volumes: bind mounts ``/host:/container[:flags]`` (shell words, so a path may be quoted), each one a
        ``-V`` option; the container path must exist in the image and not be under /dev, /etc, /proc or /var
    :param modules: Shifter modules (``cvmfs gpu`` or ``cvmfs,gpu``) as one ``--module=a,b``; ``none`` turns off
        the site's default modules; empty: the site's default
    :param tempdir: run each task in a new temporary directory (see :class:`CommandRunner`), given to Shifter as
        ``--workdir`` and removed after the task
    :param entrypoint: run the image's entrypoint (``--entrypoint``), which gets ``/bin/bash -c SCRIPT``
    :param shell: the shell inside the image that runs the setup and the task
    :param probe_timeout: seconds ``shifter --help`` may take before Shifter counts as unusable
    :param name: the runner's name, for messages (given by the farmer)
    :raises ValueError: an empty image, a malformed volume, or ``none`` mixed with other modules
    """

    def __init__(  # noqa: PLR0913  # one keyword per INI option
        self,
        *,
        image: str,
        setup: str = "",
        volumes: list[str] | None = None,
        modules: list[str] | None = None,
        tempdir: str = "false",
        entrypoint: bool = False,
        shell: str = "/bin/bash",
        variables: Mapping[str, str] | None = None,
        grace: float = process.DEFAULT_GRACE,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        name: str = "",
    ) -> None:
        super().__init__(setup=setup, variables=variables, tempdir=tempdir, grace=grace, shell=shell)
        self.image = image_reference(image)
        self.volumes = [check_volume(volume) for volume in volumes or []]
        self.modules = module_list(modules or [])
        self.entrypoint = entrypoint
        self.probe_timeout = probe_timeout
        self.name = name
        self._workdir: str | None = None

    def command(self, script: str) -> list[str]:
        """Build ``shifter --image=... [-V VOL]... [--module=...] [--workdir=...] [--entrypoint] -- SHELL -c SCRIPT``.

        Pure: no I/O. The ``--workdir`` is the running task's temporary directory, when ``tempdir`` is on.

        :returns: the argv
        """
        argv = ["shifter", f"--image={self.image}"]
        for volume in self.volumes:
            argv += ["-V", volume]
        if self.modules:
            argv.append(f"--module={','.join(self.modules)}")
        if self._workdir is not None:
            argv.append(f"--workdir={self._workdir}")
        if self.entrypoint:
            argv.append("--entrypoint")
        return [*argv, "--", self.shell, "-c", script]

    def environment(self) -> dict[str, str]:
        """Give the base environment without the host's ``BASH_ENV`` (unless ``variables`` sets it).

        Module systems point ``BASH_ENV`` at their start-up file; a non-interactive bash in the image would source
        that host file (missing there, or setting up the host's modules). PyTaskFarmer cleared it too.
        """
        env = super().environment()
        if "BASH_ENV" not in self.variables:
            env.pop("BASH_ENV", None)
        return env

    def _make_tempdir(self, taskid: int) -> str | None:
        # The base creates the task's directory, starts shifter in it and removes it afterwards; Shifter is also
        # told explicitly (--workdir, as PyTaskFarmer did), so the container starts there whatever the image says.
        self._workdir = super()._make_tempdir(taskid)
        return self._workdir

    def preflight(self, *, workdir: Path) -> None:
        """Check that ``shifter`` is on PATH and answers ``shifter --help`` within ``probe_timeout`` seconds.

        :raises EngineNotFoundError: naming the runner, with what to do
        """
        del workdir  # nothing of Shifter lives there
        require_engine(
            ["shifter"], runner=runner_label("shifter", self.name), probe=["--help"], timeout=self.probe_timeout
        )


def image_reference(image: str) -> str:
    """Give an image a Shifter image type: ``ubuntu:22.04`` -> ``docker:ubuntu:22.04``.

    :raises ValueError: for an empty image
    """
    image = image.strip()
    if not image:
        msg = "the image is empty (give one, e.g. docker:ubuntu:22.04)"
        raise ValueError(msg)
    kind, sep, _ = image.partition(":")
    return image if sep and kind in IMAGE_TYPES else f"docker:{image}"


def check_volume(volume: str) -> str:
    """Check that *volume* is ``/host:/container[:flags]`` with a container path Shifter accepts.

    :returns: *volume*
    :raises ValueError: otherwise, saying what is wrong
    """
    host, _, rest = volume.partition(":")
    target = rest.partition(":")[0]
    if not host or not target.startswith("/"):
        msg = f"volume {volume!r} is not /host/path:/container/path[:ro]"
        raise ValueError(msg)
    if any(target == top or target.startswith(f"{top}/") for top in FORBIDDEN_TARGETS):
        msg = f"volume {volume!r}: Shifter cannot mount on {target} (not under {', '.join(FORBIDDEN_TARGETS)})"
        raise ValueError(msg)
    return volume


def module_list(modules: Sequence[str]) -> list[str]:
    """Split ``modules = a b`` or ``modules = a,b`` into module names.

    :raises ValueError: when ``none`` comes with other modules
    """
    names = [name for item in modules for name in item.split(",") if name]
    if "none" in names and len(names) > 1:
        msg = f"modules {' '.join(names)}: 'none' turns every module off, so it cannot come with others"
        raise ValueError(msg)
    return names
