"""What each job of a campaign is doing, for ``taskfarmer status``; and ``taskfarmer cancel``.

The jobs' own records say when and where each one started and how it ended. The scheduler is asked only for what
records cannot say (queued or running, and which jobs vanished without a word), at most once per ``QUEUE_MAX_AGE``
seconds across every user of the work directory: its answer is cached in ``campaign/queue.json``. A site's admins
see one ``squeue`` or ``condor_q`` per half minute, however many people or scripts watch the campaign.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final

from taskfarmer import maintenance, schedulers
from taskfarmer.campaign import Campaign, CampaignError, CampaignState, JobRecord, write_json
from taskfarmer.schedulers import HELD, QUEUED, RUNNING, QueuedJob
from taskfarmer.words import plural

if TYPE_CHECKING:
    from taskfarmer.store import WorkDir

QUEUE_MAX_AGE: Final = 30.0  # seconds an answer of the scheduler is reused
_ENDED_BY_RECORD: Final = frozenset({"done", "stopped", "failed"})  # what a job's own end record says


@dataclass(frozen=True)
class QueueView:
    """The scheduler's answer, and when it was given."""

    at: float
    jobs: dict[str, QueuedJob]


@dataclass(frozen=True)
class JobRow:
    """One job of the campaign, as ``status`` shows it."""

    id: str
    state: str  # queued, running, held, done, failed, stopped, cancelled, lost
    host: str = ""
    since: float | None = None
    detail: str = ""


def queue_view(campaign: Campaign, state: CampaignState, *, max_age: float = QUEUE_MAX_AGE) -> QueueView | None:
    """:returns: the scheduler's list of the campaign's queued jobs, asked anew only when the cached one is older
    than *max_age*; ``None`` when the scheduler cannot be asked from here (its tools are not on PATH)
    """
    cached = _read_queue(campaign)
    if cached is not None and time.time() - cached.at < max_age:
        return cached
    try:
        jobs = schedulers.by_name(state.settings.scheduler).queue(state.settings)
    except CampaignError:
        return cached
    view = QueueView(time.time(), jobs)
    with contextlib.suppress(OSError):
        write_json(campaign.queue_file, {"at": view.at, "jobs": {key: asdict(job) for key, job in jobs.items()}})
    return view


def current_rows(campaign: Campaign, state: CampaignState) -> tuple[QueueView | None, list[JobRow]]:
    """:returns: the scheduler's answer (cached) and every job's row; the scheduler is not asked at all once every
    job wrote its end
    """
    cached = _read_queue(campaign)
    rows = job_rows(campaign, state, cached)
    if rows and all(row.state in _ENDED_BY_RECORD for row in rows):
        return cached, rows
    queue = queue_view(campaign, state)
    return queue, job_rows(campaign, state, queue)


def _read_queue(campaign: Campaign) -> QueueView | None:
    try:
        raw = json.loads(campaign.queue_file.read_text())
        return QueueView(float(raw["at"]), {key: QueuedJob(**job) for key, job in raw["jobs"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def job_rows(campaign: Campaign, state: CampaignState, queue: QueueView | None) -> list[JobRow]:
    """:returns: every job the campaign submitted, oldest first, with what it is doing or how it ended"""
    records = campaign.read_jobs()
    rows = [
        _row(job_id, submission.at, records.pop(job_id, None), queue, cancelled=state.cancelled)
        for submission in state.submissions
        for job_id in _job_ids(state.settings.scheduler, submission.id, submission.count)
    ]
    # Jobs of the job script submitted by hand (or run outside a scheduler): known from their own records only.
    rows += [_row(r.id, r.started, r, queue) for r in sorted(records.values(), key=lambda r: r.started)]
    return rows


def _job_ids(scheduler: str, submission: str, count: int) -> list[str]:
    separator = "_" if scheduler == "slurm" else "."
    return [f"{submission}{separator}{index}" for index in range(count)]


def _row(
    job_id: str, submitted: float, record: JobRecord | None, queue: QueueView | None, *, cancelled: bool = False
) -> JobRow:
    queued = queue.jobs.get(job_id) if queue else None
    if record is not None and record.ended is not None:
        failed = record.farmer_status not in (0, 1, 3, None)
        state = "failed" if failed else "done" if record.farmer_status in (0, 1) else "stopped"
        return JobRow(job_id, state, record.host, record.ended, record.outcome)
    if record is not None:
        if queued is None and queue is not None and queue.at > record.started + 5:
            # Started, not listed any more, and no end written: killed without a chance to say so.
            return JobRow(job_id, "lost", record.host, record.started, "ended without writing its end (killed?)")
        return JobRow(job_id, RUNNING, record.host, record.started)
    if queued is not None:
        return JobRow(job_id, queued.state, queued.host, submitted)
    # A job just submitted may not be listed yet; once the campaign is cancelled, one not listed was removed.
    if queue is not None and (cancelled or queue.at > submitted + 5):
        return JobRow(job_id, "cancelled", "", submitted, "left the queue without starting")
    return JobRow(job_id, QUEUED, "", submitted)


def live_jobs(rows: list[JobRow]) -> int:
    """:returns: how many jobs are queued, held or running"""
    return sum(row.state in (QUEUED, RUNNING, HELD) for row in rows)


def cancel(store: WorkDir, campaign: Campaign, *, now: bool) -> str:
    """Stop the campaign: its farmers drain (or stop at once when *now*), its queued jobs are removed, and no job
    submits a successor.

    :returns: what was done, as one line
    """
    campaign.load()  # no campaign here: one clear line, before its lock file is made
    with campaign.update() as state:
        state.cancelled = True
    drained = maintenance.drain(store, cancel=False)
    scheduler = schedulers.by_name(state.settings.scheduler)
    before = queue_view(campaign, state, max_age=0)
    scheduler.remove(state.settings, running=now)
    queued = sum(job.state != RUNNING for job in (before.jobs.values() if before else ()))
    running = sum(job.state == RUNNING for job in (before.jobs.values() if before else ()))
    with contextlib.suppress(OSError):
        campaign.queue_file.unlink()  # the next status asks again
    if now:
        return (
            f"removed {plural(queued, 'queued job')} and {plural(running, 'running job')} (their farmers return"
            f" their tasks); {drained}"
        )
    return f"removed {plural(queued, 'queued job')}; {plural(running, 'running job')} drain: {drained}"
