"""``taskfarmer job WORKDIR -- FARMER OPTIONS``: what each job of a campaign runs (its job script ``exec``s it).

It writes the job's record, runs the farmer (one per node, through ``srun``, for a multi-node Slurm job) so that it
stops ``margin`` seconds before the wall time and returns its running tasks, forwards the scheduler's signals to it,
stops the whole campaign when ``--max-failures`` failed tasks are reached, and at the end decides what comes next:

- the list is done: the campaign's queued jobs are removed (they would find nothing to do);
- the farmer ran out of time (or got SIGUSR1, the "move this job" signal) with tasks left: one successor job is
  submitted, unless the campaign was cancelled, the successor limit is reached, or no task ended in this job (tasks
  longer than the wall time would otherwise be resubmitted forever);
- anything else (SIGTERM of a cancel or an eviction, a broken farmer): nothing is submitted.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Final

from taskfarmer import maintenance, schedulers
from taskfarmer.campaign import Campaign, CampaignError, JobRecord, Submission
from taskfarmer.errors import TaskFarmerError
from taskfarmer.store import WorkDir, recorded_lock_path, slot_counts
from taskfarmer.store._leases import host_name

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

    from taskfarmer.schedulers import Scheduler

_LOGGER: Final = logging.getLogger(__name__)
_POLL: Final = 1.0  # seconds between two looks at the farmer
_FAILURE_CHECK: Final = 15.0  # seconds between two counts of the campaign's failed tasks
EXIT_STOPPED: Final = 3
EXIT_BROKEN: Final = 4


class JobRun:
    """One job of a campaign, from its start to its successor."""

    def __init__(self, workdir: Path, farmer_args: list[str]) -> None:
        self.campaign = Campaign(workdir)
        self.state = self.campaign.load()
        self.scheduler: Scheduler = schedulers.by_name(self.state.settings.scheduler)
        self.store = WorkDir(workdir, lock_path=recorded_lock_path(workdir) or workdir / ".lock")
        self.farmer_args = farmer_args
        started = time.time()
        job_id = self.scheduler.own_job_id() or f"{host_name()}-{started:.0f}"
        self.record = JobRecord(id=job_id, host=host_name(), started=started)
        self.signalled: signal.Signals | None = None
        self.successor: str | None = None  # the job this one submitted to go on after it
        self.deadline: float | None = None  # when the farmer stops by itself (--timeout), before the wall time
        self._farmer: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        """:returns: the job's exit status: 0 when it did its part (the list is done, or a successor goes on)"""
        self.campaign.write_job(self.record)
        ended_before = self._ended_tasks()
        if why := self._why_not_start():
            return self._end(None, f"started no farmer: {why}")
        try:
            status = self._run_farmer(self._farmer_argv())
        except (TaskFarmerError, OSError) as exc:
            self._end(EXIT_BROKEN, f"could not start the farmer: {exc}")
            raise
        self.record.finished_tasks = self._ended_tasks() - ended_before
        return self._end(status, self._next_step(status))

    def _why_not_start(self) -> str:
        if self.state.cancelled:
            return "the campaign was cancelled"
        if self.state.stopped:
            return f"the campaign stopped ({self.state.stopped})"
        if self.store.drain_requested():
            return f"{self.store.drain_file} exists (taskfarmer drain)"
        return ""

    def _ended_tasks(self) -> int:
        counts = self.store.counts()
        return counts.finished + counts.failed

    def _failed_tasks(self) -> int:
        """:returns: the failed tasks of the work directory (reads ``failed`` and the slots, not ``finished``)"""
        with self.store.failed.open("rb") as failed:
            written = sum(block.count(b"\n") for block in iter(lambda: failed.read(1 << 20), b""))
        return written + slot_counts(self.store.slot_views()).failed

    def _timeout(self) -> float | None:
        """:returns: when the farmer must stop: *margin* before the job's end, or the user's --timeout if sooner"""
        limits = [given] if (given := _given_timeout(self.farmer_args)) is not None else []
        end = self.scheduler.end_time(self.record.started, self.state.settings)
        if end is not None:
            limits.append(max(end - time.time() - self.state.settings.margin_seconds, 1.0))
        return min(limits, default=None)

    def _farmer_argv(self) -> list[str]:
        settings = self.state.settings
        argv = [sys.executable, "-m", "taskfarmer", "run", "--proc", str(settings.cpus), *self.farmer_args]
        if (timeout := self._timeout()) is not None:
            argv += ["--timeout", f"{timeout:.1f}"]
            self.deadline = time.time() + timeout
        if settings.max_failures is not None:
            argv += ["--max-failures", str(max(settings.max_failures - self._failed_tasks(), 1))]
        if settings.scheduler == "slurm" and settings.nodes > 1:
            argv = ["srun", f"--nodes={settings.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=0", *argv]
        return argv

    def _run_farmer(self, argv: list[str]) -> int:
        _LOGGER.warning("job %s on %s: %s", self.record.id, self.record.host, " ".join(argv))
        for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._forward)
        self._farmer = subprocess.Popen(argv)  # noqa: S603  # our own farmer, with the user's options
        next_check = time.monotonic() + _FAILURE_CHECK
        while (status := self._farmer.poll()) is None:
            time.sleep(_POLL)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + _FAILURE_CHECK
                self._check_failures()
        return status

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.signalled = signal.Signals(signum)
        if self._farmer is not None and self._farmer.poll() is None:
            self._farmer.send_signal(signum)

    def _check_failures(self) -> None:
        limit = self.state.settings.max_failures
        if limit is None or self.state.stopped:
            return
        failed = self._failed_tasks()
        if failed >= limit:
            self._stop_campaign(f"{failed} tasks failed, --max-failures is {limit}")

    def _stop_campaign(self, why: str) -> None:
        with self.campaign.update() as state:
            state.stopped = why
        self.state.stopped = why
        maintenance.drain(self.store, cancel=False)
        _LOGGER.warning("job %s: campaign stopped (%s): farmers drain, queued jobs removed", self.record.id, why)
        self._remove_queued()

    def _remove_queued(self) -> None:
        try:
            self.scheduler.remove(self.state.settings, running=False)
        except CampaignError as exc:
            _LOGGER.warning("job %s: could not remove the campaign's queued jobs: %s", self.record.id, exc)

    def _next_step(self, status: int) -> str:
        self._check_failures()
        self.state = self.campaign.load()
        counts = self.store.counts()
        if why := self._why_not_start():  # cancelled, stopped or drained: nothing follows
            return f"farmer exited with status {status}; {why}"
        if counts.left == 0:
            if counts.running == 0:
                self._remove_queued()
                return f"farmer exited with status {status}; the list is done: queued jobs removed"
            return f"farmer exited with status {status}; nothing left to claim (other farmers finish the rest)"
        timed_out = self.deadline is not None and time.time() >= self.deadline - 2
        out_of_time = self.signalled is signal.SIGUSR1 or (self.signalled is None and timed_out)
        if status != EXIT_STOPPED or not out_of_time:
            why = f" after SIG{self.signalled.name[3:]}" if self.signalled else ""
            return f"farmer exited with status {status}{why}; {counts.left} tasks left, no successor"
        return self._submit_successor(counts.left)

    def _submit_successor(self, left: int) -> str:
        if self.record.finished_tasks == 0:
            return (
                f"stopped at its wall time with no task ended in this job: no successor (are tasks longer than"
                f" --time?); {left} tasks left"
            )
        with self.campaign.update() as state:
            if state.successors >= state.settings.resubmits:
                return (
                    f"stopped at its wall time with {left} tasks left, but all {state.settings.resubmits} successors"
                    " of the campaign (--resubmits) were used"
                )
            job_file = self.campaign.submit_file if state.settings.scheduler == "htcondor" else self.campaign.script
            try:
                submission_id, ids = self.scheduler.submit(job_file, 1)
            except CampaignError as exc:
                return f"stopped at its wall time; {left} tasks left; submitting a successor failed: {exc}"
            state.submissions.append(Submission(submission_id, 1, time.time(), by=self.record.id))
        self.successor = ids[0]
        return f"stopped at its wall time with {left} tasks left: successor {ids[0]}"

    def _end(self, status: int | None, outcome: str) -> int:
        self.record.ended = time.time()
        self.record.farmer_status = status
        self.record.outcome = outcome
        self.campaign.write_job(self.record)
        _LOGGER.warning("job %s: %s", self.record.id, outcome)
        done = status in (None, 0, 1) or self.successor is not None
        return 0 if done else status or 0


def run_job(workdir: Path, farmer_args: list[str]) -> int:
    """:returns: the exit status of the job running this farmer"""
    return JobRun(workdir, farmer_args).run()


def _given_timeout(farmer_args: list[str]) -> float | None:
    """:returns: the last ``--timeout`` among the farmer's options (``submit`` checked that it is a number)"""
    found = None
    for index, word in enumerate(farmer_args):
        if word == "--timeout" and index + 1 < len(farmer_args):
            value = farmer_args[index + 1]
        elif word.startswith("--timeout="):
            value = word.split("=", 1)[1]
        else:
            continue
        with contextlib.suppress(ValueError):
            found = float(value)
    return found
