"""What a user sees: the start line and failures in a batch log; on a terminal, log lines above the live view, and
what a first Ctrl-C does (issue 9)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest

from tests.helpers import (
    LONG,
    cleanup,
    farmer_argv,
    in_a_terminal,
    on_a_terminal,
    run_farmer,
    start_farmer,
    wait_for,
    write_tasklist,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.timeout(60)
def test_a_batch_log_starts_with_a_line_and_says_each_failure(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "echo oops; exit 3", "true"])
    result = run_farmer(tasklist, "-n", "2")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("pytaskfarmer: 3 tasks to run (0 finished, 0 failed before) with 2 workers, runner default")
    assert f"task 1 failed (exit:3), log: {tmp_path / 't.txt_workdir' / 'logs' / 'log_1'}" in result.stderr


def test_quiet_keeps_errors_and_the_summary_only(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["exit 3", "exit 3", "true"])
    result = run_farmer(tasklist, "-n", "1", "-q", "--max-failures", "1")
    assert result.returncode == 3, result.stderr
    said = result.stderr.splitlines()
    assert said[0].startswith("pytaskfarmer: 0 finished, 1 failed, 2 left"), said
    assert not any("stopping" in line for line in said), said  # it printed "stopping: no task is running here"


@pytest.mark.timeout(60)
def test_a_first_ctrl_c_counts_the_tasks_running_not_the_workers(tmp_path: Path) -> None:
    started = tmp_path / "started"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"touch {started}; sleep 30"])
    farmer = start_farmer(tasklist, "-n", "3", "--grace", "1")
    with cleanup(farmer):
        wait_for(started.exists, what="the task running")
        farmer.send_signal(signal.SIGINT)
        _, stderr = farmer.communicate(timeout=LONG)
    assert farmer.returncode == 3
    assert "stopping: 1 running task gets SIGTERM, SIGKILL after 1.0 s; Ctrl-C again to kill it now" in stderr


@pytest.mark.timeout(90)
def test_on_a_terminal_logs_go_above_the_view_and_a_first_ctrl_c_says_what_happens(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["exit 4", *["sleep 30"] * 4])
    argv = farmer_argv(tasklist, "-n", "2", "-v", "--grace", "1")
    with on_a_terminal(argv, tmp_path, columns=160) as (farmer, screen):
        wait_for(lambda: screen.count(b"started (attempt 1): sleep 30") >= 2, what="two long tasks running")
        wait_for(lambda: b"last failures:" in screen, what="the view to show the failure")
        assert b"task 0 failed (exit:4)" in screen
        farmer.send_signal(signal.SIGINT)
        assert farmer.wait(timeout=LONG) == 3
    text = screen.decode(errors="replace")
    assert "stopping: 2 running tasks get SIGTERM, SIGKILL after 1.0 s; Ctrl-C again to kill them now" in text
    assert "worker 0: task" in text  # a worker's -v line, drawn by the farmer above its view


def test_the_live_view_draws_commands_as_they_are_not_as_markup_or_terminal_controls(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 2 # [/] [bold]not bold \x1b[2J"])
    status, screen = in_a_terminal(farmer_argv(tasklist, "-n", "1"), tmp_path)
    text = screen.decode(errors="replace")
    assert status == 0, text
    assert "[/] [bold]not bold \\x1b[2J" in text  # as markup, "[/]" with nothing to close raised in the view
    assert "\x1b[2J" not in text  # the task's command did not clear the screen
