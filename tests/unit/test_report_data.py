"""The report's figures from accounting lines written by hand: concurrency edges, histograms, the slowest, bad lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from taskfarmer import report_data
from taskfarmer.store._records import ACCOUNTING_HEADER

if TYPE_CHECKING:
    from pathlib import Path


def _line(task: int, status: str, start: float, end: float, host: str = "n1") -> bytes:
    fields = (task, 1, status, 0, start, end, end - start, host, 0, f"{host}.1.ab", 1024, 1.5, 0.5, f"logs/log_{task}")
    return "\t".join(str(field) for field in fields).encode() + b"\n"


def test_back_to_back_attempts_do_not_overlap() -> None:
    acc = report_data.parse_accounting(
        [
            ACCOUNTING_HEADER,
            _line(0, "ok", 10, 20),
            _line(1, "ok", 20, 30),  # starts as task 0 ends: one worker, never two tasks at once
            _line(2, "exit:1", 15, 25, host="n2"),
            _line(3, "ok", 16, 18, host="n2"),
        ]
    )
    assert report_data.max_running(acc) == {"n1": 1, "n2": 2}
    assert report_data.running_by_host(acc)["n2"] == ([15, 16, 18, 25], [1, 2, 1, 0])
    assert report_data.finished_over_time(acc) == ([18, 20, 30], [1, 2, 3])
    assert acc.cpu_seconds == 8.0
    assert acc.attempts_by_status == {"ok": 3, "exit:1": 1}


def test_short_and_malformed_lines_are_skipped() -> None:
    acc = report_data.parse_accounting([ACCOUNTING_HEADER, b"3\tok\n", b"", b"x\t" * 14 + b"\n", _line(7, "ok", 1, 2)])
    assert acc.size == 1
    assert acc.slowest[0].task == 7


def test_stopped_lost_and_skipped_attempts_have_no_duration() -> None:
    lines = [
        _line(0, "stopped", 0, 50),
        _line(1, "lost", 0, 60),
        _line(2, "skipped:outputs", 0, 0),
        _line(3, "ok", 0, 5),
    ]
    acc = report_data.parse_accounting(lines)
    assert report_data.durations(acc) == [5]
    # Stopped and lost attempts did occupy their workers; the skipped one, of no duration, never ran.
    assert report_data.max_running(acc) == {"n1": 3}
    assert len(acc.finished_ends) == 2  # skipped:outputs is finished


def test_the_slowest_are_kept_longest_first_ties_in_file_order() -> None:
    lines = [_line(task, "ok", 0, task % 30) for task in range(100)]
    slowest = report_data.parse_accounting(lines).slowest
    assert len(slowest) == report_data.SLOWEST_SHOWN
    assert [a.task for a in slowest[:4]] == [29, 59, 89, 28]
    assert slowest[-1].seconds == 23


@pytest.mark.parametrize(
    ("values", "logarithmic"),
    [
        ([1.0, 2.0, 3.0, 4.0, 50.0], False),
        ([0.01, 0.5, 3.0, 900.0], True),
        ([0.0, 0.0, 7.0], False),
        ([5.0] * 4, False),
    ],
)
def test_histogram_counts_every_value_once(values: list[float], logarithmic: bool) -> None:
    edges, counts = report_data.histogram(values, bins=10)
    assert len(edges) == len(counts) + 1 == 11
    assert sum(counts) == len(values)
    assert edges[0] == pytest.approx(min(values))
    if logarithmic:
        assert edges[1] / edges[0] == pytest.approx(edges[-1] / edges[-2])


def test_histogram_of_nothing() -> None:
    assert report_data.histogram([]) == ([], [])


def test_failed_lines_and_commands(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    failed.write_bytes(b"4 exit:2 ls -l /nowhere\n9 timeout sleep 99\n11 exit:2 false\n")
    finished = tmp_path / "finished"
    finished.write_bytes(b"1 echo one two\n2 true\n")
    by_status, shown = report_data.read_failed(failed)
    assert by_status == {"exit:2": 2, "timeout": 1}
    assert (shown[0].task, shown[0].status, shown[0].command) == (4, "exit:2", "ls -l /nowhere")
    assert report_data.read_commands([finished, failed], {1, 9, 5}) == {1: "echo one two", 9: "sleep 99"}
    assert report_data.read_failed(tmp_path / "missing") == ({}, [])
