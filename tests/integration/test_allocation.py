"""Batch allocations: no task claimed that could not finish in time; setup done once per node."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from taskfarmer.allocation import parse_end_time
from tests.helpers import cleanup, ids, lines, run_farmer, start_farmer, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def test_no_task_is_claimed_that_cannot_finish_before_the_allocation_ends(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 0.5"] * 40)
    end = time.time() + 4.0
    result = run_farmer(tasklist, "-n", "2", "--task-duration", "2", "--end-time", f"{end:.0f}")
    assert result.returncode == 3, result.stderr
    assert "ends before another task could finish (--task-duration)" in result.stderr
    workdir = tmp_path / "t.txt_workdir"
    finished = ids(workdir / "finished")
    assert 2 <= len(finished) < 40
    assert len(finished) + len(ids(workdir / "toprocess")) == 40
    assert time.time() < end + 1.0, "a task ran past the end of the allocation"


@pytest.mark.parametrize("limit", ["--end-time", "--timeout"])
def test_a_task_whose_time_directive_outlasts_the_work_is_left_for_the_next_job(tmp_path: Path, limit: str) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo long #taskfarmer time=1h", "echo short #taskfarmer time=5s"])
    value = f"{time.time() + 60:.0f}" if limit == "--end-time" else "60"
    result = run_farmer(tasklist, "-n", "1", limit, value)  # no --task-duration: the directive is enough
    assert result.returncode == 3, result.stderr
    assert "the next task needs more cores, GPUs or time than this farmer has" in result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert ids(workdir / "finished") == [1]
    assert ids(workdir / "toprocess") == [0]


def test_a_time_directive_is_weighed_against_the_end_alone_not_also_against_task_duration(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo ran #taskfarmer time=30s"])
    result = run_farmer(tasklist, "--end-time", f"{time.time() + 60:.0f}", "--task-duration", "40")
    assert result.returncode == 0, result.stderr  # 30 s fit in the 60 s left, though 30 + 40 do not
    assert ids(tmp_path / "t.txt_workdir" / "finished") == [0]


@pytest.mark.parametrize(
    ("value", "said"), [("1", "is in the past"), ("tomorrow", "Cannot read the end time"), ("N/A", "is no time")]
)
def test_a_bad_end_time_is_refused_before_anything_is_made(tmp_path: Path, value: str, said: str) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    result = run_farmer(tasklist, "--end-time", value)
    assert result.returncode == 2
    assert said in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "t.txt_workdir").exists()


def test_end_times_as_slurm_prints_them() -> None:
    assert parse_end_time("1795245614") == 1795245614.0
    assert parse_end_time("N/A") is None
    iso = parse_end_time("2026-11-21T08:00:00")
    assert iso is not None
    assert time.localtime(iso)[:5] == (2026, 11, 21, 8, 0)


def test_node_setup_runs_once_per_node_even_with_farmers_starting_together(tmp_path: Path) -> None:
    count = tmp_path / "setups"
    setup = f"echo $$ >> {count}; sleep 1; echo ready > {tmp_path / 'env'}"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"cat {tmp_path / 'env'} >> {tmp_path / 'seen'}"] * 20)
    farmers = [start_farmer(tasklist, "-n", "2", "--node-setup", setup) for _ in range(3)]
    with cleanup(*farmers):
        assert [farmer.wait(timeout=60) for farmer in farmers] == [0, 0, 0]
    assert len(lines(count)) == 1
    assert lines(tmp_path / "seen") == ["ready"] * 20
    again = run_farmer(tasklist, "--node-setup", setup)
    assert again.returncode == 0
    assert len(lines(count)) == 1  # done on this node already


def test_a_failing_node_setup_is_one_clear_error(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", [f"touch {tmp_path / 'ran'}"])
    result = run_farmer(tasklist, "--node-setup", "echo no module >&2; exit 3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "node setup" in result.stderr
    assert "exit status 3" in result.stderr
    assert not (tmp_path / "ran").exists()
    log = next((tmp_path / "t.txt_workdir" / "logs").glob("node-setup.*.log"))
    assert log.read_text() == "no module\n"
