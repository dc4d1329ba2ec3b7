"""Promise 3: on SIGUSR1, SIGTERM, SIGINT or --timeout the farmer stops claiming, kills every running task's whole
process tree, returns those tasks to the queue and exits with status 3. No orphan survives."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
import uuid
from typing import TYPE_CHECKING

import psutil
import pytest

from taskfarmer.store import WorkDir
from tests.helpers import (
    LONG,
    cleanup,
    farmer_argv,
    ids,
    lines,
    processes_with_env,
    run_farmer,
    start_farmer,
    wait_for,
    write_tasklist,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)

# Each task leaves a tree behind it: a background sleep, a sleep in a session of its own, and one in the foreground.
TREE_TASK = "sleep 300 & setsid sleep 300 & echo started >> {log}; sleep 300"


def _running(workdir: Path) -> int:
    if not (workdir / "running").exists():
        return 0
    return len(WorkDir(workdir).running_tasks())


def _start_busy_farm(
    tmp_path: Path, *args: str, tasks: int = 5, workers: int = 3
) -> tuple[subprocess.Popen[str], str, Path]:
    marker = uuid.uuid4().hex
    tasklist = write_tasklist(tmp_path / "t.txt", [TREE_TASK.format(log=tmp_path / "started")] * tasks)
    farmer = start_farmer(tasklist, "-n", str(workers), "--grace", "2", *args, env={"TF_TEST_MARK": marker})
    workdir = tmp_path / "t.txt_workdir"
    wait_for(
        lambda: len(lines(tmp_path / "started")) == workers and _running(workdir) == workers, what="all workers busy"
    )
    return farmer, marker, workdir


def _assert_stopped_cleanly(
    farmer: subprocess.Popen[str], marker: str, workdir: Path, *, tasks: int = 5, status: int = 3
) -> None:
    _, stderr = farmer.communicate(timeout=LONG)
    assert farmer.returncode == status, stderr
    assert "Traceback" not in stderr
    assert processes_with_env("TF_TEST_MARK", marker) == [], "a process of the farm survived it"
    assert sorted(ids(workdir / "toprocess")) == list(range(tasks)), "running tasks were not returned"
    assert lines(workdir / "finished") == []
    assert lines(workdir / "failed") == []
    assert _running(workdir) == 0
    assert list((workdir / "farmers").iterdir()) == []
    assert "went back to the queue" in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_to_the_farmer_stops_it_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    farmer, marker, workdir = _start_busy_farm(tmp_path)
    with cleanup(farmer):
        os.kill(farmer.pid, signum)
        _assert_stopped_cleanly(farmer, marker, workdir)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_or_a_closed_terminal_reaches_the_whole_process_group(tmp_path: Path, signum: signal.Signals) -> None:
    # Started as from a terminal: with SIGHUP at its default, whatever this test runner has (nohup ignores it).
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        farmer, marker, workdir = _start_busy_farm(tmp_path)
    finally:
        signal.signal(signal.SIGHUP, previous)
    with cleanup(farmer):
        os.killpg(farmer.pid, signum)  # what the terminal does: farmer and workers (tasks have own sessions)
        _assert_stopped_cleanly(farmer, marker, workdir)  # SIGHUP killed the farmer outright (status 129)


def test_a_farmer_started_with_nohup_keeps_running_when_its_terminal_closes(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 1"] * 4)
    farmer = subprocess.Popen(
        ["nohup", *farmer_argv(tasklist, "-n", "2")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    workdir = tmp_path / "t.txt_workdir"
    with cleanup(farmer):
        wait_for(lambda: _running(workdir) == 2, what="two tasks running")
        os.killpg(farmer.pid, signal.SIGHUP)
        _, stderr = farmer.communicate(timeout=LONG)
    assert farmer.returncode == 0, stderr
    assert sorted(ids(workdir / "finished")) == [0, 1, 2, 3]


def test_global_timeout_stops_cleanly(tmp_path: Path) -> None:
    started = time.monotonic()
    farmer, marker, workdir = _start_busy_farm(tmp_path, "--timeout", "3")
    with cleanup(farmer):
        _assert_stopped_cleanly(farmer, marker, workdir)
    assert time.monotonic() - started < 3 + 2 + 20


def test_tasks_get_sigterm_first_then_sigkill_after_the_grace(tmp_path: Path) -> None:
    log = tmp_path / "log"
    marker = uuid.uuid4().hex
    tasklist = write_tasklist(
        tmp_path / "t.txt",
        [
            f"trap 'echo got TERM >> {log}; exit 1' TERM; echo ready >> {log}; sleep 300 & wait",
            f"trap '' TERM; echo stubborn >> {log}; sleep 300 & wait",
        ],
    )
    # A grace of 8 s: on a loaded machine (CI runs five engines beside the tests) a trap once took over 3 s to run.
    farmer = start_farmer(tasklist, "-n", "2", "--grace", "8", env={"TF_TEST_MARK": marker})
    with cleanup(farmer):
        wait_for(lambda: len(lines(log)) == 2, what="both tasks ready")
        os.kill(farmer.pid, signal.SIGTERM)
        farmer.communicate(timeout=LONG)
    assert farmer.returncode == 3
    assert "got TERM" in lines(log)
    assert processes_with_env("TF_TEST_MARK", marker) == []
    assert sorted(ids(tmp_path / "t.txt_workdir" / "toprocess")) == [0, 1]


def test_a_stopped_task_that_ignores_sigterm_is_killed_after_the_farmers_grace(tmp_path: Path) -> None:
    log = tmp_path / "log"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"trap '' TERM; echo ready >> {log}; sleep 60 & wait"])
    farmer = start_farmer(tasklist, "--grace", "0.5")
    with cleanup(farmer):
        wait_for(lambda: lines(log) == ["ready"], what="the task ready")
        sent = time.monotonic()
        os.kill(farmer.pid, signal.SIGTERM)
        _, stderr = farmer.communicate(timeout=LONG)
        took = time.monotonic() - sent
    assert farmer.returncode == 3, stderr
    assert "SIGKILL after 0.5 s" in stderr
    assert took < 4, f"the stop took {took:.1f} s"  # the runner's own 5 s default took over the --grace given


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    log = tmp_path / "log"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"trap '' TERM; echo up >> {log}; sleep 300 & wait"] * 2)
    farmer = start_farmer(tasklist, "-n", "2", "--grace", "60", env={"TF_TEST_MARK": marker})
    with cleanup(farmer):
        wait_for(lambda: len(lines(log)) == 2, what="tasks that ignore SIGTERM")
        os.kill(farmer.pid, signal.SIGINT)
        time.sleep(0.5)
        sent = time.monotonic()
        os.kill(farmer.pid, signal.SIGINT)
        farmer.communicate(timeout=LONG)
        assert time.monotonic() - sent < 10, "the second Ctrl-C waited for the grace period"
    assert farmer.returncode == 130
    assert processes_with_env("TF_TEST_MARK", marker) == []
    assert sorted(ids(tmp_path / "t.txt_workdir" / "toprocess")) == [0, 1]


def test_a_ctrl_c_during_a_stop_by_sigterm_stops_at_once(tmp_path: Path) -> None:
    # The same path as a --timeout or a batch system's stop: no Ctrl-C began it.
    marker = uuid.uuid4().hex
    log = tmp_path / "log"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"trap '' TERM; echo up >> {log}; sleep 300 & wait"])
    farmer = start_farmer(tasklist, "-n", "1", "--grace", "60", env={"TF_TEST_MARK": marker})
    with cleanup(farmer):
        wait_for(lambda: len(lines(log)) == 1, what="a task that ignores SIGTERM")
        os.kill(farmer.pid, signal.SIGTERM)
        assert farmer.stderr is not None
        stopping = ""
        while not stopping.startswith("pytaskfarmer: stopping"):
            stopping = farmer.stderr.readline()
            assert stopping, "the farmer ended without its stopping line"
        # One Ctrl-C, not a second, is what ends the wait.
        assert stopping.endswith("SIGKILL after 60.0 s; Ctrl-C to kill it now\n")
        sent = time.monotonic()
        os.kill(farmer.pid, signal.SIGINT)
        _, stderr = farmer.communicate(timeout=LONG)
        assert time.monotonic() - sent < 10, "the Ctrl-C waited for the grace period"
    assert farmer.returncode == 130, stderr
    assert "stopped (Ctrl-C while stopping)" in stderr
    assert processes_with_env("TF_TEST_MARK", marker) == []
    assert ids(tmp_path / "t.txt_workdir" / "toprocess") == [0]


def test_workers_do_not_outlive_their_farmer(tmp_path: Path) -> None:
    farmer, marker, workdir = _start_busy_farm(tmp_path)
    with cleanup(farmer):
        os.kill(farmer.pid, signal.SIGKILL)
        farmer.wait(timeout=LONG)
        wait_for(lambda: processes_with_env("TF_TEST_MARK", marker) == [], what="workers and tasks to end")
    assert _running(workdir) == 0, "the workers did not return their tasks"
    assert sorted(ids(workdir / "toprocess")) == list(range(5))


def test_a_batch_system_signalling_every_process_gets_the_tasks_back(tmp_path: Path) -> None:
    """Slurm at the time limit, scancel, condor_rm: SIGTERM reaches the farmer, its workers and the tasks at once."""
    farmer, marker, workdir = _start_busy_farm(tmp_path)
    with cleanup(farmer):
        os.killpg(farmer.pid, signal.SIGTERM)
        for proc in processes_with_env("TF_TEST_MARK", marker):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _assert_stopped_cleanly(farmer, marker, workdir)


def test_leftovers_that_cleared_their_environment_do_not_survive(tmp_path: Path) -> None:
    token = f"{time.time() % 1000:.4f}"  # a sleep duration no other process uses
    tasklist = write_tasklist(tmp_path / "t.txt", [f"env -i sleep 3{token} & echo started"])
    result = run_farmer(tasklist)
    assert result.returncode == 0, result.stderr

    def leftover() -> bool:
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.info["cmdline"] == ["sleep", f"3{token}"] and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False

    assert not leftover()


def test_a_runner_whose_terminate_fails_still_gets_its_tasks_timed_out(tmp_path: Path, taskfarmer_home: Path) -> None:
    (tmp_path / "brokenrunner.py").write_text(
        textwrap.dedent(
            """
            from taskfarmer.runners import BasicRunner

            class Broken(BasicRunner):
                calls = 0

                def terminate(self):
                    Broken.calls += 1
                    if Broken.calls == 1:
                        raise RuntimeError("cannot terminate")
                    return super().terminate()
            """
        )
    )
    (taskfarmer_home / "runners.d" / "b.ini").write_text("[broken]\nRunner = brokenrunner.Broken\ngrace = 1\n")
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 30", "sleep 30"])
    result = run_farmer(
        tasklist, "-r", "broken", "-n", "1", "--task-timeout", "1", env={"PYTHONPATH": str(tmp_path)}, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert sorted(lines(tmp_path / "t.txt_workdir" / "failed")) == ["0 timeout sleep 30", "1 timeout sleep 30"]
