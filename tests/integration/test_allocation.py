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
    assert "allocation ends before another task could finish" in result.stderr
    workdir = tmp_path / "t.txt_workdir"
    finished = ids(workdir / "finished")
    assert 2 <= len(finished) < 40
    assert len(finished) + len(ids(workdir / "toprocess")) == 40
    assert time.time() < end + 1.0, "a task ran past the end of the allocation"


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
