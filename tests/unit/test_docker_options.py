"""DockerRunner without an engine: INI options, their checks, and the exact container description."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from taskfarmer import config
from taskfarmer.errors import ConfigError, EngineNotFoundError
from taskfarmer.runners import docker as docker_runner
from taskfarmer.runners.docker import DockerRunner
from taskfarmer.store import Holder

if TYPE_CHECKING:
    from collections.abc import Iterator

HOLDER = Holder(host="node 7.cluster", boot="b00t", pid=4242, ctime=1700000000.25)
LABELS = docker_runner.task_labels(HOLDER, workdir="/farm/wd", task="3")


def _build(home: Path, body: str) -> DockerRunner:
    (home / "runners.d" / "docker.ini").write_text("[d]\nRunner = DockerRunner\n" + textwrap.dedent(body))
    runner, variables = config.build_runner(config.runner_catalog().get("d"))
    assert isinstance(runner, DockerRunner)
    assert variables == {}  # the runner takes `variables` itself: the worker leaves its own environment alone
    return runner


def _own_user() -> str:
    return f"{os.getuid()}:{os.getgid()}"


def _own_groups() -> list[str]:
    return [str(g) for g in sorted(set(os.getgroups())) if g != os.getgid()]


def test_ini_options_become_typed_arguments(taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA", "/data")
    runner = _build(
        taskfarmer_home,
        """\
        image = ghcr.io/exp/sw:1.5
        setup = source /opt/sw/setup.sh
        variables = FOO=bar
            N=3
        volumes = $DATA:/data:ro /scratch/me:/scratch
        workdir = /work
        user = 1234:1234
        pull = Never
        memory = 4g
        cpus = 1.5
        gpus = device=0,1
        network = none
        shell = /bin/sh
        entrypoint = none
        init = false
        base_url = unix:///run/podman/podman.sock
        grace = 2
        """,
    )
    assert runner.image == "ghcr.io/exp/sw:1.5"
    assert runner.variables == {"FOO": "bar", "N": "3"}
    assert runner.volumes == ["/data:/data:ro", "/scratch/me:/scratch:rw"]
    assert (runner.workdir, runner.user, runner.group_add) == ("/work", "1234:1234", [])
    assert (runner.pull, runner.memory, runner.cpus, runner.network) == ("never", "4g", 1.5, "none")
    assert runner.device_requests == [{"device_ids": ["0", "1"], "capabilities": [["gpu"]]}]
    assert (runner.shell, runner.entrypoint, runner.init, runner.grace) == ("/bin/sh", [""], False, 2.0)
    assert runner.base_url == "unix:///run/podman/podman.sock"
    assert (runner.name, runner.label) == ("d", "docker runner [d]")  # given by the farmer, for messages


def test_defaults(taskfarmer_home: Path) -> None:
    runner = _build(taskfarmer_home, "image = local/busybox\n")
    assert (runner.user, runner.group_add) == (_own_user(), _own_groups())
    assert (runner.pull, runner.network, runner.shell, runner.init) == ("missing", "host", "bash", True)
    assert (runner.volumes, runner.workdir, runner.memory, runner.cpus) == ([], "", "", 0.0)
    assert (runner.device_requests, runner.entrypoint, runner.base_url, runner.tempdir) == ([], None, "", None)


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("setup = true\n", r"\[d\] in .*docker\.ini: missing option 'image' \(required by DockerRunner\)"),
        ("image = a\nimgae = b\n", r"unknown option 'imgae'\. Valid options: .*base_url, cpus, entrypoint, gpus"),
        ("image = a\ncpus = two\n", r"option 'cpus' = 'two': not a number"),
        ("image = a\ninit = maybe\n", r"option 'init' = 'maybe': not a boolean"),
        ("image =\n", r"Cannot build runner \[d\] in .*docker\.ini: option 'image' = '': give one image reference"),
        ("image = a b\n", r"option 'image' = 'a b'"),
        ("image = a\npull = sometimes\n", r"option 'pull' = 'sometimes': use one of never, missing, always"),
        ("image = a\nmemory = lots\n", r"option 'memory' = 'lots': .* e\.g\. 4g"),
        ("image = a\ncpus = -1\n", r"option 'cpus' = -1\.0: give a number of CPUs"),
        ("image = a\ngpus = some\n", r"option 'gpus' = 'some': use all, a number of GPUs"),
        ("image = a\ngpus = 0\n", r"option 'gpus' = '0'"),
        ("image = a\nworkdir = work\n", r"workdir 'work' must be an absolute path in the container"),
        ("image = a\nvolumes = /a\n", r"volume '/a' is not HOST:CONTAINER or HOST:CONTAINER:MODE"),
        ("image = a\nvolumes = data/x:/x\n", r"volume 'data/x:/x': the host path 'data/x' must be absolute"),
        ("image = a\nvolumes = /a:b\n", r"volume '/a:b': the container path 'b' must be an absolute path"),
        ("image = a\nvolumes = /a:/b:rx\n", r"volume '/a:/b:rx': unknown mode 'rx' \(use ro or rw\)"),
        ("image = a\ngrace = -1\n", r"option 'grace' = -1\.0: must be 0 or more seconds"),
    ],
)
def test_bad_options_name_the_file_the_section_and_the_option(taskfarmer_home: Path, body: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        _build(taskfarmer_home, body)


@pytest.mark.parametrize(
    ("text", "requests"),
    [
        ("", []),
        ("all", [{"count": -1, "capabilities": [["gpu"]]}]),
        ("2", [{"count": 2, "capabilities": [["gpu"]]}]),
        ("device=GPU-3a1f", [{"device_ids": ["GPU-3a1f"], "capabilities": [["gpu"]]}]),
    ],
)
def test_gpus_as_docker_run(text: str, requests: list[dict[str, Any]]) -> None:
    assert docker_runner.parse_gpus(text) == requests


@pytest.mark.parametrize(
    ("text", "volume"),
    [
        ("named:/data", "named:/data:rw"),
        ("/a:/b:ro,z", "/a:/b:ro,z"),
        ("~/in:/in:ro", f"{Path.home()}/in:/in:ro"),
    ],
)
def test_volumes_are_normalised(text: str, volume: str) -> None:
    assert docker_runner.parse_volume(text) == volume


def test_user_image_keeps_the_images_user() -> None:
    assert docker_runner.resolve_user("image") == ("", [])
    assert docker_runner.resolve_user("nobody") == ("nobody", [])


def test_entrypoint() -> None:
    assert docker_runner.parse_entrypoint("") is None
    assert docker_runner.parse_entrypoint("none") == [""]
    assert docker_runner.parse_entrypoint("/usr/bin/env -i 'A=1 2'") == ["/usr/bin/env", "-i", "A=1 2"]


def test_the_container_spec_of_a_task_with_every_option() -> None:
    runner = DockerRunner(  # noqa: S604  # shell: the task's shell in the container, not subprocess's shell=True
        image="exp/sw:1",
        setup="source /sw/env.sh",
        variables={"FOO": "bar"},
        volumes=["/data:/data:ro"],
        user="1234:1234",
        memory="512m",
        cpus=0.5,
        gpus="all",
        network="none",
        shell="/bin/sh",
        entrypoint="none",
        init=False,
        tempdir="true",
    )
    spec = runner.container_spec(
        runner.script("echo $FOO"), name="n", labels=LABELS, environment={"FOO": "bar"}, tempdir="/tmp/t-3"
    )
    assert spec == {
        "image": "exp/sw:1",
        "command": ["/bin/sh", "-c", "{ source /sw/env.sh\n} || exit $?\necho $FOO"],
        "name": "n",
        "labels": LABELS,
        "environment": {"FOO": "bar"},
        "init": False,
        "user": "1234:1234",
        "volumes": ["/data:/data:ro", "/tmp/t-3:/tmp/t-3:rw"],
        "working_dir": "/tmp/t-3",
        "network_mode": "none",
        "entrypoint": [""],
        "mem_limit": "512m",
        "nano_cpus": 500_000_000,
        "device_requests": [{"count": -1, "capabilities": [["gpu"]]}],
    }


def test_the_container_spec_by_default() -> None:
    runner = DockerRunner(image="local/bash", workdir="/work")
    spec = runner.container_spec("exit 3", name="n", labels=LABELS, environment={}, tempdir="/tmp/t")
    expected: dict[str, Any] = {
        "image": "local/bash",
        "command": ["bash", "-c", "exit 3"],
        "name": "n",
        "labels": LABELS,
        "environment": {},
        "init": True,
        "user": _own_user(),
        "volumes": ["/tmp/t:/tmp/t:rw"],
        "working_dir": "/work",  # workdir wins over the temporary directory
        "network_mode": "host",
    }
    if _own_groups():
        expected["group_add"] = _own_groups()
    assert spec == expected


def test_the_container_gets_the_task_variables_not_the_farmers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROC_NUMBER", "12")
    monkeypatch.setenv("TASKFARMER_WORKER", "3")
    monkeypatch.setenv("SECRET_OF_THE_HOST", "x")
    monkeypatch.setenv("PATH", "/host/only/bin")
    env = DockerRunner(image="a", variables={"FOO": "bar", "PROC_NUMBER": "12"}).environment()
    assert env["PROC_NUMBER"] == "12"
    assert (env["TASKFARMER_WORKER"], env["FOO"]) == ("3", "bar")
    assert "SECRET_OF_THE_HOST" not in env
    assert "PATH" not in env  # the image's own PATH stays
    assert all(key in {"PROC_NUMBER", "FOO"} or key.startswith("TASKFARMER_") for key in env)


def test_labels_name_the_workdir_and_the_worker_process() -> None:
    assert LABELS == {
        "taskfarmer.workdir": "/farm/wd",
        "taskfarmer.host": "node 7.cluster",
        "taskfarmer.boot": "b00t",
        "taskfarmer.pid": "4242",
        "taskfarmer.ctime": "1700000000.25",
        "taskfarmer.task": "3",
    }
    assert docker_runner.holder_from_labels(LABELS) == HOLDER
    assert docker_runner.holder_from_labels({"taskfarmer.pid": "x"}) is None
    assert docker_runner.container_name(HOLDER, 3, "ab12cd") == "taskfarmer-node-7.cluster-4242-3-ab12cd"


def test_only_provably_dead_holders_are_dead() -> None:
    me = Holder.this_process()
    assert not docker_runner.holder_is_dead(me)
    assert docker_runner.holder_is_dead(replace(me, ctime=me.ctime - 100))  # a reused PID is not the holder
    assert docker_runner.holder_is_dead(replace(me, boot="another boot"))  # this host rebooted since
    assert not docker_runner.holder_is_dead(replace(me, host="elsewhere", pid=1, ctime=0))  # another host's
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert docker_runner.holder_is_dead(replace(me, pid=gone.pid))


def test_importing_the_module_or_building_a_runner_does_not_load_the_sdk() -> None:
    code = (
        "import sys; from taskfarmer.runners.docker import DockerRunner; DockerRunner(image='a');"
        " print('docker' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_terminate_with_no_task_running() -> None:
    assert DockerRunner(image="a").terminate() is False


# docker-py leaves the socket of a failed connection unclosed (in a reference cycle): a test that makes it fail
# ignores that warning, and collects the socket before its end, so that no later test gets the warning instead.
LEAKED_SOCKET: Final = "ignore:unclosed <socket.socket:ResourceWarning"


@pytest.fixture
def leaky_sdk() -> Iterator[None]:
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.usefixtures("leaky_sdk")
@pytest.mark.filterwarnings(LEAKED_SOCKET)
def test_an_unreachable_engine_fails_the_task_with_125(tmp_path: Path) -> None:
    runner = DockerRunner(image="a", base_url=f"unix://{tmp_path}/missing.sock")
    with (tmp_path / "log").open("w") as log:
        assert runner.run(0, "true", log) == 125
    assert (tmp_path / "log").read_text() == (
        "pytaskfarmer: docker runner cannot run the task in image a: No such file or directory\n"
    )


@pytest.mark.usefixtures("leaky_sdk")
@pytest.mark.filterwarnings(LEAKED_SOCKET)
def test_preflight_with_no_engine_is_one_clear_line(tmp_path: Path) -> None:
    runner = DockerRunner(image="a", base_url=f"unix://{tmp_path}/missing.sock")
    with pytest.raises(EngineNotFoundError) as error:
        runner.preflight(workdir=tmp_path / "wd")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"docker runner: no Docker API engine answers at base_url = unix://{tmp_path}/missing")
    assert "(No such file or directory)" in message
    assert "pick another runner with --runner" in message


class _FakeImages:
    """The image part of a docker client: which images exist, and whether a pull works."""

    def __init__(self, *, present: bool, pullable: bool) -> None:
        self.present = present
        self.pullable = pullable
        self.pulled: list[str] = []

    def get(self, name: str) -> object:
        import docker  # noqa: PLC0415  # the SDK's own exception classes

        if not self.present:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return object()

    def pull(self, name: str) -> object:
        import docker  # noqa: PLC0415  # see get

        self.pulled.append(name)
        if not self.pullable:
            # What docker-py raises when the engine cannot find the image anywhere: an APIError 500.
            raise docker.errors.APIError("500 Server Error", explanation="pull access denied for exp/missing")
        return object()


def _with_images(runner: DockerRunner, images: _FakeImages) -> DockerRunner:
    runner._client = type("FakeClient", (), {"images": images})()
    return runner


@pytest.mark.parametrize(
    ("pull", "present", "pullable", "pulled", "pattern"),
    [
        ("never", True, False, [], None),
        ("never", False, True, [], r"image 'exp/missing' is not on the engine at .*, and pull = never\. Pull, build"),
        ("missing", True, False, [], None),
        ("missing", False, True, ["exp/missing"], None),
        ("missing", False, False, ["exp/missing"], r"cannot be pulled .*\(pull access denied for exp/missing\)"),
        ("always", True, True, ["exp/missing"], None),
        ("always", True, False, ["exp/missing"], r"cannot be pulled .* and pull = always"),
    ],
)
def test_pull_policy(pull: str, present: bool, pullable: bool, pulled: list[str], pattern: str | None) -> None:
    images = _FakeImages(present=present, pullable=pullable)
    runner = _with_images(DockerRunner(image="exp/missing", pull=pull), images)
    if pattern is None:
        runner._ensure_image()
    else:
        with pytest.raises(ConfigError, match=pattern):
            runner._ensure_image()
    assert images.pulled == pulled


def test_reason_finds_the_os_error_under_the_sdk_errors() -> None:
    outer = RuntimeError("Error while fetching server API version: ('Connection aborted.', ...)")
    outer.__cause__ = ConnectionError(ValueError("Connection aborted."), FileNotFoundError(2, "No such file"))
    assert docker_runner._reason(outer) == "No such file"
    long = docker_runner._reason(ValueError("a\n  b " + "x" * 400))
    assert long.startswith("a b xxx")
    assert long.endswith("...")
    assert len(long) == 300


def test_every_example_definition_builds(taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    example = Path(__file__).resolve().parents[2] / "runners.d.example" / "docker.ini"
    (taskfarmer_home / "runners.d" / "docker.ini").write_text(example.read_text())
    catalog = config.runner_catalog()
    names = [name for name, definition in catalog.definitions.items() if definition.class_name == "DockerRunner"]
    assert names == ["reco", "train", "tools"]
    for name in names:
        runner, _ = config.build_runner(catalog.get(name))
        assert isinstance(runner, DockerRunner)
    train, _ = config.build_runner(catalog.get("train"))
    assert train.volumes == ["/scratch/me/datasets:/datasets:ro", "/scratch/me/runs:/runs:rw"]


class _FakeApi:
    """The low-level API part of a docker client: a list of containers, and the removals asked for."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.filters: list[dict[str, str]] = []
        self.removed: list[str] = []

    def containers(self, *, all: bool, filters: dict[str, str]) -> list[dict[str, Any]]:  # noqa: A002  # the SDK's name
        assert all
        self.filters.append(filters)
        return self.entries

    def remove_container(self, container: str, *, force: bool) -> None:
        assert force
        self.removed.append(container)


def test_leftovers_of_dead_workers_on_this_host_are_removed() -> None:
    me = Holder.this_process()
    gone = subprocess.Popen(["true"])
    gone.wait()
    holders = {
        "dead": replace(me, pid=gone.pid),
        "alive": me,
        "elsewhere": replace(me, host="another-node", pid=gone.pid),
        "reused-pid": replace(me, ctime=me.ctime - 50),
    }
    entries = [
        {"Id": f"id-{key}", "Names": [f"/c-{key}"], "Labels": docker_runner.task_labels(h, workdir="/wd", task="1")}
        for key, h in holders.items()
    ]
    entries.append({"Id": "id-foreign", "Names": ["/other"], "Labels": {"taskfarmer.workdir": "/wd"}})
    api = _FakeApi(entries)
    client = type("FakeClient", (), {"api": api})()
    assert docker_runner.remove_leftovers(client, workdir="/wd") == ["c-dead", "c-reused-pid"]
    assert api.removed == ["id-dead", "id-reused-pid"]
    assert api.filters == [{"label": "taskfarmer.workdir=/wd"}]


def test_the_workers_gpu_goes_to_the_container_unless_gpus_says_otherwise() -> None:
    spec = DockerRunner(image="a").container_spec("true", name="n", labels={}, environment={}, gpu="2")
    assert spec["device_requests"] == [{"device_ids": ["2"], "capabilities": [["gpu"]]}]
    spec = DockerRunner(image="a", gpus="all").container_spec("true", name="n", labels={}, environment={}, gpu="2")
    assert spec["device_requests"] == [{"count": -1, "capabilities": [["gpu"]]}]
    assert "device_requests" not in DockerRunner(image="a").container_spec("true", name="n", labels={}, environment={})
