"""Per-task policies with real processes: timeout, memory limit, retries, fail-fast; GPU binding; accounting."""

from __future__ import annotations

import csv
import sys
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.helpers import ids, lines, processes_with_env, run_farmer, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)
PY = sys.executable


def _accounting(workdir: Path) -> list[dict[str, str]]:
    with (workdir / "accounting.tsv").open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_a_task_past_its_timeout_is_killed_with_its_tree_and_fails(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    tasklist = write_tasklist(tmp_path / "t.txt", ["sleep 300 & setsid sleep 300 & sleep 300", "echo fine"])
    result = run_farmer(tasklist, "-n", "2", "--task-timeout", "1", "--grace", "1", env={"TF_TEST_MARK": marker})
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert lines(workdir / "failed") == ["0 timeout sleep 300 & setsid sleep 300 & sleep 300"]
    assert ids(workdir / "finished") == [1]
    assert processes_with_env("TF_TEST_MARK", marker) == []
    timed_out = next(row for row in _accounting(workdir) if row["task"] == "0")
    assert timed_out["status"] == "timeout"
    assert 1.0 <= float(timed_out["seconds"]) < 10


def test_the_farmers_grace_is_the_time_a_task_past_its_timeout_gets_after_sigterm(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["trap '' TERM; sleep 60 & wait"])
    result = run_farmer(tasklist, "--task-timeout", "1", "--grace", "0.5")
    assert result.returncode == 1, result.stderr
    (row,) = _accounting(tmp_path / "t.txt_workdir")
    assert row["status"] == "timeout"
    assert float(row["seconds"]) < 4  # 1 s, then SIGKILL 0.5 s after SIGTERM (the runner's 5 s default took over)


def test_a_task_over_its_memory_limit_is_killed_and_fails(tmp_path: Path) -> None:
    hog = f"{PY} -c 'import time; x = bytearray(400 << 20); x[::4096] = b\"1\" * len(x[::4096]); time.sleep(60)'"
    tasklist = write_tasklist(tmp_path / "t.txt", [hog, "echo small"])
    result = run_farmer(tasklist, "-n", "2", "--task-memory", "150M", "--grace", "1")
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert lines(workdir / "failed") == [f"0 memory {hog}"]
    row = next(row for row in _accounting(workdir) if row["task"] == "0")
    assert int(row["peak_rss_kb"]) > 150 * 1024


def test_retries_run_a_failing_task_again_and_keep_every_log(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    flaky = f"echo attempt $TASKFARMER_ATTEMPT; echo x >> {counter}; [ $(wc -l < {counter}) -ge 3 ]"
    tasklist = write_tasklist(tmp_path / "t.txt", [flaky, "echo try $TASKFARMER_ATTEMPT; exit 7"])
    result = run_farmer(tasklist, "-n", "1", "--retries", "3")
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert ids(workdir / "finished") == [0]
    assert lines(workdir / "failed") == ["1 exit:7 echo try $TASKFARMER_ATTEMPT; exit 7"]
    assert [(workdir / "logs" / name).read_text() for name in ("log_0", "log_0.2", "log_0.3")] == [
        "attempt 1\n",
        "attempt 2\n",
        "attempt 3\n",
    ]
    assert sorted(p.name for p in (workdir / "logs").glob("log_1*")) == ["log_1", "log_1.2", "log_1.3", "log_1.4"]
    attempts = [(row["task"], row["attempt"], row["status"]) for row in _accounting(workdir)]
    assert attempts == [
        ("0", "1", "exit:1"),
        ("0", "2", "exit:1"),
        ("0", "3", "ok"),
        ("1", "1", "exit:7"),
        ("1", "2", "exit:7"),
        ("1", "3", "exit:7"),
        ("1", "4", "exit:7"),
    ]


def test_max_failures_stops_the_farm(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["false"] * 5 + ["true"] * 50)
    result = run_farmer(tasklist, "-n", "1", "--max-failures", "3")
    assert result.returncode == 3, result.stderr
    assert "too many failed tasks" in result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert len(lines(workdir / "failed")) == 3
    assert len(ids(workdir / "toprocess")) == 52


def test_gpus_are_shared_round_robin_by_worker_slot(tmp_path: Path) -> None:
    out = tmp_path / "gpus"
    tasklist = write_tasklist(
        tmp_path / "t.txt",
        [f"echo $TASKFARMER_WORKER $CUDA_VISIBLE_DEVICES $ROCR_VISIBLE_DEVICES >> {out}; sleep 0.2"] * 12,
    )
    assert run_farmer(tasklist, "-n", "4", "--gpus", "0,1").returncode == 0
    seen = {tuple(line.split()) for line in lines(out)}
    assert seen <= {("0", "0", "0"), ("1", "1", "1"), ("2", "0", "0"), ("3", "1", "1")}
    assert {gpu for _, gpu, _ in seen} == {"0", "1"}


def test_accounting_records_every_attempt(tmp_path: Path) -> None:
    busy = tmp_path / "busy.py"
    busy.write_text(
        "import time\n"
        "x = bytearray(80 << 20)\n"
        "x[::4096] = b'1' * len(x[::4096])\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.3:\n"
        "    pass\n"
    )
    tasklist = write_tasklist(tmp_path / "t.txt", [f"{PY} {busy}", "exit 2"])
    run_farmer(tasklist, "-n", "1")
    rows = _accounting(tmp_path / "t.txt_workdir")
    assert [row["task"] for row in rows] == ["0", "1"]
    first, second = rows
    assert first["status"] == "ok"
    assert float(first["cpu_user_s"]) + float(first["cpu_system_s"]) >= 0.25
    assert int(first["peak_rss_kb"]) >= 80 * 1024
    assert (second["status"], second["returncode"], second["log"]) == ("exit:2", "2", "")  # it printed nothing
    assert float(second["end"]) >= float(second["start"])
    assert second["worker"] == "0"
