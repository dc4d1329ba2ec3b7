"""The command line on real tasklists: what a user runs and what they find in the work directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from taskfarmer.cli import main, pytaskfarmer_main
from tests.helpers import cleanup, ids, lines, run_farmer, start_farmer, wait_for, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def _recording_tasks(out: Path, count: int) -> list[str]:
    return [f"echo $PROC_NUMBER >> {out}" for _ in range(count)]


def test_every_task_runs_exactly_once_with_ids_as_line_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    commands = _recording_tasks(out, 200)
    commands[10:10] = ["", "# a comment", "   "]  # not tasks; their line numbers still count
    tasklist = write_tasklist(tmp_path / "tasks.txt", commands)
    result = run_farmer(tasklist, "-n", "4")
    assert result.returncode == 0, result.stderr
    expected = [i for i in range(203) if i not in (10, 11, 12)]
    assert sorted(int(x) for x in lines(out)) == expected
    workdir = tmp_path / "tasks.txt_workdir"
    assert sorted(ids(workdir / "finished")) == expected
    assert lines(workdir / "toprocess") == []
    assert lines(workdir / "failed") == []
    assert list((workdir / "logs").iterdir()) == []  # the tasks printed nothing: no empty log files
    assert "200 finished, 0 failed, 0 left" in result.stderr
    assert list((workdir / "running").iterdir()) == []
    assert list((workdir / "farmers").iterdir()) == []


def test_in_process_run_with_full_shell_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasklist = write_tasklist(
        tmp_path / "t.txt",
        [
            "echo 'a  b' | tr a-z A-Z > " + str(tmp_path / "pipe"),
            f"true && echo and > {tmp_path / 'and'} || echo or > {tmp_path / 'or'}",
            f"for i in 1 2 3; do echo $i; done > {tmp_path / 'loop'}",
        ],
    )
    before = signal.getsignal(signal.SIGTERM)
    assert pytaskfarmer_main(["-n", "2", "-q", str(tasklist)]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert (tmp_path / "pipe").read_text() == "A  B\n"
    assert (tmp_path / "and").read_text() == "and\n"
    assert not (tmp_path / "or").exists()
    assert (tmp_path / "loop").read_text() == "1\n2\n3\n"
    assert "3 finished" in capsys.readouterr().err


def test_failures_are_recorded_with_their_status_and_the_exit_status_says_so(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "exit 3", "kill -9 $$", "no-such-command-xyz", "echo ok"])
    result = run_farmer(tasklist, "-n", "2")
    assert result.returncode == 1
    workdir = tmp_path / "t.txt_workdir"
    assert sorted(lines(workdir / "failed")) == [
        "1 exit:3 exit 3",
        "2 signal:SIGKILL kill -9 $$",
        "3 exit:127 no-such-command-xyz",
    ]
    assert sorted(ids(workdir / "finished")) == [0, 4]
    assert "command not found" in (workdir / "logs" / "log_3").read_text()
    assert "3 tasks failed" in result.stderr


def test_restart_runs_only_appended_tasks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tasklist = write_tasklist(tmp_path / "t.txt", [*_recording_tasks(out, 5), "exit 1"])
    assert run_farmer(tasklist, "-n", "2").returncode == 1
    again = run_farmer(tasklist, "-n", "2")
    assert again.returncode == 1  # the failed task stays failed and is not run again
    assert sorted(int(x) for x in lines(out)) == [0, 1, 2, 3, 4]
    with tasklist.open("a") as handle:
        handle.write(f"echo $PROC_NUMBER >> {out}\n\necho $PROC_NUMBER >> {out}\n")
    third = run_farmer(tasklist, "-n", "2")
    assert sorted(int(x) for x in lines(out)) == [0, 1, 2, 3, 4, 6, 8]
    assert third.returncode == 1
    assert sorted(ids(tmp_path / "t.txt_workdir" / "finished")) == [0, 1, 2, 3, 4, 6, 8]


def test_a_tasklist_whose_last_line_had_no_newline_gets_one_then_new_lines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tasklist = tmp_path / "t.txt"
    tasklist.write_text(f"echo $PROC_NUMBER >> {out}\necho $PROC_NUMBER >> {out}")  # as some editors save it
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 0
    with tasklist.open("a") as handle:
        handle.write("\n")  # the newline alone, as an editor adds it
    again = run_farmer(tasklist, "-n", "1", "-q")
    assert again.returncode == 0, again.stderr
    with tasklist.open("a") as handle:
        handle.write(f"echo $PROC_NUMBER >> {out}\n")
    third = run_farmer(tasklist, "-n", "1", "-q")
    assert third.returncode == 0, third.stderr
    assert sorted(int(x) for x in lines(out)) == [0, 1, 2]
    with tasklist.open("a") as handle:
        handle.write(f"echo $PROC_NUMBER >> {out}")  # no newline again, then a newline and a line at once
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 0
    with tasklist.open("a") as handle:
        handle.write(f"\necho $PROC_NUMBER >> {out}\n")
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 0
    assert sorted(int(x) for x in lines(out)) == [0, 1, 2, 3, 4]


def test_a_stopped_task_reruns_first_and_keeps_both_logs(tmp_path: Path) -> None:
    marker = tmp_path / "first-attempt"
    tasklist = write_tasklist(
        tmp_path / "t.txt",
        [f"if [ -e {marker} ]; then echo second; else touch {marker}; echo first; sleep 60; fi", "echo other"],
    )
    stopped = run_farmer(tasklist, "-n", "1", "--timeout", "2", "--grace", "1")
    assert stopped.returncode == 3, stopped.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert lines(workdir / "toprocess") == [
        "1 echo other",
        f"0@2 if [ -e {marker} ]; then echo second; else touch {marker}; echo first; sleep 60; fi",
    ]
    assert run_farmer(tasklist, "-n", "1").returncode == 0
    assert (workdir / "logs" / "log_0").read_text() == "first\n"
    assert (workdir / "logs" / "log_0.2").read_text() == "second\n"
    assert ids(workdir / "finished") == [0, 1]  # the returned task ran before the next one


def test_timeline_is_valid_chrome_trace_json(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "sleep 0.1", "false"])
    run_farmer(tasklist, "-n", "2")
    events = json.loads((tmp_path / "t.txt_workdir" / "timeline.json").read_text())
    tasks = sorted((e for e in events if e["ph"] == "X"), key=lambda e: e["args"]["task"])
    assert [(e["args"]["task"], e["args"]["status"]) for e in tasks] == [(0, "ok"), (1, "ok"), (2, "exit:1")]
    assert tasks[1]["dur"] >= 100_000
    assert all({"ts", "pid", "tid", "name"} <= e.keys() for e in tasks)
    assert any(e["ph"] == "M" and e["name"] == "process_name" for e in events)


def test_environment_of_a_task(tmp_path: Path) -> None:
    out = tmp_path / "env"
    tasklist = write_tasklist(
        tmp_path / "t.txt",
        [
            (
                "echo $PROC_NUMBER $TASKFARMER_TASK_ID $TASKFARMER_ATTEMPT $TASKFARMER_WORKER"
                f" $TASKFARMER_WORKDIR $TASKFARMER_LOG > {out}"
            )
        ],
    )
    assert run_farmer(tasklist, "-n", "1").returncode == 0
    workdir = (tmp_path / "t.txt_workdir").resolve()
    assert out.read_text().split() == ["0", "0", "1", "0", str(workdir), str(workdir / "logs" / "log_0")]


def test_template_tasklist_handler_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "handlers.ini").write_text(
        textwrap.dedent(
            """
            [files]
            TaskList = TemplateTaskList
            command = wc -c < {} > {}.count
            """
        )
    )
    inputs = []
    for name in ("a.dat", "b c.dat"):
        (tmp_path / name).write_text("x" * len(name))
        inputs.append(str(tmp_path / name))
    tasklist = write_tasklist(tmp_path / "files.txt", inputs)
    result = run_farmer(tasklist, "-t", "files", "-n", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.dat.count").read_text().strip() == "5"
    assert (tmp_path / "b c.dat.count").read_text().strip() == "7"


def test_runner_setup_and_variables_from_the_ini(tmp_path: Path, taskfarmer_home: Path) -> None:
    (tmp_path / "env.sh").write_text("export FROM_SETUP=yes\n")
    (taskfarmer_home / "runners.d" / "site.ini").write_text(
        f"[site]\nRunner = BasicRunner\nsetup = source {tmp_path / 'env.sh'}\nvariables = SITE=nersc\n"
    )
    out = tmp_path / "out"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"echo $FROM_SETUP $SITE > {out}"])
    assert run_farmer(tasklist, "-r", "site").returncode == 0
    assert out.read_text() == "yes nersc\n"


def test_pytaskfarmer_style_runner_works_unchanged(tmp_path: Path, taskfarmer_home: Path) -> None:
    (tmp_path / "oldrunners.py").write_text(
        textwrap.dedent(
            """
            import os, subprocess
            from taskfarmer.runners import Runner

            class EchoRunner(Runner):
                def __init__(self, prefix=''):
                    super().__init__()
                    self.prefix = prefix
                    self.execute = None

                def run(self, taskid, command, logfh):
                    my_env = os.environ
                    my_env['PROC_NUMBER'] = str(taskid)
                    argv = ['bash', '-c', self.prefix + command]
                    self.execute = subprocess.Popen(argv, stdout=logfh, stderr=logfh, env=my_env)
                    self.execute.communicate()
                    return self.execute.returncode

                def terminate(self):
                    if self.execute is not None:
                        self.execute.kill()
            """
        )
    )
    (taskfarmer_home / "runners.d" / "old.ini").write_text(
        "[old]\nRunner = oldrunners.EchoRunner\nprefix = echo legacy;\n"
    )
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo $PROC_NUMBER", "exit 2"])
    result = run_farmer(tasklist, "-r", "old", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert (workdir / "logs" / "log_0").read_text() == "legacy\n0\n"
    assert lines(workdir / "failed") == ["1 exit:2 exit 2"]


def test_verbose_shows_each_task(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "false"])
    quiet = run_farmer(tasklist, "-w", str(tmp_path / "w1"))
    verbose = run_farmer(tasklist, "-v", "-w", str(tmp_path / "w2"))
    assert "task 0 started" not in quiet.stderr
    assert "task 0 started (attempt 1): true" in verbose.stderr
    assert "task 1 exit:1" in verbose.stderr


def test_status_and_runners_commands(tmp_path: Path, taskfarmer_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "exit 5", "sleep 60"])
    farmer = start_farmer(tasklist, "-n", "3")
    workdir = tmp_path / "t.txt_workdir"
    with cleanup(farmer):
        wait_for(lambda: len(ids(workdir / "finished")) + len(ids(workdir / "failed")) == 2, what="two tasks done")
        wait_for(lambda: any(p.stat().st_size for p in (workdir / "running").iterdir()), what="sleep running")
        assert main(["status", str(workdir)]) == 0
        status = capsys.readouterr().out
        assert "3 tasks: 1 finished, 1 failed, 1 running, 0 to process" in status
        assert "task 1 (exit:5)" in status
        assert "running  task 2" in status
        assert "farmer" in status
        os.kill(farmer.pid, signal.SIGTERM)
        assert farmer.wait(timeout=30) == 3
    (taskfarmer_home / "runners.d" / "x.ini").write_text("[mine]\nRunner = BasicRunner\n")
    assert main(["runners"]) == 0
    listing = capsys.readouterr().out
    assert "default" in listing
    assert "mine" in listing
    assert "x.ini" in listing
    assert main(["status", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("t.txt", "t.txt has no work directory beside it (t.txt_workdir: give the one its farmers used, -w)."),
        ("nosuch", "nosuch does not exist (give a work directory, or the tasklist it was made for)."),
        (".", ". is not a pytaskfarmer work directory (it has no toprocess file)."),
    ],
)
def test_a_command_given_no_work_directory_says_what_it_was_given(
    tmp_path: Path, given: str, said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tasklist(tmp_path / "t.txt", ["true"])
    monkeypatch.chdir(tmp_path)
    for command in (["status"], ["log"], ["failed"], ["requeue"]):
        assert main([*command, given, *(["0"] if command == ["log"] else [])]) == 2
        assert capsys.readouterr().err == f"pytaskfarmer: error: {said}\n"
    assert not (tmp_path / "t.txt_workdir").exists()  # nothing made


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "taskfarmer", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "run" in result.stdout
    assert "status" in result.stdout


def test_workers_that_keep_dying_stop_the_farmer_with_its_own_status(tmp_path: Path, taskfarmer_home: Path) -> None:
    (tmp_path / "dyingrunner.py").write_text(
        "import os\n"
        "from taskfarmer.runners import Runner\n"
        "class Dying(Runner):\n"
        "    def run(self, taskid, command, logfh):\n"
        "        os._exit(9)\n"
    )
    (taskfarmer_home / "runners.d" / "d.ini").write_text("[dying]\nRunner = dyingrunner.Dying\n")
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"] * 3)
    result = run_farmer(tasklist, "-r", "dying", "-n", "1", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 4, result.stderr
    assert "workers keep dying" in result.stderr
    assert "Fix what kills them" in result.stderr  # status 4: something to mend before running again
    assert "which is gone" not in result.stderr  # its own worker died, no other farmer
    assert sorted(ids(tmp_path / "t.txt_workdir" / "toprocess")) == [0, 1, 2]  # nothing lost


@pytest.mark.parametrize(
    ("flag", "verbose"), [(["-v", "True"], True), (["-v", "1"], True), (["--verbose", "False"], False)]
)
def test_pytaskfarmers_verbose_with_a_value_is_accepted(tmp_path: Path, flag: list[str], verbose: bool) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo hi"])
    result = run_farmer(tasklist, *flag, "-n", "1")
    assert result.returncode == 0, result.stderr
    assert ("task 0 started" in result.stderr) is verbose


def test_taskfarmer_alone_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: taskfarmer" in capsys.readouterr().err


def test_pytaskfarmers_numbering_counts_task_lines_only(tmp_path: Path) -> None:
    tasklist = tmp_path / "t.txt"
    tasklist.write_text("# header\necho $PROC_NUMBER\n\necho $PROC_NUMBER\n")
    result = run_farmer(tasklist, "-n", "1", "-q", "--numbering", "tasks")
    assert result.returncode == 0, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert sorted(ids(workdir / "finished")) == [0, 1]
    assert sorted((workdir / "logs" / f"log_{i}").read_text() for i in (0, 1)) == ["0\n", "1\n"]
    with tasklist.open("a") as handle:
        handle.write("# more\necho $PROC_NUMBER\n")
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 0  # appended lines keep counting tasks
    assert sorted(ids(workdir / "finished")) == [0, 1, 2]
    refused = run_farmer(tasklist, "-n", "1", "-q", "--numbering", "lines")
    assert refused.returncode == 2
    assert "numbers its tasks by tasks, not by lines" in refused.stderr
