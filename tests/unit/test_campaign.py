"""The pure parts of a campaign: wall times, the farmer's share of ``submit``'s words, the state of each job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from taskfarmer.campaign import (
    Campaign,
    CampaignError,
    CampaignState,
    JobRecord,
    Settings,
    Submission,
    parse_duration,
    slurm_time,
)
from taskfarmer.jobs import QueueView, job_rows, live_jobs
from taskfarmer.schedulers import QueuedJob
from taskfarmer.submit import farmer_words

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 5400),
        ("30:00", 1800),
        ("1:30", 90),
        ("2:00:00", 7200),
        ("1-12", 129600),
        ("1-12:30", 131400),
        ("1-00:00:30", 86430),
        ("45s", 45),
        ("30m", 1800),
        ("2h", 7200),
        ("1.5d", 129600),
    ],
)
def test_wall_times_read_as_slurm_writes_them_or_with_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "banana", "1:2:3:4", "-5", "2x", "0", "0s", "1-a"])
def test_other_wall_times_are_refused(text: str) -> None:
    with pytest.raises(CampaignError):
        parse_duration(text)


def test_slurm_time_rounds_up_to_the_second() -> None:
    assert slurm_time(59.2) == "0-00:01:00"
    assert slurm_time(90061) == "1-01:01:01"


def test_the_farmer_gets_every_word_but_submits_own_options() -> None:
    words = ["--jobs", "3", "--time=2h", "-r", "shifter", "--dry-run", "t.txt", "--max-failures", "5", "--retries", "2"]
    assert farmer_words(words) == ["-r", "shifter", "t.txt", "--retries", "2"]


def _campaign(tmp_path: Path, records: list[JobRecord]) -> tuple[Campaign, CampaignState]:
    campaign = Campaign(tmp_path)
    campaign.create()
    for record in records:
        campaign.write_job(record)
    state = CampaignState(Settings(scheduler="slurm", tag="t"), [Submission("7", 6, at=100.0)])
    return campaign, state


def test_each_job_is_in_the_state_its_record_and_the_queue_say(tmp_path: Path) -> None:
    records = [
        JobRecord("7_0", "n1", started=110.0, ended=150.0, farmer_status=0, outcome="the list is done"),
        JobRecord("7_1", "n2", started=110.0, ended=150.0, farmer_status=3, outcome="successor 8_0"),
        JobRecord("7_2", "n3", started=110.0),  # no end, and gone from the queue
        JobRecord("7_3", "n1", started=110.0),  # no end, still running
        JobRecord("9_0", "n2", started=120.0),  # submitted by hand: not in the submissions
    ]
    campaign, state = _campaign(tmp_path, records)
    queue = QueueView(at=200.0, jobs={"7_3": QueuedJob("running", "n1"), "7_4": QueuedJob("queued")})
    rows = {row.id: row for row in job_rows(campaign, state, queue)}
    assert {job: row.state for job, row in rows.items()} == {
        "7_0": "done",
        "7_1": "stopped",
        "7_2": "lost",
        "7_3": "running",
        "7_4": "queued",
        "7_5": "cancelled",  # not listed, never started
        "9_0": "lost",
    }
    assert rows["7_1"].detail == "successor 8_0"
    assert live_jobs(list(rows.values())) == 2


def test_a_job_removed_by_a_cancel_moments_after_its_submission_is_cancelled(tmp_path: Path) -> None:
    campaign, state = _campaign(tmp_path, [])
    queue = QueueView(at=103.0, jobs={})  # 3 s after the submission: a job may not be listed yet
    assert {row.state for row in job_rows(campaign, state, queue)} == {"queued"}
    state.cancelled = True  # but after a cancel, one not listed was removed
    assert {row.detail for row in job_rows(campaign, state, queue)} == {"left the queue without starting"}


def test_without_an_answer_of_the_scheduler_no_job_is_taken_for_lost(tmp_path: Path) -> None:
    campaign, state = _campaign(tmp_path, [JobRecord("7_0", "n1", started=110.0)])
    rows = {row.id: row.state for row in job_rows(campaign, state, None)}
    assert rows == dict.fromkeys(["7_0"], "running") | dict.fromkeys([f"7_{i}" for i in range(1, 6)], "queued")
