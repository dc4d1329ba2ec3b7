"""ApptainerRunner against the real Apptainer: whole tasklists through the farmer, in a sandbox and a SIF image.

The images come from ``ci/apptainer-install.sh`` (``TASKFARMER_TEST_SANDBOX``, ``TASKFARMER_TEST_SIF``): busybox
with the host's bash, and ``/etc/taskfarmer-test-image`` to show that a task really ran in the image.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Final

import psutil
import pytest

from tests.helpers import (
    LONG,
    SHORT,
    cleanup,
    ids,
    lines,
    processes_with_env,
    run_farmer,
    start_farmer,
    wait_for,
    write_tasklist,
)

pytestmark = [pytest.mark.apptainer, pytest.mark.timeout(180)]
# Fails when a `sleep 313.25` runs anywhere (no pgrep in busybox images: bash and /proc, which the container shares).
ORPHAN_GONE: Final = (
    'for c in /proc/[0-9]*/cmdline; do mapfile -d "" -t a < "$c" 2>/dev/null;'
    ' [ "${a[*]:0:2}" = "sleep 313.25" ] && exit 1; done; exit 0'
)
IMAGE_VARIABLES: Final = {"sandbox": "TASKFARMER_TEST_SANDBOX", "sif": "TASKFARMER_TEST_SIF"}
IMAGE_MARKER: Final = "/etc/taskfarmer-test-image"
ENGINE_PROCESSES: Final = ("starter", "squashfuse", "squashfuse_ll", "apptainer", "singularity")


def _image(kind: str) -> str:
    variable = IMAGE_VARIABLES[kind]
    path = os.environ.get(variable, "")
    if path and Path(path).exists():
        return path
    reason = f"${variable} does not name the {kind} test image (run ci/apptainer-install.sh and eval its output)"
    if "apptainer" in os.environ.get("TASKFARMER_REQUIRE_ENGINES", "").replace(",", " ").split():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(params=sorted(IMAGE_VARIABLES))
def image(request: pytest.FixtureRequest) -> str:
    """Each test runs with the sandbox directory and with the SIF file."""
    return _image(str(request.param))


@pytest.fixture
def sif() -> str:
    """The SIF image (for the tests that need only one)."""
    return _image("sif")


def _define(home: Path, body: str) -> None:
    (home / "runners.d" / "apptainer.ini").write_text(textwrap.dedent(body))


def _log(tasklist: Path, taskid: int) -> str:
    return (tasklist.parent / f"{tasklist.name}_workdir" / "logs" / f"log_{taskid}").read_text()


def test_tasks_run_in_the_image_with_exit_codes_and_logs(tmp_path: Path, taskfarmer_home: Path, image: str) -> None:
    _define(taskfarmer_home, f"[app]\nRunner = ApptainerRunner\nimage = {image}\nquiet = true\n")
    tasks = [f"cat {IMAGE_MARKER}; echo task $PROC_NUMBER", "echo to stderr >&2; exit 3", "kill -9 $$", "true"]
    tasklist = write_tasklist(tmp_path / "tasks.txt", tasks)
    result = run_farmer(tasklist, "-r", "app", "-n", "2")
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "tasks.txt_workdir"
    assert sorted(ids(workdir / "finished")) == [0, 3]
    assert sorted(lines(workdir / "failed")) == ["1 exit:3 echo to stderr >&2; exit 3", "2 signal:SIGKILL kill -9 $$"]
    assert _log(tasklist, 0) == "pytaskfarmer apptainer test image\ntask 0\n"
    assert _log(tasklist, 1) == "to stderr\n"


def test_a_task_writes_to_a_bound_directory_and_starts_in_pwd(
    tmp_path: Path, taskfarmer_home: Path, image: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _define(
        taskfarmer_home,
        f"""
        [app]
        Runner = ApptainerRunner
        image = {image}
        binds = {out}:/results
        pwd = /results
        contain = true
        """,
    )
    tasklist = write_tasklist(tmp_path / "tasks.txt", ['echo "$PROC_NUMBER in $(pwd)" > "result.$PROC_NUMBER"'] * 3)
    result = run_farmer(tasklist, "-r", "app", "-n", "2")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["result.0", "result.1", "result.2"]
    assert (out / "result.2").read_text() == "2 in /results\n"


def test_cleanenv_passes_only_the_task_variables_and_variables_verbatim(
    tmp_path: Path, taskfarmer_home: Path, image: str
) -> None:
    _define(
        taskfarmer_home,
        f"""
        [clean]
        Runner = ApptainerRunner
        image = {image}
        cleanenv = true
        binds = {tmp_path}:/out
        variables =
            LIST=a,b,c
            PRICE=$5 `not run` "quoted"
        """,
    )
    tasklist = write_tasklist(tmp_path / "tasks.txt", ["env > /out/env.$PROC_NUMBER"] * 2)
    result = run_farmer(tasklist, "-r", "clean", "-n", "1", env={"HOST_SECRET": "leak"})
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in (tmp_path / "env.1").read_text().splitlines() if "=" in line)
    assert seen["PROC_NUMBER"] == "1"
    assert seen["TASKFARMER_TASK_ID"] == "1"
    assert seen["TASKFARMER_ATTEMPT"] == "1"
    assert seen["LIST"] == "a,b,c"
    assert seen["PRICE"] == '$5 `not run` "quoted"'
    assert "HOST_SECRET" not in seen
    assert seen["TASKFARMER_TASK_KEY"]


def test_without_cleanenv_the_farmers_environment_goes_in(tmp_path: Path, taskfarmer_home: Path, sif: str) -> None:
    _define(taskfarmer_home, f"[app]\nRunner = ApptainerRunner\nimage = {sif}\nquiet = true\nvariables = X=1,2\n")
    tasklist = write_tasklist(tmp_path / "tasks.txt", ['echo "$X $FROM_HOST $PROC_NUMBER $TASKFARMER_TASK_ID"'])
    result = run_farmer(tasklist, "-r", "app", "-n", "1", env={"FROM_HOST": "host"})
    assert result.returncode == 0, result.stderr
    assert _log(tasklist, 0) == "1,2 host 0 0\n"


def test_a_failing_setup_fails_the_task(tmp_path: Path, taskfarmer_home: Path, image: str) -> None:
    _define(
        taskfarmer_home,
        f"""
        [app]
        Runner = ApptainerRunner
        image = {image}
        quiet = true
        setup = echo setting up; test -e /no/such/file
        """,
    )
    marker = tmp_path / "ran"
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"touch {marker}"])
    result = run_farmer(tasklist, "-r", "app", "-n", "1")
    assert result.returncode == 1, result.stderr
    assert lines(tmp_path / "tasks.txt_workdir" / "failed") == [f"0 exit:1 touch {marker}"]
    assert _log(tasklist, 0) == "setting up\n"
    assert not marker.exists()


def test_setup_busybox_shell_and_a_temporary_directory(tmp_path: Path, taskfarmer_home: Path, sif: str) -> None:
    _define(
        taskfarmer_home,
        f"""
        [busybox]
        Runner = ApptainerRunner
        image = {sif}
        shell = /bin/sh
        quiet = true
        setup = export GREETING=hello && cd /etc
        tempdir = true
        """,
    )
    # The setup's `cd` shows where the task started: in its temporary directory, which the container sees.
    tasklist = write_tasklist(tmp_path / "tasks.txt", ['echo "$GREETING from $(pwd) after $OLDPWD, $0"'])
    result = run_farmer(tasklist, "-r", "busybox", "-n", "1")
    assert result.returncode == 0, result.stderr
    expected = rf"hello from /etc after {re.escape(tempfile.gettempdir())}/taskfarmer-0-\w+, /bin/sh\n"
    assert re.fullmatch(expected, _log(tasklist, 0))


def test_an_orphan_of_a_clean_container_is_killed_before_the_next_task(
    tmp_path: Path, taskfarmer_home: Path, sif: str
) -> None:
    _define(taskfarmer_home, f"[clean]\nRunner = ApptainerRunner\nimage = {sif}\ncleanenv = true\nquiet = true\n")
    tasks = ["sleep 313.25 & echo started", ORPHAN_GONE]
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", tasks), "-r", "clean", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert sorted(ids(tmp_path / "tasks.txt_workdir" / "finished")) == [0, 1]


def _engine_processes(since: float) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "create_time"]):
        with contextlib.suppress(psutil.Error):
            words = " ".join([proc.info["name"] or "", *(proc.info["cmdline"] or [])])
            recent = proc.info["create_time"] >= since
            if recent and any(name in words for name in ENGINE_PROCESSES) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def test_sigterm_to_the_farmer_leaves_no_engine_process(tmp_path: Path, taskfarmer_home: Path, image: str) -> None:
    started = tmp_path / "started"
    started.mkdir()
    _define(taskfarmer_home, f"[app]\nRunner = ApptainerRunner\nimage = {image}\nbinds = {started}:/started\n")
    mark = uuid.uuid4().hex
    since = time.time() - SHORT
    tasklist = write_tasklist(tmp_path / "tasks.txt", ["touch /started/$PROC_NUMBER; sleep 300"] * 4)
    farmer = start_farmer(tasklist, "-r", "app", "-n", "2", "--grace", "3", env={"TF_APPTAINER_TEST": mark})
    with cleanup(farmer):
        wait_for(lambda: len(list(started.iterdir())) == 2, what="two tasks running in containers")
        assert processes_with_env("TF_APPTAINER_TEST", mark)
        assert _engine_processes(since)  # what must be gone afterwards is seen while it runs
        os.kill(farmer.pid, signal.SIGTERM)
        farmer.wait(timeout=LONG)
    assert farmer.returncode == 3
    assert processes_with_env("TF_APPTAINER_TEST", mark) == []
    assert _engine_processes(since) == []
    assert sorted(ids(tmp_path / "tasks.txt_workdir" / "toprocess")) == [0, 1, 2, 3]


def test_singularity_runner_with_apptainers_singularity(tmp_path: Path, taskfarmer_home: Path, sif: str) -> None:
    _define(taskfarmer_home, f"[s]\nRunner = SingularityRunner\nimage = {sif}\nquiet = true\n")
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"cat {IMAGE_MARKER}"])
    result = run_farmer(tasklist, "-r", "s", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert _log(tasklist, 0) == "pytaskfarmer apptainer test image\n"


def test_a_missing_image_is_one_clear_error_before_anything_runs(tmp_path: Path, taskfarmer_home: Path) -> None:
    missing = tmp_path / "missing.sif"
    _define(taskfarmer_home, f"[app]\nRunner = ApptainerRunner\nimage = {missing}\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "app")
    assert result.returncode == 2
    assert f"cannot use image {missing}: no such file or directory" in result.stderr
    assert not (tmp_path / "tasks.txt_workdir").exists()
