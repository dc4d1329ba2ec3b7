"""Operating a farm from outside: status of a busy workdir, drain, requeue, appended tasks, logs in both modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from taskfarmer.cli import main
from taskfarmer.store import WorkDir
from tests.helpers import (
    LONG,
    cleanup,
    farmer_argv,
    ids,
    lines,
    run_farmer,
    start_farmer,
    wait_for,
    write_tasklist,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def _running(workdir: Path) -> list[int]:
    if not (workdir / "running").exists():
        return []
    return [r.task for r in WorkDir(workdir).running_tasks()]


def _status_json(workdir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["status", "--json", str(workdir)]) == 0
    report: dict[str, object] = json.loads(capsys.readouterr().out)
    return report


def _farmer_states(workdir: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    farmers = _status_json(workdir, capsys)["farmers"]
    assert isinstance(farmers, list)
    return [str(farmer["state"]) for farmer in farmers]


def test_status_while_two_farmers_run_and_one_is_killed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo four; exit 4", *["sleep 30"] * 6])
    workdir = tmp_path / "t.txt_workdir"
    first = start_farmer(tasklist, "-n", "2")
    with cleanup(first):
        wait_for(lambda: len(_running(workdir)) == 2 and len(lines(workdir / "failed")) == 1, what="farmer 1 busy")
        second = start_farmer(tasklist, "-n", "2")
        with cleanup(second):
            wait_for(lambda: len(_running(workdir)) == 4, what="both farmers busy")
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=LONG)
            report = _status_json(workdir, capsys)
            assert report["tasks"] == {
                "total": 7,
                "toprocess": 2,
                "claimed": 0,
                "running": 4,
                "finished": 0,
                "failed": 1,
            }
            failed = report["failed"]
            assert isinstance(failed, list)
            assert failed[0]["status"] == "exit:4"
            assert failed[0]["log"].endswith("logs/log_0")
            running = report["running"]
            assert isinstance(running, list)
            assert {r["host"] for r in running} == {os.environ.get("SLURMD_NODENAME") or os.uname().nodename}
            farmers = report["farmers"]
            assert isinstance(farmers, list)
            states = sorted(str(f["state"]) for f in farmers)
            assert states == ["alive", "dead (process gone)"]
            assert main(["status", str(workdir)]) == 0
            text = capsys.readouterr().out
            assert "7 tasks: 0 finished, 1 failed, 4 running, 2 to process" in text
            assert "dead (process gone)" in text
            os.kill(second.pid, signal.SIGTERM)
            assert second.wait(timeout=LONG) == 3
    # The stopped farmer also gave back the tasks of the dead one: nothing is lost.
    assert sorted(ids(workdir / "toprocess")) == [1, 2, 3, 4, 5, 6]


def test_drain_lets_running_tasks_finish_and_claims_no_more(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate = tmp_path / "gate"
    done = tmp_path / "done"
    task = f"while [ ! -e {gate} ]; do sleep 0.05; done; echo $PROC_NUMBER >> {done}"
    tasklist = write_tasklist(tmp_path / "t.txt", [task] * 6)
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "2")
    with cleanup(farmer):
        wait_for(lambda: len(_running(workdir)) == 2, what="two tasks running")
        assert main(["drain", str(workdir)]) == 0
        assert "created" in capsys.readouterr().out
        wait_for(lambda: _farmer_states(workdir, capsys) == ["alive, draining"], what="the farmer to see the drain")
        gate.touch()  # the running tasks may finish now; they must not be killed
        _, stderr = farmer.communicate(timeout=LONG)
    assert farmer.returncode == 3, stderr
    assert "drained" in stderr
    assert sorted(int(x) for x in lines(done)) == [0, 1]
    assert sorted(ids(workdir / "toprocess")) == [2, 3, 4, 5]
    assert run_farmer(tasklist).returncode == 3  # still draining: a new farmer claims nothing
    assert sorted(int(x) for x in lines(done)) == [0, 1]
    assert main(["drain", "--cancel", str(workdir)]) == 0
    assert run_farmer(tasklist, "-n", "2").returncode == 0
    assert sorted(int(x) for x in lines(done)) == list(range(6))


def test_sigusr2_drains_one_farmer(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 1"] * 6)
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "1")
    with cleanup(farmer):
        wait_for(lambda: len(_running(workdir)) == 1, what="a task running")
        os.kill(farmer.pid, signal.SIGUSR2)
        assert farmer.wait(timeout=LONG) == 3
        stderr = farmer.stderr.read() if farmer.stderr else ""
    assert "SIGUSR2: finishing the running tasks, claiming no more" in stderr
    assert "drained (SIGUSR2): 5 tasks left. Run the same command again to go on." in stderr
    assert "drain exists" not in stderr  # no drain file was made: none to remove
    assert len(ids(workdir / "finished")) == 1
    assert len(ids(workdir / "toprocess")) == 5


def test_requeue_failed_tasks_by_status_and_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flag = tmp_path / "fixed"
    tasklist = write_tasklist(
        tmp_path / "t.txt", [f"[ -e {flag} ] || exit 3", f"[ -e {flag} ] || exit 4", f"[ -e {flag} ] || exit 3", "true"]
    )
    workdir = tmp_path / "t.txt_workdir"
    assert run_farmer(tasklist).returncode == 1
    flag.touch()
    assert main(["requeue", "--status", "exit:3", "--id", "0", str(workdir)]) == 0
    assert "1 failed task." in capsys.readouterr().out
    assert ids(workdir / "toprocess") == [0]
    failed_order = ids(workdir / "failed")
    assert sorted(failed_order) == [1, 2]
    assert main(["requeue", "--status", "exit:*", str(workdir)]) == 0
    assert ids(workdir / "toprocess") == [0, *reversed(failed_order)]  # the first of them on top: it runs first
    assert lines(workdir / "toprocess")[0].startswith("0@2 ")  # the next attempt of each
    assert run_farmer(tasklist).returncode == 0
    assert sorted(ids(workdir / "finished")) == [0, 1, 2, 3]
    assert main(["requeue", str(tmp_path)]) == 2  # not a work directory: one clear line


@pytest.mark.parametrize("mode", ["files", "stream"])
def test_a_requeued_task_runs_as_its_next_attempt(
    tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "attempts"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"echo $TASKFARMER_ATTEMPT >> {record}; exit 5"])
    workdir = tmp_path / "t.txt_workdir"
    assert run_farmer(tasklist, "-n", "1", "--retries", "1", "--logs", mode).returncode == 1
    assert main(["requeue", str(workdir)]) == 0
    assert run_farmer(tasklist, "-n", "1", "--logs", mode).returncode == 1
    assert lines(record) == ["1", "2", "3"]  # the task printed nothing: no log file told the attempts apart
    rows = [line.split("\t") for line in lines(workdir / "accounting.tsv")[1:]]
    assert [row[1] for row in rows] == ["1", "2", "3"]
    capsys.readouterr()
    assert main(["log", "--attempt", "3", str(workdir), "0"]) == 0


def test_requeue_the_tasks_of_a_farmer_known_lost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 60"] * 2)
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "2", "--lease", "3600", env={"SLURMD_NODENAME": "lostnode"})
    with cleanup(farmer):
        wait_for(lambda: len(_running(workdir)) == 2, what="two tasks running")
        name = next(p.name for p in (workdir / "farmers").iterdir())
        # A lost node: its farmer is frozen, not dead; only the user knows it will not come back.
        os.killpg(farmer.pid, signal.SIGSTOP)
        assert main(["requeue", "--farmer", name, str(workdir)]) == 2  # its heartbeat is fresh: it looks alive
        assert "it looks alive, and its tasks would run twice" in capsys.readouterr().err
        assert sorted(ids(workdir / "toprocess")) == []
        assert main(["requeue", "--farmer", name, "--force", str(workdir)]) == 0
        assert f"2 tasks of farmer {name}" in capsys.readouterr().out
        assert sorted(ids(workdir / "toprocess")) == [0, 1]
        assert _running(workdir) == []
        os.killpg(farmer.pid, signal.SIGKILL)


def test_tasks_appended_while_a_farmer_runs_are_picked_up(tmp_path: Path) -> None:
    done = tmp_path / "done"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"sleep 0.3; echo $PROC_NUMBER >> {done}"] * 3)
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "1")
    with cleanup(farmer):
        wait_for(lambda: len(lines(done)) >= 1, what="the first task done")
        with tasklist.open("a") as handle:
            handle.write(f"\necho $PROC_NUMBER >> {done}\necho $PROC_NUMBER >> {done}\n")
        assert farmer.wait(timeout=LONG) == 0
    assert sorted(int(x) for x in lines(done)) == [0, 1, 2, 4, 5]
    assert sorted(ids(workdir / "finished")) == [0, 1, 2, 4, 5]


def test_requeue_refuses_the_tasks_of_a_farmer_alive_on_this_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 60"])
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "--grace", "0")
    with cleanup(farmer):
        wait_for(lambda: len(_running(workdir)) == 1, what="a task running")
        name = next(p.name for p in (workdir / "farmers").iterdir())
        assert main(["requeue", "--farmer", name, "--force", str(workdir)]) == 2
        assert f"is alive on this host (PID {farmer.pid}): stop it" in capsys.readouterr().err
        assert len(_running(workdir)) == 1  # its task stays its own
    assert main(["requeue", "--force", str(workdir)]) == 2
    assert "--force goes with --farmer" in capsys.readouterr().err


def test_a_tasklist_edited_while_a_farmer_runs_is_not_reported_done(tmp_path: Path) -> None:
    done = tmp_path / "done"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"sleep 1; echo $PROC_NUMBER >> {done}"] * 3)
    farmer = start_farmer(tasklist, "-n", "1")
    with cleanup(farmer):
        wait_for(lambda: len(lines(done)) >= 1, what="the first task done")
        tasklist.write_text(f"echo edited\n{tasklist.read_text()}echo appended >> {done}\n")
        _, stderr = farmer.communicate(timeout=LONG)
    assert farmer.returncode == 2, stderr  # 0 said the list was done, though its new line never ran
    assert "lines added to the tasklist while it ran were not taken in: Tasklist" in stderr
    assert stderr.count("not taking in new tasklist lines") == 1  # said once, not at every claim
    assert "appended" not in lines(done)


@pytest.mark.parametrize("mode", ["files", "stream"])
def test_log_command_prints_a_tasks_output_in_both_modes(
    tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = [f"echo out of $PROC_NUMBER; echo err of $PROC_NUMBER >&2; exit {i % 2}" for i in range(40)]
    tasklist = write_tasklist(tmp_path / "t.txt", tasks)
    workdir = tmp_path / "t.txt_workdir"
    assert run_farmer(tasklist, "-n", "3", "--logs", mode, "--retries", "1").returncode == 1
    capsys.readouterr()
    for taskid in (0, 7, 39):
        result = subprocess.run(
            [sys.executable, "-m", "taskfarmer", "log", str(workdir), str(taskid)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"out of {taskid}\nerr of {taskid}\n"
    assert main(["log", "--attempt", "2", str(workdir), "7"]) == 0
    assert capsys.readouterr().out == "out of 7\nerr of 7\n"
    files = sorted(p.name for p in (workdir / "logs").iterdir())
    if mode == "stream":
        assert len(files) <= 3  # one per worker, whatever the number of tasks
        assert all(name.startswith("stream.") for name in files)
    else:
        assert len(files) == 40 + 20  # one per attempt: the 20 odd tasks ran twice
    assert main(["log", str(workdir), "99"]) == 2


def test_a_running_task_has_its_log_file_and_a_silent_one_leaves_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = tmp_path / "gate"
    tasks = ["true", f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo done", "exit 3", "echo last"]
    tasklist = write_tasklist(tmp_path / "t.txt", tasks)
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "1")
    with cleanup(farmer):
        log = workdir / "logs" / "log_1"
        wait_for(lambda: log.exists() and log.read_text() == "started\n", what="task 1's output in its log")
        assert sorted(p.name for p in (workdir / "logs").iterdir()) == ["log_1"]  # task 0 printed nothing
        gate.touch()
        _, stderr = farmer.communicate(timeout=LONG)
        assert farmer.returncode == 1, stderr
        assert "task 2 failed (exit:3), log: none (no output)" in stderr
    assert sorted(p.name for p in (workdir / "logs").iterdir()) == ["log_1", "log_3"]
    assert log.read_text() == "started\ndone\n"
    rows = [line.split("\t") for line in lines(workdir / "accounting.tsv")[1:]]
    assert sorted((row[0], row[-1]) for row in rows) == [("0", ""), ("1", "logs/log_1"), ("2", ""), ("3", "logs/log_3")]
    capsys.readouterr()
    assert main(["log", str(workdir), "2"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["status", str(workdir)]) == 0
    assert "failed   task 2 (exit:3): exit 3  log: no output" in capsys.readouterr().out
    failed = _status_json(workdir, capsys)["failed"]
    assert isinstance(failed, list)
    assert [(entry["task"], entry["log"]) for entry in failed] == [(2, "")]


@pytest.mark.timeout(60)
def test_a_stop_leaves_no_empty_log_file_and_keeps_the_output_of_a_task_that_printed(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    tasks = [f"touch {ready}.0; sleep 30", f"echo half; touch {ready}.1; sleep 30"]
    tasklist = write_tasklist(tmp_path / "t.txt", tasks)
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "2")
    with cleanup(farmer):
        wait_for(lambda: ready.with_suffix(".0").exists() and ready.with_suffix(".1").exists(), what="both started")
        os.killpg(farmer.pid, signal.SIGTERM)
        farmer.communicate(timeout=LONG)
    assert farmer.returncode == 3
    assert sorted(p.name for p in (workdir / "logs").iterdir()) == ["log_1"]
    assert (workdir / "logs" / "log_1").read_text() == "half\n"
    rows = [line.split("\t") for line in lines(workdir / "accounting.tsv")[1:]]
    assert sorted((row[0], row[2], row[-1]) for row in rows) == [("0", "stopped", ""), ("1", "stopped", "logs/log_1")]


@pytest.mark.timeout(60)
def test_the_output_of_a_stopped_task_in_stream_mode_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ready = tmp_path / "ready"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"echo half; touch {ready}; sleep 30"])
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "1", "--logs", "stream")
    with cleanup(farmer):
        wait_for(ready.exists, what="the task started")
        os.killpg(farmer.pid, signal.SIGTERM)
        farmer.communicate(timeout=LONG)
    assert farmer.returncode == 3
    row = lines(workdir / "accounting.tsv")[1].split("\t")
    assert (row[2], row[-1].rpartition("+")[2]) == ("stopped", "5")  # "half\n", not the empty span of its start
    capsys.readouterr()
    assert main(["log", "--attempt", "1", str(workdir), "0"]) == 0
    assert capsys.readouterr().out == "half\n"


@pytest.mark.timeout(60)
def test_a_farmer_that_sees_an_older_toprocess_than_recorded_stops_with_one_line(tmp_path: Path) -> None:
    # Tasks long enough that the first farmer, stopped at once, leaves them all in the queue (workers start fast).
    tasklist = write_tasklist(tmp_path / "t.txt", [f"sleep 0.5; echo {i}" for i in range(6)])
    workdir = tmp_path / "t.txt_workdir"
    first = run_farmer(tasklist, "-n", "1", "--timeout", "0.01", "-q")
    assert first.returncode == 3, first.stderr
    queue = (workdir / "toprocess").read_bytes()
    assert queue.count(b"\n") == 6
    cut = queue[: queue.rstrip(b"\n").rfind(b"\n") + 1]  # as a node whose cache missed the last change sees it
    (workdir / "toprocess").write_bytes(cut)
    finished = (workdir / "finished").read_bytes()
    second = run_farmer(tasklist, "-n", "2", "-q")
    assert second.returncode == 4, second.stderr
    errors = [line for line in second.stderr.splitlines() if "Stale view" in line]
    assert len(errors) == 1, second.stderr
    assert "toprocess" in errors[0]
    assert "filesystem" in errors[0]
    assert "Traceback" not in second.stderr
    assert (workdir / "finished").read_bytes() == finished  # nothing ran from the stale view
    assert (workdir / "toprocess").read_bytes() == cut
    # Every farmer of the work directory, on any node, now refuses it until the user says it is fixed.
    refused = run_farmer(tasklist, "-n", "2", "-q")
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "Stale view" in refused.stderr
    assert f"remove {workdir / 'stale'}" in refused.stderr
    (workdir / "stale").unlink()
    (workdir / ".journal").unlink()  # the cut toprocess was the user's doing here: the sizes are measured anew
    again = run_farmer(tasklist, "-n", "2", "-q")
    assert again.returncode == 0, again.stderr


@pytest.mark.timeout(120)
def test_a_task_that_kills_its_farmer_every_time_ends_as_lost_and_the_rest_finishes(tmp_path: Path) -> None:
    farmer_group = "$(ps -o pgid= -p $(echo $TASKFARMER_FARMER | awk -F. '{print $(NF-1)}') | tr -d ' ')"
    poison = f"sleep 0.2; kill -9 -- -{farmer_group}"  # as a task that makes its node crash would
    tasks = [f"echo {i} >> {tmp_path / 'done'}" for i in range(8)]
    tasks[3] = poison
    tasklist = write_tasklist(tmp_path / "t.txt", tasks)
    statuses = []
    for _ in range(4):
        farmer = start_farmer(tasklist, "-n", "1", "-q")  # a session of its own: the poison kills its group only
        with cleanup(farmer):
            statuses.append(farmer.wait(timeout=LONG))
    assert statuses == [-9, -9, -9, 1]
    workdir = tmp_path / "t.txt_workdir"
    assert lines(workdir / "failed") == [f"3 lost:3 {poison}"]
    assert sorted(ids(workdir / "finished")) == [0, 1, 2, 4, 5, 6, 7]
    statuses_in_accounting = [line.split("\t")[2] for line in lines(workdir / "accounting.tsv")[1:]]
    assert statuses_in_accounting.count("lost") == 3


@pytest.mark.timeout(60)
def test_output_into_a_pipe_closed_early_stops_quietly(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["head -c 2000000 /dev/zero | tr '\\0' x"])
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 0
    reader = subprocess.Popen(
        [sys.executable, "-m", "taskfarmer", "log", str(tmp_path / "t.txt_workdir"), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout is not None
    assert reader.stdout.read(10) == b"x" * 10
    reader.stdout.close()  # as `| head -c 10` does, long before the 2 MB log is written out
    _, stderr = reader.communicate(timeout=LONG)
    assert stderr == b""
    assert reader.returncode == 141


@pytest.mark.timeout(60)
def test_a_farmer_whose_reader_goes_away_runs_every_task_and_exits_with_the_farms_status(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    tasklist = write_tasklist(
        tmp_path / "t.txt", [f"while [ ! -e {gate} ]; do sleep 0.05; done; echo {n}" for n in range(6)]
    )
    farmer = subprocess.Popen(
        farmer_argv(tasklist, "-v", "-n", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert farmer.stdout is not None
        assert farmer.stdout.readline()  # then the reader goes, as `2>&1 | head -1` does, before any task ends
        farmer.stdout.close()
        gate.touch()
        assert farmer.wait(timeout=LONG) == 0  # the farm's status: all finished
    finally:
        if farmer.poll() is None:
            os.killpg(farmer.pid, signal.SIGKILL)
            farmer.wait()
    assert sorted(ids(tmp_path / "t.txt_workdir" / "finished")) == list(range(6))


@pytest.mark.timeout(60)
def test_status_of_a_tasklist_cuts_long_commands_visibly_and_gives_no_eta_without_farmers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_failure = "exit 1 # " + "x" * 100
    tasklist = write_tasklist(tmp_path / "t.txt", [long_failure, *["true"] * 5, "sleep 30"])
    farmer = start_farmer(tasklist, "-n", "2")
    workdir = tmp_path / "t.txt_workdir"
    with cleanup(farmer):
        wait_for((workdir / "running").exists, what="the work directory")
        wait_for(lambda: WorkDir(workdir).counts().finished == 5, what="the short tasks done")
        wait_for(lambda: len(_running(workdir)) == 1, what="the long task running")
        assert main(["status", str(tasklist)]) == 0  # the tasklist: its work directory is found
        text = capsys.readouterr().out
        assert text.startswith(f"{workdir}:")
        assert "x" * 50 + "…" in text
        assert "rate" in text
        assert "ETA" in text
        running = next(line for line in text.splitlines() if line.lstrip().startswith("running"))
        farmer_name = next(iter(WorkDir(workdir).read_farmers()))
        assert f"({farmer_name} worker " in running
        os.killpg(farmer.pid, signal.SIGKILL)
        farmer.wait(timeout=LONG)
    assert main(["status", str(workdir)]) == 0
    text = capsys.readouterr().out
    assert "dead (process gone)" in text
    assert "ETA" not in text  # nobody works on it
    report = _status_json(workdir, capsys)
    assert report["rate_per_s"] is not None
    assert report["eta_s"] is None


def test_status_names_the_log_of_a_failed_task_in_stream_mode_and_counts_no_stopped_attempt_in_its_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo out; exit 7", "true", "sleep 30", "sleep 30"])
    workdir = tmp_path / "t.txt_workdir"
    farmer = start_farmer(tasklist, "-n", "2", "--logs", "stream")
    with cleanup(farmer):
        # Tasks 2 and 3 (not 0 or 1, which may still be seen running for a moment on a loaded machine).
        wait_for(lambda: sorted(_running(workdir)) == [2, 3], what="the long tasks running")
        os.killpg(farmer.pid, signal.SIGTERM)
        farmer.communicate(timeout=LONG)
    assert farmer.returncode == 3
    rows = [line.split("\t") for line in lines(workdir / "accounting.tsv")[1:]]
    assert sorted(row[2] for row in rows) == ["exit:7", "ok", "stopped", "stopped"]
    ends = [float(row[5]) for row in rows if row[2] != "stopped"]
    time.sleep(1.5)  # the rate of a list that nobody works on must not fall with the time since
    report = _status_json(workdir, capsys)
    failed = report["failed"]
    assert isinstance(failed, list)
    location = str(failed[0]["log"])
    assert location.startswith(f"{workdir}/logs/stream.")
    assert "@" in location
    assert main(["log", str(workdir), "0"]) == 0
    assert capsys.readouterr().out == "out\n"
    # Two tasks ended, the stopped attempts none; no farmer runs now: the rate is the one it had (it would fall).
    assert report["rate_per_s"] == pytest.approx(2 / max(max(ends) - min(ends), 1.0))


@pytest.mark.timeout(60)
def test_wording_for_one_failure_a_comment_line_and_a_finished_task_to_requeue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "# a comment", "exit 1"])
    result = run_farmer(tasklist, "-n", "1", "-q")
    assert result.returncode == 1
    assert "1 task failed" in result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert main(["log", str(workdir), "1"]) == 2
    assert "there is no task 1 (line 2 of the tasklist is blank or a comment" in capsys.readouterr().err
    assert main(["requeue", str(workdir), "--id", "0"]) == 0
    said = capsys.readouterr().out
    assert said == "back in the queue: 0 failed tasks (task 0 finished: only failed tasks are requeued).\n"


@pytest.mark.timeout(60)
def test_status_of_one_task_and_one_worker_says_it_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 30"])
    farmer = start_farmer(tasklist, "-n", "1")
    workdir = tmp_path / "t.txt_workdir"
    with cleanup(farmer):
        wait_for(lambda: len(_running(workdir)) == 1, what="the task running")
        assert main(["status", str(workdir)]) == 0
        text = capsys.readouterr().out
    assert text.startswith(f"{workdir}: 1 task: 0 finished, 0 failed, 1 running, 0 to process\n")
    assert ": 1 worker, alive\n" in text


def test_failed_prints_the_failed_tasks_or_only_their_commands(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "exit 3", "echo 'x y' && false"])
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 1
    assert main(["failed", str(tasklist)]) == 0
    assert capsysbinary.readouterr().out == b"1 exit:3 exit 3\n2 exit:1 echo 'x y' && false\n"
    assert main(["failed", str(tasklist), "--commands"]) == 0
    assert capsysbinary.readouterr().out == b"exit 3\necho 'x y' && false\n"


def test_failed_lists_the_lines_that_cannot_run_and_requeue_says_why_it_leaves_them(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    tasklist = tmp_path / "t.txt"
    tasklist.write_bytes(b"true\necho \xff bad\necho two #taskfarmer colour=red\nexit 4\n")
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 1
    assert main(["failed", str(tasklist)]) == 0
    shown = capsysbinary.readouterr().out.splitlines()
    assert [line.split(b" ", 2)[:2] for line in shown] == [
        [b"1", b"invalid:not-utf8"],
        [b"2", b"invalid:directive"],
        [b"3", b"exit:4"],
    ]
    # A directive can be mended in the new list; an unreadable line has only a preview recorded: it is named.
    assert main(["failed", str(tasklist), "--commands"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == b"echo two #taskfarmer colour=red\nexit 4\n"
    assert err.decode().startswith("pytaskfarmer: 1 failed line left out: only a preview of each is recorded")
    assert main(["requeue", str(tasklist), "--id", "1", "--id", "2", "--id", "3"]) == 0
    said = capsysbinary.readouterr().out.decode()
    assert said.startswith("back in the queue: 1 failed task (task 1 cannot run as written (invalid:not-utf8)")
    assert "task 2 cannot run as written (invalid:directive): mend its line in a new list)" in said
    assert ids(tmp_path / "t.txt_workdir" / "toprocess") == [3]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["requeue", "--farmer", "nosuch"], "No farmer nosuch in "),
        (["cancel"], "has no campaign"),
        (["status", "--count", "2"], "--count and --interval go with --watch"),
        (["log", "--attempt", "0"], "--attempt: must be at least 1, not 0"),
    ],
    ids=["unknown farmer", "no campaign", "count without watch", "attempt 0"],
)
def test_operations_refuse_bad_input_with_one_line_and_change_nothing(
    tmp_path: Path, argv: list[str], needle: str
) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "exit 1"])
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 1
    workdir = tmp_path / "t.txt_workdir"
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    words = [*argv, str(workdir)] + (["1"] if argv[0] == "log" else [])
    result = subprocess.run([sys.executable, "-m", "taskfarmer", *words], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert needle in result.stderr
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before


def test_cancelling_no_drain_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    assert run_farmer(tasklist, "-n", "1", "-q").returncode == 0
    assert main(["drain", "--cancel", str(tasklist)]) == 0
    assert capsys.readouterr().out.startswith("no drain to cancel: ")
    assert main(["drain", str(tasklist)]) == 0
    assert main(["drain", str(tasklist)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("already draining: ")  # it said "created" again
    assert main(["drain", "--cancel", str(tasklist)]) == 0
    assert "removed " in capsys.readouterr().out


def test_a_task_starts_with_no_signal_ignored_or_blocked_that_its_worker_ignores(tmp_path: Path) -> None:
    # A worker ignores the farmer's signals, and Python ignores SIGPIPE and SIGXFSZ: a task must not inherit that.
    tasklist = write_tasklist(tmp_path / "t.txt", ["grep -E '^Sig(Ign|Blk):' /proc/self/status"])
    assert run_farmer(tasklist, "--logs", "files").returncode == 0
    masks = dict(line.split(":\t") for line in lines(tmp_path / "t.txt_workdir" / "logs" / "log_0"))
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        bit = 1 << (signum - 1)
        assert not int(masks["SigIgn"], 16) & bit, f"{signum.name} ignored"
        assert not int(masks["SigBlk"], 16) & bit, f"{signum.name} blocked"
