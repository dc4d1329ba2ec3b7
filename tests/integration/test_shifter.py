"""ShifterRunner through the farmer, against a fake ``shifter`` on PATH that logs its argv and runs the command."""

from __future__ import annotations

import configparser
import os
import shutil
import textwrap
import time
from pathlib import Path

import pytest

from taskfarmer import config
from taskfarmer.runners.shifter import ShifterRunner
from tests.helpers import REPO, ids, lines, run_farmer, write_tasklist
from tests.integration.fakes import LOG_VARIABLE, calls, install_fakes, write_script

pytestmark = pytest.mark.timeout(120)
MCC = "gitlab-registry.cern.ch/berkeleylab/muoncollider/muoncollider-docker/mucoll-ilc-framework:1.5.1-centos8"


@pytest.fixture
def engine_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake ``shifter`` first on PATH; :returns: the log its calls go to."""
    bin_dir = install_fakes(tmp_path / "bin", ("shifter",))
    log = tmp_path / "engines.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv(LOG_VARIABLE, str(log))
    return log


def _define(home: Path, body: str) -> None:
    (home / "runners.d" / "shifter.ini").write_text(textwrap.dedent(body))


def _task_runs(log: Path) -> list[list[str]]:
    """:returns: the shifter calls that ran a task (not the --help probe)"""
    return [argv for argv in calls(log, "shifter") if "--" in argv]


def test_tasks_run_in_the_image_with_setup_and_proc_number(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_bash_env = tmp_path / "host-modules.sh"
    host_bash_env.write_text("export FROM_BASH_ENV=yes\n")
    monkeypatch.setenv("BASH_ENV", str(host_bash_env))  # a host module system's start-up file
    _define(
        taskfarmer_home,
        f"""
        [mcc]
        Runner = taskfarmer.runners.shifter.ShifterRunner
        image = {MCC}
        setup = export GREETING=hello && cd {tmp_path}
        """,
    )
    out = tmp_path / "out"
    out.mkdir()
    commands = [
        f'echo "$GREETING $PROC_NUMBER $FAKE_SHIFTER_IMAGE $PWD ${{FROM_BASH_ENV:-no}}" > {out}/$PROC_NUMBER'
    ] * 4
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", commands), "-r", "mcc", "-n", "2")
    assert result.returncode == 0, result.stderr
    for taskid in range(4):
        assert (out / str(taskid)).read_text().split() == ["hello", str(taskid), f"docker:{MCC}", str(tmp_path), "no"]
    assert calls(engine_log, "shifter")[0] == ["shifter", "--help"]  # the preflight probe, before any task
    runs = _task_runs(engine_log)
    assert len(runs) == 4
    script = f"{{ export GREETING=hello && cd {tmp_path}\n}} || exit $?\n{commands[0]}"
    assert all(argv == ["shifter", f"--image=docker:{MCC}", "--", "/bin/bash", "-c", script] for argv in runs)


def test_empty_setup_and_a_failing_setup(tmp_path: Path, taskfarmer_home: Path, engine_log: Path) -> None:
    _define(
        taskfarmer_home,
        """
        [plain]
        Runner = ShifterRunner
        image = docker:ubuntu:22.04
        setup =

        [broken]
        Runner = ShifterRunner
        image = docker:ubuntu:22.04
        setup = echo setting up && exit 7
        """,
    )
    marker = tmp_path / "ran"
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"touch {marker}"])
    result = run_farmer(tasklist, "-r", "plain", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    assert _task_runs(engine_log)[-1][-3:] == ["/bin/bash", "-c", f"touch {marker}"]

    marker.unlink()
    broken = write_tasklist(tmp_path / "broken.txt", [f"touch {marker}"])
    result = run_farmer(broken, "-r", "broken", "-n", "1")
    assert result.returncode == 1
    workdir = tmp_path / "broken.txt_workdir"
    assert lines(workdir / "failed") == [f"0 exit:7 touch {marker}"]
    assert not marker.exists()
    assert (workdir / "logs" / "log_0").read_text() == "setting up\n"


def test_volumes_modules_entrypoint_and_a_removed_temporary_workdir(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _define(
        taskfarmer_home,
        f"""
        [full]
        Runner = ShifterRunner
        image = custom:my-image
        volumes = /global/cfs/data:/data:ro "{tmp_path}/with space:/work"
        modules = cvmfs,gpu
        entrypoint = true
        tempdir = {scratch}
        """,
    )
    out = tmp_path / "out"
    commands = [f'echo "$PWD|$FAKE_SHIFTER_MODULES|$FAKE_SHIFTER_VOLUMES" >> {out}' for _ in range(3)]
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", commands), "-r", "full", "-n", "2")
    assert result.returncode == 0, result.stderr
    runs = _task_runs(engine_log)
    assert len(runs) == 3
    workdirs = []
    for argv in runs:
        workdir = argv[7].removeprefix("--workdir=")
        workdirs.append(workdir)
        assert argv == [
            "shifter",
            "--image=custom:my-image",
            "-V",
            "/global/cfs/data:/data:ro",
            "-V",
            f"{tmp_path}/with space:/work",
            "--module=cvmfs,gpu",
            f"--workdir={workdir}",
            "--entrypoint",
            "--",
            "/bin/bash",
            "-c",
            commands[0],
        ]
        assert Path(workdir).parent == scratch
    assert len(set(workdirs)) == 3  # one per task
    seen = sorted(line.split("|") for line in lines(out))
    assert seen == sorted([w, "cvmfs,gpu", f"/global/cfs/data:/data:ro {tmp_path}/with space:/work"] for w in workdirs)
    assert list(scratch.iterdir()) == []  # every temporary workdir was removed


def test_a_task_that_fails_in_the_container_is_recorded(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path
) -> None:
    _define(taskfarmer_home, "[s]\nRunner = ShifterRunner\nimage = ubuntu\n")
    tasklist = write_tasklist(tmp_path / "tasks.txt", ["exit 3", "true"])
    result = run_farmer(tasklist, "-r", "s", "-n", "2")
    assert result.returncode == 1
    workdir = tmp_path / "tasks.txt_workdir"
    assert lines(workdir / "failed") == ["0 exit:3 exit 3"]
    assert ids(workdir / "finished") == [1]
    assert len(_task_runs(engine_log)) == 2


ADVICE = "Load the module that provides it, or pick another runner with --runner."


def _assert_refused(stderr: str, returncode: int, expected: str) -> None:
    """One line on stderr, no traceback, exit status 2; the message without the runner's label must match."""
    assert returncode == 2
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.strip().replace(" [mcc]", "") == expected


def _no_shifter_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")
    if shutil.which("shifter") is not None:
        pytest.skip("a real shifter is on /usr/bin or /bin")


def test_missing_shifter_is_one_clear_error_and_nothing_runs(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_shifter_on_path(tmp_path, monkeypatch)
    _define(taskfarmer_home, f"[mcc]\nRunner = ShifterRunner\nimage = {MCC}\n")
    marker = tmp_path / "ran"
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"touch {marker}"])
    result = run_farmer(tasklist, "-r", "mcc")
    expected = (
        f"pytaskfarmer: error: The shifter runner needs the 'shifter' executable, but it is not on PATH. {ADVICE}"
    )
    _assert_refused(result.stderr, result.returncode, expected)
    assert not marker.exists()
    assert not (tmp_path / "tasks.txt_workdir").exists()


def test_the_error_names_the_runner(tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_shifter_on_path(tmp_path, monkeypatch)
    _define(taskfarmer_home, f"[mcc]\nRunner = ShifterRunner\nimage = {MCC}\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "mcc")
    assert "The shifter runner [mcc] needs the 'shifter' executable" in result.stderr


@pytest.mark.timeout(60)
def test_a_hanging_shifter_probe_is_refused_within_the_probe_timeout(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    started = tmp_path / "probe-started"
    fake = write_script(bin_dir / "shifter", f"touch {started}\nsleep 300\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _define(taskfarmer_home, f"[mcc]\nRunner = ShifterRunner\nimage = {MCC}\nprobe_timeout = 1.5\n")
    marker = tmp_path / "ran"
    begin = time.monotonic()
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", [f"touch {marker}"]), "-r", "mcc", timeout=30)
    elapsed = time.monotonic() - begin
    expected = (
        f"pytaskfarmer: error: The shifter runner needs the 'shifter' executable, but {fake} does not work"
        f" ('shifter --help' did not answer within 1.5 s). {ADVICE}"
    )
    _assert_refused(result.stderr, result.returncode, expected)
    assert started.exists()
    assert elapsed < 1.5 + 10  # the probe's deadline plus the farmer's start-up, not the fake's 300 s
    assert not marker.exists()
    assert not (tmp_path / "tasks.txt_workdir").exists()


def test_a_failing_shifter_probe_is_refused(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    fake = write_script(bin_dir / "shifter", "echo 'shifter: error while loading shared libraries' >&2\nexit 127\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _define(taskfarmer_home, "[mcc]\nRunner = ShifterRunner\nimage = ubuntu\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "mcc")
    expected = (
        f"pytaskfarmer: error: The shifter runner needs the 'shifter' executable, but {fake} does not work"
        f" ('shifter --help' exited with status 127: shifter: error while loading shared libraries). {ADVICE}"
    )
    _assert_refused(result.stderr, result.returncode, expected)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("volumes = /data", "volume '/data' is not /host/path:/container/path[:ro]"),
        ("volumes = /x:/etc/x", "Shifter cannot mount on /etc/x"),
        ("modules = none cvmfs", "'none' turns every module off"),
        ("entrypoint = maybe", "option 'entrypoint' = 'maybe': not a boolean"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, option: str, message: str
) -> None:
    _define(taskfarmer_home, f"[s]\nRunner = ShifterRunner\nimage = ubuntu\n{option}\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "s")
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert calls(engine_log) == []


def _example_sections(name: str) -> list[tuple[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO / "runners.d.example" / name)
    return [(section, parser[section]["Runner"]) for section in parser.sections()]


@pytest.mark.parametrize("section", [section for section, _ in _example_sections("shifter.ini")])
def test_the_example_definitions_load(taskfarmer_home: Path, section: str) -> None:
    shutil.copy(REPO / "runners.d.example" / "shifter.ini", taskfarmer_home / "runners.d")
    runner, _ = config.build_runner(config.runner_catalog().get(section))
    assert isinstance(runner, ShifterRunner)
    assert runner.command("true")[1].startswith("--image=docker:")
