from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from taskfarmer.runners import BasicRunner
from taskfarmer.tasklist import TaskList, TemplateTaskList

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("true", ["true"]),
        ("python3 run.py --seed 5 out/file_3.root", ["python3", "run.py", "--seed", "5", "out/file_3.root"]),
        ("echo $PROC_NUMBER", ["bash", "-c", "echo $PROC_NUMBER"]),
        ("a | b", ["bash", "-c", "a | b"]),
        ("prog 'quoted arg'", ["bash", "-c", "prog 'quoted arg'"]),
        ("cd /tmp", ["bash", "-c", "cd /tmp"]),
        ("exit 3", ["bash", "-c", "exit 3"]),
        ("X=1 prog", ["bash", "-c", "X=1 prog"]),
        ("ls *.root", ["bash", "-c", "ls *.root"]),
        ("prog # comment", ["bash", "-c", "prog # comment"]),
    ],
)
def test_basic_runner_argv(line: str, argv: list[str]) -> None:
    runner = BasicRunner()
    assert runner.command(runner.script(line)) == argv


def test_setup_runs_first_and_guards_the_task() -> None:
    runner = BasicRunner(setup="source env.sh && module load x")
    assert runner.command(runner.script("a || b")) == [
        "bash",
        "-c",
        "{ source env.sh && module load x\n} || exit $?\na || b",
    ]


def _run(runner: BasicRunner, command: str, log: Path) -> int:
    with log.open("w") as handle:
        return runner.run(7, command, handle)


def test_run_returns_the_status_and_logs_the_output(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert _run(BasicRunner(), "echo out; echo err >&2; exit 4", log) == 4
    assert log.read_text() == "out\nerr\n"
    assert _run(BasicRunner(), "no-such-program-xyz", log) == 127
    assert "no-such-program-xyz" in log.read_text()


def test_a_failing_setup_fails_the_task_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    assert _run(BasicRunner(setup="false"), f"touch {marker}", tmp_path / "log") == 1
    assert not marker.exists()
    assert _run(BasicRunner(setup="X=hello"), f"echo $X > {marker}", tmp_path / "log") == 0
    assert marker.read_text() == "hello\n"


def test_variables_and_tempdir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    runner = BasicRunner(variables={"GREETING": "hi"}, tempdir=str(tmp_path))
    assert _run(runner, f"echo $GREETING $PWD > {out}", tmp_path / "log") == 0
    greeting, cwd = out.read_text().split()
    assert greeting == "hi"
    assert cwd.startswith(str(tmp_path / "taskfarmer-7-"))
    assert not (tmp_path / cwd).exists()  # removed after the task


@pytest.mark.timeout(30)
def test_terminate_kills_the_whole_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    runner = BasicRunner(grace=1.0)
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            _run(runner, f"sleep 60 & setsid sleep 60 & echo $! >> {pidfile}; wait", tmp_path / "log")
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    # The redirection creates the file before echo writes to it: wait for its line, not for the file.
    while not (pidfile.exists() and pidfile.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.01)
    escaped = int(pidfile.read_text())
    assert runner.terminate() is True
    thread.join(10)
    assert result[0] < 0  # killed by a signal
    assert not psutil.pid_exists(escaped) or psutil.Process(escaped).status() == psutil.STATUS_ZOMBIE
    assert runner.terminate() is False


def test_default_handler_and_template_placeholders() -> None:
    assert TaskList().command("echo hi", taskid=1) == "echo hi"
    template = TemplateTaskList(command="proc {} -o out/{/.}.root --dir {//} --ext {.} --id {#} --base {/}")
    assert template.command("/data/run 1/f.slcio", taskid=12) == (
        "proc '/data/run 1/f.slcio' -o out/f.root --dir '/data/run 1' --ext '/data/run 1/f' --id 12 --base f.slcio"
    )


def test_template_without_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match="no placeholder"):
        TemplateTaskList(command="Marlin steer.xml")
