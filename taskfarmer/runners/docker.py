"""DockerRunner: each task in a new container of an image, through the ``docker`` SDK.

It speaks the Docker API, so it works against Docker Engine and against Podman's compatible socket alike: the
engine is ``$DOCKER_HOST`` (or the ``base_url`` option). The SDK is imported only when a runner is created: this
module itself is imported only when a definition names ``DockerRunner``.

Every container carries labels naming the farm's work directory and the worker process that started it (host,
boot, PID, start time). A farmer killed with ``kill -9`` leaves its containers running; the next farmer on the same
work directory finds them by these labels in :meth:`DockerRunner.preflight` and removes those whose worker is
dead, before it puts their tasks back in the queue.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from taskfarmer import process
from taskfarmer.errors import ConfigError, EngineNotFoundError
from taskfarmer.runners.base import CommandRunner
from taskfarmer.runners.engine import runner_label
from taskfarmer.store._leases import Holder, boot_id, host_name

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from types import ModuleType

_LOGGER: Final = logging.getLogger(__name__)

LABEL_WORKDIR: Final = "taskfarmer.workdir"
LABEL_HOST: Final = "taskfarmer.host"
LABEL_BOOT: Final = "taskfarmer.boot"
LABEL_PID: Final = "taskfarmer.pid"
LABEL_CTIME: Final = "taskfarmer.ctime"
LABEL_TASK: Final = "taskfarmer.task"
PULL_POLICIES: Final = ("never", "missing", "always")
EXIT_ENGINE_FAILED: Final = 125  # what `docker run` returns when the engine, not the task, failed
EXIT_KILLED: Final = 137  # 128 + SIGKILL, as the engine reports a killed container
USER_OF_IMAGE: Final = "image"
NO_ENTRYPOINT: Final = "none"
PREFLIGHT_TASK: Final = "preflight"
GPU_VARIABLE: Final = "TASKFARMER_GPU"  # the GPU of the worker, with --gpus
_PASSED_PREFIX: Final = "TASKFARMER_"
_PASSED_NAMES: Final = frozenset({"PROC_NUMBER"})
_NAME_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")
_MEMORY: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?[bkmgBKMG]?")
_VOLUME_MODES: Final = frozenset(
    {"ro", "rw", "z", "Z", "shared", "slave", "private", "rshared", "rslave", "rprivate", "nocopy"}
)
_REASON_MAX: Final = 300


class DockerRunner(CommandRunner):
    """Runs each task as ``SHELL -c "SETUP && TASK"`` in a new container of an image, through the Docker API.

    The task's output streams into its log while it runs; the container is removed when the task ends or stops.

    Options (INI keys; ``image`` is required):

    :param image: the image to run (``str``, required), e.g. ``ubuntu:24.04`` or ``registry.example/exp/sw:1.5``
    :param setup: shell commands run in the container before each task, in the same shell; when they fail the task
        does not run (``str``, default: none)
    :param variables: environment variables for the task: ``KEY=VALUE`` lines or the path of a ``.env`` file
        (``Mapping[str, str]``, default: none). The container gets these, ``PROC_NUMBER`` and the worker's
        ``TASKFARMER_*`` variables, and the image's own environment; never the farmer's whole environment
        (its ``PATH`` or ``LD_LIBRARY_PATH`` would break the image)
    :param volumes: bind mounts, ``HOST:CONTAINER[:MODE]`` separated by spaces; HOST is an absolute path (``~``
        and ``$VAR`` are expanded) or a named volume, MODE ``ro`` or ``rw`` (``list[str]``, default: none)
    :param workdir: the task's working directory in the container (``str``, default: the image's, or the
        per-task temporary directory when ``tempdir`` is on)
    :param user: ``UID:GID`` or name the task runs as; ``image`` keeps the image's ``USER`` (``str``, default:
        the farmer's own ``uid:gid`` plus its supplementary groups, so that files written to a shared filesystem
        belong to the user, as with the other runners)
    :param pull: when to pull the image, checked once per farmer before any task: ``never`` (it must be on the
        engine already), ``missing`` or ``always`` (``str``, default: ``missing``)
    :param memory: memory limit of each container, e.g. ``4g`` or ``512m`` (``str``, default: no limit)
    :param cpus: CPU limit of each container, e.g. ``1.5`` (``float``, default: ``0``, no limit)
    :param gpus: GPUs for each container, as ``docker run --gpus``: ``all``, a count (``2``), or
        ``device=0,1`` (``str``, default: none; with the farmer's ``--gpus``, the GPU the worker is bound to,
        which the task then sees as its only GPU)
    :param network: the network mode (``str``, default: ``host``: the task sees the node's network exactly as a
        task of the basic runner does, with no per-container network set-up and no NAT between the task and the
        cluster's services; engines started without a bridge, as on many HPC nodes, have only ``host`` and
        ``none``). Empty: the engine's default
    :param shell: the shell that runs the setup and the task line, resolved in the image's ``PATH`` (``str``,
        default: ``bash``, the shell PyTaskFarmer tasklists are written for). Images without bash (busybox,
        alpine) need ``shell = /bin/sh``; the farmer checks this once before any task and says so
    :param entrypoint: the container's entrypoint: empty keeps the image's (as ``docker run``), ``none`` clears
        it, anything else replaces it (split as a shell would) (``str``, default: the image's)
    :param init: run ``docker-init`` as PID 1, so that a stop's SIGTERM reaches the task and zombies are reaped
        (``bool``, default: ``true``)
    :param base_url: the engine's API address, e.g. ``unix:///run/user/1000/podman/podman.sock`` (``str``,
        default: ``$DOCKER_HOST``, else the engine's default socket)
    :param tempdir: a new host directory per task, mounted at the same path in the container and made the
        working directory unless ``workdir`` is set; ``true``, a parent directory, or ``false`` (``str``,
        default: ``false``)
    :param grace: seconds between SIGTERM and SIGKILL when a task is stopped (``float``, default: ``5``)
    :param name: the runner's name (its INI section) for messages; the farmer gives it, not the INI file
    """

    def __init__(  # noqa: PLR0913  # one keyword argument per documented INI option
        self,
        *,
        image: str,
        setup: str = "",
        variables: Mapping[str, str] | None = None,
        volumes: list[str] | None = None,
        workdir: str = "",
        user: str = "",
        pull: str = "missing",
        memory: str = "",
        cpus: float = 0.0,
        gpus: str = "",
        network: str = "host",
        shell: str = "bash",
        entrypoint: str = "",
        init: bool = True,
        base_url: str = "",
        tempdir: str = "false",
        grace: float = process.DEFAULT_GRACE,
        name: str = "",
    ) -> None:
        super().__init__(setup=setup, variables=variables, tempdir=tempdir, grace=grace, shell=shell, name=name)
        self.image = _checked_image(image)
        self.volumes = [parse_volume(volume) for volume in volumes or []]
        self.workdir = _checked_container_path(workdir.strip(), "workdir") if workdir.strip() else ""
        self.user, self.group_add = resolve_user(user.strip())
        self.pull = _checked_choice(pull.strip().lower(), PULL_POLICIES, "pull")
        self.memory = _checked_memory(memory.strip())
        self.cpus = _checked_cpus(cpus)
        self.device_requests = parse_gpus(gpus)
        self.network = network.strip()
        self.entrypoint = parse_entrypoint(entrypoint)
        self.init = init
        self.base_url = base_url.strip()
        if grace < 0:
            msg = f"option 'grace' = {grace}: must be 0 or more seconds"
            raise ValueError(msg)
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._current: _Current | None = None
        self._holders: dict[int, Holder] = {}

    # -- pure parts: what runs, and how the container is described ---------------------------------------------------

    def container_spec(  # noqa: PLR0913  # a pure function: every input is an argument
        self,
        script: str,
        *,
        name: str,
        labels: Mapping[str, str],
        environment: Mapping[str, str],
        tempdir: str | None = None,
        gpu: str = "",
    ) -> dict[str, Any]:
        """Describe one task's container (pure: no I/O, no engine).

        :param script: the shell script of the task (see :meth:`script`)
        :param name: the container's name (see :func:`container_name`)
        :param labels: the container's labels (see :func:`task_labels`)
        :param environment: the task's environment (see :meth:`environment`)
        :param tempdir: the task's host temporary directory, bind-mounted at the same path
        :param gpu: the GPU the farmer bound this worker to (``--gpus``): the container gets it, unless ``gpus``
            says which GPUs it gets
        :returns: the keyword arguments of ``client.containers.create`` (or ``run``)
        """
        spec: dict[str, Any] = {
            "image": self.image,
            "command": self.command(script),
            "name": name,
            "labels": dict(labels),
            "environment": dict(environment),
            "init": self.init,
        }
        volumes = [*self.volumes, *([f"{tempdir}:{tempdir}:rw"] if tempdir else [])]
        optional: dict[str, Any] = {
            "user": self.user,
            "group_add": self.group_add,
            "volumes": volumes,
            "working_dir": self.workdir or tempdir,
            "network_mode": self.network,
            "entrypoint": self.entrypoint,
            "mem_limit": self.memory,
            "nano_cpus": round(self.cpus * 1e9),
            "device_requests": self.device_requests or parse_gpus(f"device={gpu}" if gpu else ""),
        }
        spec.update({key: value for key, value in optional.items() if value})
        return spec

    def describe(self, command: str) -> str:
        """:returns: the container a task running *command* gets, as the JSON of ``containers.create``'s arguments"""
        holder = self._holder()
        spec = self.container_spec(
            self.script(command),
            name=container_name(holder, 0, "000000"),
            labels=task_labels(holder, workdir="WORKDIR", task="0"),
            environment={**self.environment(), "PROC_NUMBER": "0"},
        )
        return json.dumps(spec, indent=1, sort_keys=True)

    def environment(self) -> dict[str, str]:
        """Return the task's environment: ``PROC_NUMBER``, the worker's ``TASKFARMER_*`` variables, ``variables``."""
        passed = {k: v for k, v in os.environ.items() if k in _PASSED_NAMES or k.startswith(_PASSED_PREFIX)}
        return {**passed, **self.variables}

    # -- running a task ----------------------------------------------------------------------------------------------

    def run(self, taskid: int, command: str, logfh: IO[str]) -> int:
        """Run the task in a new container, stream its output into *logfh*, wait for it and remove it.

        An engine failure fails the task with exit status 125 (as ``docker run``) and a line in its log.
        """
        tempdir = self._make_tempdir(taskid)
        try:
            if tempdir is not None:
                _hand_over(tempdir, self.user)
            return self._run_in_container(taskid, command, logfh, tempdir)
        finally:
            if tempdir is not None:
                shutil.rmtree(tempdir, ignore_errors=True)

    def _run_in_container(self, taskid: int, command: str, logfh: IO[str], tempdir: str | None) -> int:
        holder = self._holder()
        name = container_name(holder, taskid, secrets.token_hex(3))
        workdir = os.environ.get("TASKFARMER_WORKDIR", "")
        labels = task_labels(holder, workdir=workdir, task=str(taskid))
        spec = self.container_spec(
            self.script(command),
            name=name,
            labels=labels,
            environment=self.environment(),
            tempdir=tempdir,
            gpu=os.environ.get(GPU_VARIABLE, ""),
        )
        current = _Current(name)
        with self._lock:
            self._current = current
        try:
            return self._create_and_follow(spec, current, logfh)
        except _engine_errors() as exc:
            if current.terminated:
                return EXIT_KILLED
            logfh.write(f"pytaskfarmer: {self.label} cannot run the task in image {self.image}: {_reason(exc)}\n")
            return EXIT_ENGINE_FAILED
        finally:
            with self._lock:
                self._current = None
            self._remove(name)

    def _create_and_follow(self, spec: dict[str, Any], current: _Current, logfh: IO[str]) -> int:
        client = self.client()
        if current.terminated:
            return EXIT_KILLED
        container = client.containers.create(**spec)
        if current.terminated:  # a stop came while the container was being created: never start it
            return EXIT_KILLED
        container.start()
        _stream_logs(container.logs(stream=True, follow=True), logfh)
        result = container.wait()
        with self._lock:
            current.ended = True
        if result.get("Error"):
            logfh.write(f"pytaskfarmer: the engine reports: {result['Error']}\n")
        return int(result.get("StatusCode", EXIT_ENGINE_FAILED))

    def terminate(self) -> bool:
        """Stop the task's container (SIGTERM, SIGKILL after ``grace`` seconds) and remove it.

        A task whose container is not created yet never starts.

        :returns: whether a task was running (its container not ended by itself yet)
        """
        with self._lock:
            current = self._current
            if current is None or current.ended:
                return False
            current.terminated = True
        self._stop(current.name)
        return True

    def _stop(self, name: str) -> None:
        docker = _docker()
        try:
            self.client().api.stop(name, timeout=math.ceil(self.grace))
        except docker.errors.NotFound:
            return  # not created yet (it will not start), or removed already
        except _engine_errors() as exc:  # already stopping or being removed: the removal below settles it
            _LOGGER.debug("stopping container %s: %s", name, _reason(exc))
        self._remove(name)

    def _remove(self, name: str) -> None:
        with contextlib.suppress(*_engine_errors()):  # gone already, or its removal is in progress
            self.client().api.remove_container(name, force=True)

    # -- the engine ---------------------------------------------------------------------------------------------------

    def client(self) -> Any:  # noqa: ANN401  # a docker.DockerClient; the SDK has no type hints
        """Return the SDK client (created on first use; shared by the task's thread and the one that stops it)."""
        with self._client_lock:
            if self._client is None:
                docker = _docker()
                if self.base_url:
                    self._client = docker.DockerClient(base_url=self.base_url)
                else:
                    self._client = docker.from_env()
            return self._client

    def _holder(self) -> Holder:
        pid = os.getpid()
        if pid not in self._holders:
            self._holders[pid] = Holder.this_process()
        return self._holders[pid]

    @property
    def label(self) -> str:
        """Name the runner for messages: ``docker runner [reco]``, or ``docker runner`` without a name."""
        return runner_label("docker", self.name)

    def engine_address(self) -> str:
        """Say where the engine is looked for, for messages."""
        if self.base_url:
            return f"base_url = {self.base_url}"
        if os.environ.get("DOCKER_HOST"):
            return f"DOCKER_HOST={os.environ['DOCKER_HOST']}"
        return "the default socket unix:///var/run/docker.sock (DOCKER_HOST is not set)"

    # -- before the first task ----------------------------------------------------------------------------------------

    def preflight(self, *, workdir: Path) -> None:
        """Check the engine and the image once, and remove the containers dead farmers left on this work directory.

        :raises EngineNotFoundError: when no engine answers
        :raises ConfigError: when the image is missing and cannot be pulled, or cannot run the task shell
        """
        self._ping()
        with self._engine_call("checking the image"):
            self._ensure_image()
        with self._engine_call("looking for containers left by dead farmers"):
            remove_leftovers(self.client(), workdir=str(Path(workdir).resolve()))
        self._probe(workdir)

    def cleanup(self, *, workdir: Path) -> None:
        """Remove the containers of this work directory whose worker died (the farmer's main process calls it)."""
        with contextlib.suppress(*_engine_errors()):
            remove_leftovers(self.client(), workdir=str(Path(workdir).resolve()))

    def _ping(self) -> None:
        try:
            self.client().ping()
        except _engine_errors() as exc:
            with self._client_lock:
                self._client = None
            msg = (
                f"{self.label}: no Docker API engine answers at {self.engine_address()} ({_reason(exc)}). Start one"
                " (dockerd, or `podman system service`) and point DOCKER_HOST or the runner's base_url at its socket,"
                " or pick another runner with --runner."
            )
            raise EngineNotFoundError(msg) from exc

    @contextlib.contextmanager
    def _engine_call(self, what: str) -> Iterator[None]:
        try:
            yield
        except _engine_errors() as exc:
            msg = f"{self.label}: the engine at {self.engine_address()} failed while {what}: {_reason(exc)}."
            raise EngineNotFoundError(msg) from exc

    def _ensure_image(self) -> None:
        docker = _docker()
        if self.pull == "always":
            self._pull()
            return
        try:
            self.client().images.get(self.image)
        except docker.errors.ImageNotFound as exc:
            if self.pull == "never":
                msg = (
                    f"{self.label}: image '{self.image}' is not on the engine at {self.engine_address()}, and"
                    " pull = never. Pull, build or load it there (docker pull / docker load), or set pull = missing."
                )
                raise ConfigError(msg) from exc
            self._pull()

    def _pull(self) -> None:
        docker = _docker()
        _LOGGER.info("pulling image %s", self.image)
        try:
            self.client().images.pull(self.image)
        except (docker.errors.APIError, docker.errors.ImageNotFound) as exc:  # a missing image is an APIError 500
            msg = (
                f"{self.label}: image '{self.image}' cannot be pulled to the engine at {self.engine_address()}"
                f" ({_reason(exc)}), and pull = {self.pull}. Check the image name and the registry login"
                " (docker login), or load the image there and set pull = never."
            )
            raise ConfigError(msg) from exc

    def _probe(self, workdir: Path) -> None:
        """Start one container with an empty task: the image's shell, user, entrypoint, mounts and limits work."""
        holder = Holder.this_process()
        labels = task_labels(holder, workdir=str(Path(workdir).resolve()), task=PREFLIGHT_TASK)
        spec = self.container_spec("exit 0", name=container_name(holder, 0, "probe"), labels=labels, environment={})
        spec["name"] = f"{spec['name']}-{secrets.token_hex(3)}"
        try:
            status, output = _run_probe(self.client(), spec)
        except _engine_errors() as exc:
            status, output = EXIT_ENGINE_FAILED, _reason(exc)
        if status != 0:
            msg = (
                f"{self.label}: a container of image '{self.image}' cannot run the task shell `{self.shell} -c`"
                f" (exit status {status}: {output or 'no output'}). Set shell = /bin/sh for an image without bash"
                " (busybox, alpine), or check the runner's user, entrypoint, volumes, network, gpus, memory and cpus."
            )
            raise ConfigError(msg)


@dataclass
class _Current:
    """The container of the task that runs now: ``terminated`` once a stop asked for it, ``ended`` once it exited."""

    name: str
    terminated: bool = False
    ended: bool = False


# -- helpers (pure unless they take a client) --------------------------------------------------------------------------


def task_labels(holder: Holder, *, workdir: str, task: str) -> dict[str, str]:
    """Label a task's container with the farm's work directory and the worker process that owns it."""
    return {
        LABEL_WORKDIR: workdir,
        LABEL_HOST: holder.host,
        LABEL_BOOT: holder.boot,
        LABEL_PID: str(holder.pid),
        LABEL_CTIME: repr(holder.ctime),
        LABEL_TASK: task,
    }


def holder_from_labels(labels: Mapping[str, str]) -> Holder | None:
    """Read the worker process that owns a container from its labels (``None``: not one of ours, or damaged)."""
    try:
        pid, ctime = int(labels[LABEL_PID]), float(labels[LABEL_CTIME])
        return Holder(host=labels[LABEL_HOST], boot=labels.get(LABEL_BOOT, ""), pid=pid, ctime=ctime)
    except (KeyError, ValueError):
        return None


def holder_is_dead(holder: Holder) -> bool:
    """Tell whether the owner of a container is provably dead: on this host, and rebooted since or gone."""
    if holder.host != host_name():
        return False  # another host's farmer: only its own host can tell, or its lease in the work directory
    return holder.boot != boot_id() or not holder.is_alive_locally()  # a zombie worker counts as dead


def container_name(holder: Holder, taskid: int, token: str) -> str:
    """Name a container ``taskfarmer-HOST-PID-TASK-TOKEN``: readable in ``docker ps``, unique by the *token*."""
    return f"taskfarmer-{_NAME_UNSAFE.sub('-', holder.host)}-{holder.pid}-{taskid}-{token}"


def remove_leftovers(client: Any, *, workdir: str) -> list[str]:  # noqa: ANN401  # a docker.DockerClient
    """Remove the containers labelled with *workdir* whose worker process is dead (a farmer killed with ``kill -9``).

    :returns: the names of the containers removed
    """
    # The low-level list: ``containers.list()`` inspects each container it lists, and fails when another farmer
    # removes one in between.
    listed = client.api.containers(all=True, filters={"label": f"{LABEL_WORKDIR}={workdir}"})
    removed = []
    for entry in listed:
        holder = holder_from_labels(entry.get("Labels") or {})
        if holder is None or not holder_is_dead(holder):
            continue
        name = ",".join(n.lstrip("/") for n in entry.get("Names") or []) or entry["Id"][:12]
        _LOGGER.warning("removing container %s of a dead farmer (%s PID %d)", name, holder.host, holder.pid)
        with contextlib.suppress(*_engine_errors()):  # another farmer was faster
            client.api.remove_container(entry["Id"], force=True)
            removed.append(name)
    return removed


def parse_volume(text: str) -> str:
    """Check a bind mount ``HOST:CONTAINER[:MODE]`` and normalise it to ``HOST:CONTAINER:MODE``.

    :raises ValueError: naming the mount and what is wrong with it
    """
    parts = text.split(":")
    if len(parts) not in {2, 3} or not all(parts[:2]):
        msg = f"volume {text!r} is not HOST:CONTAINER or HOST:CONTAINER:MODE"
        raise ValueError(msg)
    host = str(Path(os.path.expandvars(parts[0])).expanduser())
    if "/" in host and not Path(host).is_absolute():
        msg = f"volume {text!r}: the host path {host!r} must be absolute (or a named volume, without /)"
        raise ValueError(msg)
    container = _checked_container_path(parts[1], f"volume {text!r}: the container path")
    mode = parts[2] if len(parts) == 3 else "rw"
    unknown = sorted(set(mode.split(",")) - _VOLUME_MODES)
    if unknown:
        msg = f"volume {text!r}: unknown mode {','.join(unknown)!r} (use ro or rw)"
        raise ValueError(msg)
    return f"{host}:{container}:{mode}"


def parse_gpus(text: str) -> list[dict[str, Any]]:
    """Turn ``--gpus``-style *text* (``all``, a count, or ``device=ID,ID``) into ``device_requests``.

    :raises ValueError: for anything else
    """
    value = text.strip()
    if not value:
        return []
    if value == "all":
        return [{"count": -1, "capabilities": [["gpu"]]}]
    if value.isdigit() and int(value) > 0:
        return [{"count": int(value), "capabilities": [["gpu"]]}]
    if value.startswith("device=") and value.removeprefix("device=").strip(","):
        ids = [device.strip() for device in value.removeprefix("device=").split(",") if device.strip()]
        return [{"device_ids": ids, "capabilities": [["gpu"]]}]
    msg = f"option 'gpus' = {text!r}: use all, a number of GPUs (2), or device=ID,ID (device=0,1)"
    raise ValueError(msg)


def parse_entrypoint(text: str) -> list[str] | None:
    """Parse ``entrypoint``: ``None`` keeps the image's, ``[""]`` clears it (``none``), else the words of *text*."""
    value = text.strip()
    if not value:
        return None
    if value == NO_ENTRYPOINT:
        return [""]
    return shlex.split(value)


def resolve_user(text: str) -> tuple[str, list[str]]:
    """Return the container's user and supplementary groups: by default the farmer's own (``uid:gid``)."""
    if text == USER_OF_IMAGE:
        return "", []
    if text:
        return text, []
    gid = os.getgid()
    return f"{os.getuid()}:{gid}", [str(group) for group in sorted(set(os.getgroups())) if group != gid]


def _checked_image(image: str) -> str:
    value = image.strip()
    if not value or any(char.isspace() for char in value):
        msg = f"option 'image' = {image!r}: give one image reference, e.g. image = ubuntu:24.04"
        raise ValueError(msg)
    return value


def _checked_container_path(path: str, what: str) -> str:
    if not path.startswith("/"):
        msg = f"{what} {path!r} must be an absolute path in the container"
        raise ValueError(msg)
    return path


def _checked_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        msg = f"option '{option}' = {value!r}: use one of {', '.join(choices)}"
        raise ValueError(msg)
    return value


def _checked_memory(value: str) -> str:
    if value and _MEMORY.fullmatch(value) is None:
        msg = f"option 'memory' = {value!r}: give bytes with an optional unit b, k, m or g, e.g. 4g"
        raise ValueError(msg)
    return value


def _checked_cpus(value: float) -> float:
    if not (value >= 0 and math.isfinite(value)):
        msg = f"option 'cpus' = {value}: give a number of CPUs, e.g. 1.5 (0: no limit)"
        raise ValueError(msg)
    return value


def _hand_over(path: str, user: str) -> None:
    """Give the task's temporary directory to the container's user when the farmer (root) runs tasks as another."""
    uid, _, gid = user.partition(":")
    if os.geteuid() == 0 and uid.isdigit() and int(uid) != 0:
        os.chown(path, int(uid), int(gid) if gid.isdigit() else -1)


def _stream_logs(chunks: Iterator[bytes], logfh: IO[str]) -> None:
    """Copy the container's output into the log as it comes (UTF-8, a character split across chunks is kept whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        logfh.write(decoder.decode(chunk))
        logfh.flush()
    logfh.write(decoder.decode(b"", final=True))


def _run_probe(client: Any, spec: dict[str, Any]) -> tuple[int, str]:  # noqa: ANN401  # a docker.DockerClient
    """Run a container to its end.

    :returns: its exit status and the last line of its output
    """
    container = client.containers.create(**spec)
    try:
        container.start()
        status = int(container.wait().get("StatusCode", EXIT_ENGINE_FAILED))
        output = container.logs().decode(errors="replace").strip().splitlines()
        return status, output[-1] if output else ""
    finally:
        with contextlib.suppress(*_engine_errors()):
            container.remove(force=True)


def _docker() -> ModuleType:
    import docker  # noqa: PLC0415  # the SDK is loaded only when a docker runner is used

    module: ModuleType = docker
    return module


def _engine_errors() -> tuple[type[Exception], ...]:
    """List what the SDK raises when the engine fails or cannot be reached."""
    import requests  # noqa: PLC0415  # a dependency of the docker SDK; loaded with it

    return (_docker().errors.DockerException, requests.exceptions.RequestException, OSError)


def _reason(exc: BaseException) -> str:
    """Say an engine error in one short line: the OS error at its root when there is one."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        error = todo.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and isinstance(error.strerror, str) and error.strerror:
            return error.strerror
        explanation = getattr(error, "explanation", None)  # the engine's own message, in an APIError
        if isinstance(explanation, str) and explanation.strip():
            return _shortened(explanation)
        todo.extend(e for e in (error.__cause__, error.__context__, *error.args) if isinstance(e, BaseException))
    return _shortened(str(exc)) or type(exc).__name__


def _shortened(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_MAX else line[: _REASON_MAX - 3] + "..."
