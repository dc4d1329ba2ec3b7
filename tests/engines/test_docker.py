"""DockerRunner against a real engine: whole tasklists through ``pytaskfarmer.py``, checked from outside.

Needs an engine on ``$DOCKER_HOST`` with the images ``local/busybox`` and ``local/bash``: ``ci/docker-up.sh DIR``
starts one and builds them without any registry.
"""

from __future__ import annotations

import os
import signal
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from tests.helpers import LONG, cleanup, ids, lines, run_farmer, start_farmer, wait_for, write_tasklist

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator

# The engine probe of conftest, and docker-py generally, leave the socket of a failed connection unclosed: where no
# engine answers, that warning would otherwise fail whichever test the garbage collector runs in.
pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

BUSYBOX: Final = "local/busybox"
BASH: Final = "local/bash"


@pytest.fixture
def client() -> Iterator[Any]:
    import docker  # noqa: PLC0415  # only when the engine tests run

    engine = docker.from_env()
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def _local_images(client: Any) -> None:
    missing = [image for image in (BUSYBOX, BASH) if not client.api.images(name=image, quiet=True)]
    if missing:
        pytest.fail(f"images {', '.join(missing)} are not on the engine at $DOCKER_HOST: run ci/docker-up.sh DIR")


def _define(home: Path, body: str) -> None:
    """Write the runner definition; the tests never pull (no registry is reachable where they run)."""
    text = textwrap.dedent(body)
    (home / "runners.d" / "docker.ini").write_text(text if "pull =" in text else f"{text.rstrip()}\npull = never\n")


def _containers(client: Any, workdir: Path) -> list[dict[str, Any]]:
    """:returns: the containers labelled with *workdir* (the low-level list: it never inspects a vanishing one)"""
    return list(client.api.containers(all=True, filters={"label": f"taskfarmer.workdir={workdir.resolve()}"}))


def _running_containers(client: Any, workdir: Path) -> list[dict[str, Any]]:
    return [c for c in _containers(client, workdir) if c["State"] == "running"]


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr.strip()


def _shared_dir(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o777)  # writable for a container user that is not the test's
    return path


def test_exit_statuses_and_output_are_recorded(tmp_path: Path, taskfarmer_home: Path, client: Any) -> None:
    _define(taskfarmer_home, f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\nshell = /bin/sh\n")
    tasklist = write_tasklist(
        tmp_path / "t.txt",
        [
            "echo out-$PROC_NUMBER; echo err-$PROC_NUMBER >&2",
            "exit 3",
            "kill -9 $$",
            r"printf 'caf\303\251\n'",
            "no-such-program",
        ],
    )
    result = run_farmer(tasklist, "-r", "bb", "-n", "2")
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert sorted(ids(workdir / "finished")) == [0, 3]
    failed = sorted(line.split(" ", 2)[:2] for line in lines(workdir / "failed"))
    assert failed == [["1", "exit:3"], ["2", "exit:137"], ["4", "exit:127"]]
    assert sorted((workdir / "logs" / "log_0").read_text().splitlines()) == ["err-0", "out-0"]
    assert (workdir / "logs" / "log_3").read_text(encoding="utf-8") == "café\n"
    assert "no-such-program" in (workdir / "logs" / "log_4").read_text()
    assert _containers(client, workdir) == []


def test_the_default_shell_is_bash(tmp_path: Path, taskfarmer_home: Path) -> None:
    _define(taskfarmer_home, f"[bash]\nRunner = DockerRunner\nimage = {BASH}\n")
    tasklist = write_tasklist(tmp_path / "t.txt", ['[[ $BASH_VERSION == 5* ]] && echo "bash task $PROC_NUMBER"'])
    result = run_farmer(tasklist, "-r", "bash", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.txt_workdir" / "logs" / "log_0").read_text() == "bash task 0\n"


def test_volumes_variables_and_task_environment(tmp_path: Path, taskfarmer_home: Path) -> None:
    out = _shared_dir(tmp_path / "out")
    inputs = tmp_path / "in"
    inputs.mkdir()
    _define(
        taskfarmer_home,
        f"""\
        [bb]
        Runner = DockerRunner
        image = {BUSYBOX}
        shell = /bin/sh
        volumes = {out}:/out {inputs}:/in:ro
        variables = FOO=bar baz
            ANSWER=42
        tempdir = true
        """,
    )
    task = "env > /out/env-$PROC_NUMBER; pwd > /out/pwd-$PROC_NUMBER; touch /in/x 2>/dev/null || echo ro >> /out/ro"
    tasklist = write_tasklist(tmp_path / "t.txt", [task, task])
    result = run_farmer(tasklist, "-r", "bb", "-n", "2", env={"SECRET_OF_THE_HOST": "x"})
    assert result.returncode == 0, result.stderr
    workdir = (tmp_path / "t.txt_workdir").resolve()
    for taskid in (0, 1):
        env = dict(line.split("=", 1) for line in (out / f"env-{taskid}").read_text().splitlines())
        assert (env["PROC_NUMBER"], env["TASKFARMER_TASK_ID"]) == (str(taskid), str(taskid))
        assert (env["FOO"], env["ANSWER"]) == ("bar baz", "42")
        assert env["TASKFARMER_WORKDIR"] == str(workdir)
        assert env["TASKFARMER_WORKER"] in {"0", "1"}
        assert env["PATH"] == "/bin:/usr/bin"  # the image's, not the farmer's
        assert "SECRET_OF_THE_HOST" not in env
        cwd = (out / f"pwd-{taskid}").read_text().strip()
        assert cwd.startswith(f"{tempfile.gettempdir()}/taskfarmer-{taskid}-")
        assert not Path(cwd).exists()  # the per-task directory is removed afterwards
    assert (out / "ro").read_text() == "ro\nro\n"
    assert list(inputs.iterdir()) == []


@pytest.mark.parametrize(
    ("option", "owner"),
    [("", (os.getuid(), os.getgid())), ("user = 1234:1234", (1234, 1234))],
    ids=["farmer's own uid:gid by default", "explicit user"],
)
def test_files_written_through_a_volume_belong_to_the_user(
    tmp_path: Path, taskfarmer_home: Path, option: str, owner: tuple[int, int]
) -> None:
    out = _shared_dir(tmp_path / "out")
    _define(
        taskfarmer_home,
        f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\nshell = /bin/sh\nvolumes = {out}:/out\n{option}\n",
    )
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo $(id -u):$(id -g) > /out/file"])
    result = run_farmer(tasklist, "-r", "bb", "-n", "1")
    assert result.returncode == 0, result.stderr
    written = (out / "file").stat()
    assert (written.st_uid, written.st_gid) == owner
    assert (out / "file").read_text() == f"{owner[0]}:{owner[1]}\n"


def test_limits_reach_the_container(tmp_path: Path, taskfarmer_home: Path) -> None:
    _define(
        taskfarmer_home,
        f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\nshell = /bin/sh\nmemory = 64m\ncpus = 0.5\n",
    )
    cgroup = (
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max 2>/dev/null"
        " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    )
    tasklist = write_tasklist(tmp_path / "t.txt", [cgroup])
    result = run_farmer(tasklist, "-r", "bb", "-n", "1")
    assert result.returncode == 0, result.stderr
    memory, cpu = (tmp_path / "t.txt_workdir" / "logs" / "log_0").read_text().splitlines()
    assert memory == str(64 * 1024 * 1024)
    assert cpu.split()[0] == "50000"  # half of the default 100000 us period


# -- stops: nothing is left running, every running task goes back to the queue ---------------------------------------

SLEEPER: Final = "echo started-$PROC_NUMBER; sleep 60"


def _start_sleepers(tmp_path: Path, home: Path, client: Any, *args: str) -> tuple[subprocess.Popen[str], Path]:
    _define(home, f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\nshell = /bin/sh\n")
    tasklist = write_tasklist(tmp_path / "t.txt", [SLEEPER] * 3)
    farmer = start_farmer(tasklist, "-r", "bb", "-n", "2", *args)
    workdir = tmp_path / "t.txt_workdir"
    wait_for(lambda: len(_running_containers(client, workdir)) == 2, what="two task containers running")
    return farmer, workdir


def _assert_streamed(workdir: Path) -> None:
    """The logs hold what the tasks printed while their containers still run."""
    wait_for(
        lambda: sorted("".join(lines(log)) for log in (workdir / "logs").glob("log_*")) == ["started-0", "started-1"],
        what="the tasks' first lines in their logs",
    )


def _assert_stopped_cleanly(farmer: subprocess.Popen[str], workdir: Path, client: Any) -> None:
    _, stderr = farmer.communicate(timeout=LONG)
    assert farmer.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert _containers(client, workdir) == []
    assert sorted(ids(workdir / "toprocess")) == [0, 1, 2]
    assert lines(workdir / "finished") == []
    assert lines(workdir / "failed") == []


def test_sigterm_to_the_farmer_leaves_no_container(tmp_path: Path, taskfarmer_home: Path, client: Any) -> None:
    farmer, workdir = _start_sleepers(tmp_path, taskfarmer_home, client)
    with cleanup(farmer):
        _assert_streamed(workdir)
        os.kill(farmer.pid, signal.SIGTERM)  # the farmer's main process only: it stops its workers itself
        _assert_stopped_cleanly(farmer, workdir, client)


def test_global_timeout_leaves_no_container(tmp_path: Path, taskfarmer_home: Path, client: Any) -> None:
    farmer, workdir = _start_sleepers(tmp_path, taskfarmer_home, client, "--timeout", "5")
    with cleanup(farmer):
        _assert_streamed(workdir)
        _assert_stopped_cleanly(farmer, workdir, client)


def test_kill_9_then_restart_removes_the_leftovers_and_finishes(
    tmp_path: Path, taskfarmer_home: Path, client: Any
) -> None:
    out = _shared_dir(tmp_path / "out")
    _define(
        taskfarmer_home,
        f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\nshell = /bin/sh\nvolumes = {out}:/out\n",
    )
    task = "test -e /out/go || sleep 60; echo done-$PROC_NUMBER"
    tasklist = write_tasklist(tmp_path / "t.txt", [task] * 3)
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-r", "bb", "-n", "2")
    with cleanup(farmer):
        wait_for(lambda: len(_running_containers(client, workdir)) == 2, what="two task containers running")
        os.killpg(farmer.pid, signal.SIGKILL)
        farmer.communicate(timeout=LONG)
    leftovers = _running_containers(client, workdir)
    assert len(leftovers) == 2, "the engine keeps the containers of a farmer killed with kill -9"
    (out / "go").touch()  # the killed workers may still be zombies: the restart must treat them as dead anyway
    result = run_farmer(tasklist, "-r", "bb", "-n", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(ids(workdir / "finished")) == [0, 1, 2]
    assert _containers(client, workdir) == []
    assert "removing container taskfarmer-" in result.stderr


def test_a_task_timeout_kills_only_that_container(tmp_path: Path, taskfarmer_home: Path, client: Any) -> None:
    _define(taskfarmer_home, f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\nshell = /bin/sh\ngrace = 1\n")
    tasklist = write_tasklist(tmp_path / "t.txt", [SLEEPER, "sleep 1; echo quick"])
    result = run_farmer(tasklist, "-r", "bb", "-n", "2", "--task-timeout", "3")
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert ids(workdir / "finished") == [1]
    assert [line.split(" ", 2)[:2] for line in lines(workdir / "failed")] == [["0", "timeout"]]
    assert (workdir / "logs" / "log_0").read_text() == "started-0\n"
    assert _containers(client, workdir) == []


# -- bad set-ups: one clear line, exit status 2, nothing changed ------------------------------------------------------


def test_an_unreachable_engine_is_one_clear_error(tmp_path: Path, taskfarmer_home: Path) -> None:
    _define(taskfarmer_home, f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\n")
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    socket = tmp_path / "missing.sock"
    line = _one_error_line(run_farmer(tasklist, "-r", "bb", env={"DOCKER_HOST": f"unix://{socket}"}))
    assert line.startswith(
        f"pytaskfarmer: error: docker runner [bb]: no Docker API engine answers at DOCKER_HOST=unix://{socket}"
    )
    assert "point DOCKER_HOST or the runner's base_url at its socket" in line
    assert not (tmp_path / "t.txt_workdir").exists()


def test_a_missing_image_with_pull_never_is_one_clear_error(tmp_path: Path, taskfarmer_home: Path) -> None:
    _define(taskfarmer_home, "[bb]\nRunner = DockerRunner\nimage = local/no-such-image:1\npull = never\n")
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    line = _one_error_line(run_farmer(tasklist, "-r", "bb"))
    assert "docker runner [bb]: image 'local/no-such-image:1' is not on the engine at DOCKER_HOST=" in line
    assert "pull = never" in line
    assert not (tmp_path / "t.txt_workdir").exists()


def test_an_image_without_the_task_shell_is_one_clear_error(tmp_path: Path, taskfarmer_home: Path) -> None:
    _define(taskfarmer_home, f"[bb]\nRunner = DockerRunner\nimage = {BUSYBOX}\n")  # busybox has no bash
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    line = _one_error_line(run_farmer(tasklist, "-r", "bb"))
    assert f"[bb]: a container of image '{BUSYBOX}' cannot run the task shell `bash -c`" in line
    assert "Set shell = /bin/sh for an image without bash" in line
    assert not (tmp_path / "t.txt_workdir").exists()
