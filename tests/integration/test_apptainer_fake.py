"""ApptainerRunner through the farmer against a fake ``apptainer`` on PATH, for machines without Apptainer.

The fake appends its argv as JSON to ``$FAKE_ENGINE_LOG``, answers ``--version``, parses the options of ``exec``
the way Apptainer takes them, and then does what Apptainer would do in a way the tests can see: a missing local
image fails with status 255, ``--cleanenv`` empties the environment but for ``APPTAINERENV_*``, ``--pwd``
changes directory, and it execs the command that follows the image.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from typing import TYPE_CHECKING, Final

import pytest

from taskfarmer.runners.apptainer import find_engine
from taskfarmer.runners.base import TASK_KEY_VARIABLE
from tests.helpers import LONG, ids, lines, run_farmer, write_tasklist
from tests.integration.fakes import install_python_fakes, write_script

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)
# Fails when a `sleep 313.25` runs anywhere (no pgrep in busybox images: bash and /proc, which the container shares).
ORPHAN_GONE: Final = (
    'for c in /proc/[0-9]*/cmdline; do mapfile -d "" -t a < "$c" 2>/dev/null;'
    ' [ "${a[*]:0:2}" = "sleep 313.25" ] && exit 1; done; exit 0'
)
LOG_VARIABLE: Final = "FAKE_ENGINE_LOG"
VERSION_VARIABLE: Final = "FAKE_APPTAINER_VERSION"

FAKE: Final = r"""
import json, os, sys

name = os.path.basename(sys.argv[0])
path = os.environ.get("FAKE_ENGINE_LOG")
if path:
    with open(path, "a") as log:
        log.write(json.dumps([name, *sys.argv[1:]]) + "\n")

def fail(message, status=255):
    sys.stderr.write(f"FATAL:   {message}\n")
    sys.exit(status)

SWITCHES = {"-e", "--cleanenv", "-c", "--contain", "-C", "--containall", "--compat", "--nv", "--rocm",
            "--no-home", "--writable-tmpfs", "-u", "--userns"}
VALUED = {"--pwd", "--cwd", "-B", "--bind", "--env", "-H", "--home", "-W", "--workdir"}
args = sys.argv[1:]
while args and args[0] in ("-q", "--quiet", "-s", "--silent", "-d", "--debug"):
    args = args[1:]
if args == ["--version"]:
    flavor = "apptainer" if "apptainer" in name else "singularity-ce"
    print(os.environ.get("FAKE_APPTAINER_VERSION", f"{flavor} version 1.4.5"))
    sys.exit(0)
if not args or args[0] != "exec":
    fail(f"this stand-in only does --version and exec, not {args[:1]}", 1)
args, found = args[1:], {"switches": set(), "--bind": [], "--pwd": None}
while args and args[0].startswith("-"):
    option = args.pop(0)
    if option in SWITCHES:
        found["switches"].add(option)
    elif option.split("=", 1)[0] in VALUED:
        value = option.split("=", 1)[1] if "=" in option else args.pop(0)
        key = {"-B": "--bind", "--cwd": "--pwd"}.get(option.split("=", 1)[0], option.split("=", 1)[0])
        if key == "--bind":
            found["--bind"].append(value)
        else:
            found[key] = value
    else:
        fail(f'Error for command "exec": unknown flag: {option}', 255)
if len(args) < 2:
    fail("exec needs an image and a command", 255)
image, command = args[0], args[1:]
if "://" not in image and not os.path.exists(image):
    fail(f"could not open image {image}: no such file or directory")
clean = found["switches"] & {"-e", "--cleanenv", "-C", "--containall", "--compat"}
environ = dict(os.environ)
if clean:
    environ = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
for key, value in os.environ.items():
    if key.startswith("APPTAINERENV_"):
        environ[key[len("APPTAINERENV_"):]] = value
environ["FAKE_APPTAINER_IMAGE"] = image
environ["FAKE_APPTAINER_BINDS"] = " ".join(found["--bind"])
if found["--pwd"] is not None:
    os.chdir(found["--pwd"])
os.execvpe(command[0], command, environ)
"""


@pytest.fixture
def engine_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``apptainer`` first on PATH (the host's /usr/bin behind it). :returns: the log of its calls"""
    bin_dir = install_python_fakes(tmp_path / "bin", {"apptainer": FAKE})
    log = tmp_path / "engine.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv(LOG_VARIABLE, str(log))
    return log


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A local "image" (the fake only checks that it exists)."""
    path = tmp_path / "images" / "app.sif"
    path.parent.mkdir()
    path.write_bytes(b"SIF")
    return path


def _define(home: Path, body: str) -> None:
    (home / "runners.d" / "apptainer.ini").write_text(textwrap.dedent(body))


def _calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _task_runs(log: Path) -> list[list[str]]:
    return [argv for argv in _calls(log) if "exec" in argv]


def test_tasks_run_in_the_container_with_binds_setup_and_exit_codes(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, image: Path
) -> None:
    _define(
        taskfarmer_home,
        f"""
        [app]
        Runner = ApptainerRunner
        image = {image}
        setup = export GREETING=hello
        binds = {tmp_path}:/data /opt:/opt:ro
        pwd = {tmp_path}
        """,
    )
    commands = ['echo "$GREETING $PROC_NUMBER $FAKE_APPTAINER_BINDS $PWD" > out.$PROC_NUMBER', "exit 3", "echo logged"]
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", commands), "-r", "app", "-n", "2")
    assert result.returncode == 1, result.stderr
    assert (tmp_path / "out.0").read_text().split() == [
        "hello",
        "0",
        f"{tmp_path}:/data",
        "/opt:/opt:ro",
        str(tmp_path),
    ]
    workdir = tmp_path / "tasks.txt_workdir"
    assert sorted(ids(workdir / "finished")) == [0, 2]
    assert lines(workdir / "failed") == ["1 exit:3 exit 3"]
    assert (workdir / "logs" / "log_2").read_text() == "logged\n"
    assert _calls(engine_log)[0] == ["apptainer", "--version"]  # preflight, before any task
    script = f"{{ export GREETING=hello\n}} || exit $?\n{commands[1]}"
    expected = ["apptainer", "exec", "--pwd", str(tmp_path), "--bind", f"{tmp_path}:/data", "--bind", "/opt:/opt:ro"]
    assert [*expected, str(image), "/bin/bash", "-c", script] in _task_runs(engine_log)
    assert len(_task_runs(engine_log)) == 3


def test_cleanenv_passes_proc_number_task_variables_and_variables_only(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, image: Path
) -> None:
    _define(
        taskfarmer_home,
        f"""
        [clean]
        Runner = ApptainerRunner
        image = {image}
        cleanenv = true
        variables =
            MODE=a,b $x
            OTHER=2
        """,
    )
    out = tmp_path / "env"
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"env > {out}.$PROC_NUMBER"] * 2)
    result = run_farmer(tasklist, "-r", "clean", "-n", "1", env={"HOST_ONLY": "leak"})
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in (tmp_path / "env.1").read_text().splitlines() if "=" in line)
    assert seen["PROC_NUMBER"] == "1"
    assert seen["TASKFARMER_TASK_ID"] == "1"
    assert seen["MODE"] == "a,b $x"
    assert seen["OTHER"] == "2"
    assert "HOST_ONLY" not in seen
    assert seen[TASK_KEY_VARIABLE]  # through APPTAINERENV_, set for this very task
    run = _task_runs(engine_log)[1]
    assert run[:3] == ["apptainer", "exec", "--cleanenv"]
    assert run[run.index("env") + 1 : run.index("env") + 2] == ["PROC_NUMBER=1"]
    assert run[-5:] == ["MODE=a,b $x", "OTHER=2", "/bin/bash", "-c", f"env > {out}.$PROC_NUMBER"]


def test_a_background_process_left_in_a_clean_container_is_killed_before_the_next_task(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, image: Path
) -> None:
    # The orphan has no TASKFARMER_* of the farmer's environment but those passed in: the task's key finds it.
    _define(taskfarmer_home, f"[clean]\nRunner = ApptainerRunner\nimage = {image}\ncleanenv = true\n")
    tasks = ["sleep 313.25 & echo started", ORPHAN_GONE]
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", tasks), "-r", "clean", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert sorted(ids(tmp_path / "tasks.txt_workdir" / "finished")) == [0, 1]
    assert len(_task_runs(engine_log)) == 2


def test_a_failing_setup_fails_the_task(tmp_path: Path, taskfarmer_home: Path, engine_log: Path, image: Path) -> None:
    _define(taskfarmer_home, f"[bad]\nRunner = ApptainerRunner\nimage = {image}\nsetup = echo setting up; exit 7\n")
    marker = tmp_path / "ran"
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", [f"touch {marker}"]), "-r", "bad", "-n", "1")
    assert result.returncode == 1, result.stderr
    assert not marker.exists()
    workdir = tmp_path / "tasks.txt_workdir"
    assert lines(workdir / "failed") == [f"0 exit:7 touch {marker}"]
    assert (workdir / "logs" / "log_0").read_text() == "setting up\n"
    assert len(_task_runs(engine_log)) == 1


def test_singularity_runner_prefers_singularity(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, image: Path
) -> None:
    install_python_fakes(tmp_path / "bin", {"singularity": FAKE})
    _define(taskfarmer_home, f"[s]\nRunner = SingularityRunner\nimage = {image}\nshell = /bin/sh\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "s", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert _calls(engine_log) == [
        ["singularity", "--version"],
        ["singularity", "exec", str(image), "/bin/sh", "-c", "true"],
    ]


def test_apptainer_runner_falls_back_to_singularity(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, image: Path
) -> None:
    (tmp_path / "bin" / "apptainer").unlink()
    install_python_fakes(tmp_path / "bin", {"singularity": FAKE})
    _define(taskfarmer_home, f"[a]\nRunner = ApptainerRunner\nimage = {image}\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "a", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert [argv[:2] for argv in _calls(engine_log)] == [["singularity", "--version"], ["singularity", "exec"]]


def _refused(result_stderr: str, *parts: str) -> None:
    error_lines = [line for line in result_stderr.splitlines() if "apptainer runner" in line]
    assert len(error_lines) == 1, result_stderr
    for part in parts:
        assert part in error_lines[0], error_lines[0]


def test_no_engine_on_path_is_one_clear_error(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch, image: Path
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("apptainer") or shutil.which("singularity"):
        pytest.skip("a real engine is installed in /usr/bin or /bin")
    _define(taskfarmer_home, f"[a]\nRunner = ApptainerRunner\nimage = {image}\n")
    tasklist = write_tasklist(tmp_path / "tasks.txt", ["true"])
    result = run_farmer(tasklist, "-r", "a")
    assert result.returncode == 2
    _refused(result.stderr, "'apptainer' or 'singularity'", "not on PATH", "--runner")
    assert not (tmp_path / "tasks.txt_workdir").exists()


@pytest.mark.parametrize(
    "case",
    [("sleep 60\n", "did not answer within 1 s"), ("echo 'broken install' >&2; exit 3\n", "exited with status 3")],
)
def test_a_hanging_or_failing_engine_is_one_clear_error(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch, image: Path, case: tuple[str, str]
) -> None:
    body, problem = case
    bin_dir = tmp_path / "bad-bin"
    write_script(bin_dir / "apptainer", body)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    _define(taskfarmer_home, f"[a]\nRunner = ApptainerRunner\nimage = {image}\nprobe_timeout = 1\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "a", timeout=30)
    assert result.returncode == 2
    _refused(result.stderr, str(bin_dir / "apptainer"), problem)


def test_a_missing_local_image_is_one_clear_error(tmp_path: Path, taskfarmer_home: Path, engine_log: Path) -> None:
    missing = tmp_path / "nope.sif"
    _define(taskfarmer_home, f"[a]\nRunner = ApptainerRunner\nimage = {missing}\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "a")
    assert result.returncode == 2
    _refused(result.stderr, str(missing), "no such file or directory")
    assert _task_runs(engine_log) == []


def test_a_uri_image_is_not_checked_locally(tmp_path: Path, taskfarmer_home: Path, engine_log: Path) -> None:
    _define(taskfarmer_home, "[a]\nRunner = ApptainerRunner\nimage = docker://ubuntu:24.04\nexecutable = apptainer\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["echo $FAKE_APPTAINER_IMAGE"]), "-r", "a")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tasks.txt_workdir" / "logs" / "log_0").read_text() == "docker://ubuntu:24.04\n"


def test_the_engine_in_the_farmers_own_environment(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, image: Path
) -> None:
    # Without cleanenv the host's environment goes in as it is, variables too (also through env, to beat the image).
    _define(taskfarmer_home, f"[a]\nRunner = ApptainerRunner\nimage = {image}\nvariables = X=1\n")
    task = 'echo "$X $FROM_HOST $PROC_NUMBER"'
    result = run_farmer(write_tasklist(tmp_path / "t.txt", [task]), "-r", "a", env={"FROM_HOST": "h"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.txt_workdir" / "logs" / "log_0").read_text() == "1 h 0\n"
    assert _task_runs(engine_log) == [["apptainer", "exec", str(image), "env", "X=1", "/bin/bash", "-c", task]]
    assert os.environ.get(LOG_VARIABLE) == str(engine_log)


@pytest.mark.parametrize(
    ("version", "flavor"),
    [
        ("apptainer version 1.4.5", "apptainer"),
        ("singularity-ce version 4.1.0-jammy", "singularity-ce"),
        ("singularity version 3.8.7", "singularity"),
    ],
)
def test_find_engine_tells_the_engines_apart(
    engine_log: Path, monkeypatch: pytest.MonkeyPatch, version: str, flavor: str
) -> None:
    monkeypatch.setenv(VERSION_VARIABLE, version)
    engine = find_engine(("apptainer",), label="apptainer runner", timeout=LONG)
    assert (engine.version, engine.flavor) == (version, flavor)
    assert engine.path == shutil.which("apptainer")
    assert _calls(engine_log) == [["apptainer", "--version"]]
