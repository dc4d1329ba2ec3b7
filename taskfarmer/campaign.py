"""A campaign: the farmer jobs ``taskfarmer submit`` queued for one work directory, and what became of each.

Everything is in ``WORKDIR/campaign/``, written by ``submit`` and by the jobs themselves:

- ``campaign.json``: the settings of the last ``submit``, every submission (its job IDs, and which job submitted it
  when it was a successor), and whether the campaign was cancelled or stopped.
- ``job.sh`` (and ``job.sub`` for HTCondor): the job script as submitted; a user can read it and submit it again.
- ``jobs/ID.json``: what each job wrote about itself: host, start, end, the farmer's exit status, what it did next.
- ``jobs/ID.out``: its output. ``queue.json``: the scheduler's last answer (see ``taskfarmer.jobs``).

``campaign.json`` changes a few times per job, under its own lock file (never the task store's lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import filelock

from taskfarmer.errors import TaskFarmerError

if TYPE_CHECKING:
    from collections.abc import Iterator

SUBMITTED_BY_USER: Final = "submit"  # Submission.by of a `taskfarmer submit`; a successor's is its job's ID
_DURATION: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CampaignError(TaskFarmerError):
    """A campaign cannot be submitted, read or changed as asked."""


@dataclass
class Settings:
    """How the jobs of a campaign are made (the options of the last ``taskfarmer submit``)."""

    scheduler: str  # "slurm" or "htcondor"
    tag: str  # the jobs' name (Slurm) or TaskfarmerCampaign attribute (HTCondor): finds this campaign's jobs
    jobs: int = 1
    nodes: int = 1
    cpus: int = 1
    wall_seconds: float | None = None
    margin_seconds: float = 60.0
    max_queued: int | None = None
    resubmits: int = 10
    max_failures: int | None = None
    partition: str = ""
    account: str = ""
    scheduler_options: list[str] = field(default_factory=list)
    submit_dir: str = ""
    farmer_args: list[str] = field(default_factory=list)


@dataclass
class Submission:
    """One call to the scheduler: *count* jobs under one ID (a Slurm array, an HTCondor cluster)."""

    id: str
    count: int
    at: float
    by: str = SUBMITTED_BY_USER


@dataclass
class CampaignState:
    """``campaign.json``."""

    settings: Settings
    submissions: list[Submission] = field(default_factory=list)
    cancelled: bool = False
    stopped: str = ""  # why the campaign submits nothing more (e.g. --max-failures reached); empty while it goes on

    @property
    def successors(self) -> int:
        """:returns: how many jobs were submitted by jobs that ran out of time"""
        return sum(s.count for s in self.submissions if s.by != SUBMITTED_BY_USER)


@dataclass
class JobRecord:
    """``jobs/ID.json``: what one job says about itself."""

    id: str
    host: str
    started: float
    ended: float | None = None
    farmer_status: int | None = None
    outcome: str = ""  # what happened and what the job did next, in words
    finished_tasks: int = 0  # tasks finished or failed in the work directory while this job ran


class Campaign:
    """The ``campaign`` directory of a work directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = workdir / "campaign"
        self.state_file = self.path / "campaign.json"
        self.jobs_dir = self.path / "jobs"
        self.queue_file = self.path / "queue.json"
        self.script = self.path / "job.sh"
        self.submit_file = self.path / "job.sub"
        self._lock = filelock.FileLock(self.path / "lock", timeout=120)

    def exists(self) -> bool:
        """:returns: whether ``taskfarmer submit`` was ever run on this work directory"""
        return self.state_file.is_file()

    def create(self) -> None:
        """Make the directories (nothing else: ``update`` writes the state)."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> CampaignState:
        """:raises CampaignError: when ``campaign.json`` is missing or unreadable"""
        try:
            raw = json.loads(self.state_file.read_text())
            return CampaignState(
                settings=Settings(**raw["settings"]),
                submissions=[Submission(**entry) for entry in raw["submissions"]],
                cancelled=raw.get("cancelled", False),
                stopped=raw.get("stopped", ""),
            )
        except FileNotFoundError:
            msg = f"{self.workdir} has no campaign: its jobs were not submitted with `taskfarmer submit`."
            raise CampaignError(msg) from None
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"{self.state_file} is damaged ({exc}); submit again with `taskfarmer submit` to rewrite it."
            raise CampaignError(msg) from None

    @contextlib.contextmanager
    def update(self, first: CampaignState | None = None) -> Iterator[CampaignState]:
        """Change ``campaign.json`` under its lock: the state read (*first* when there is none yet) is written back
        when the block ends.
        """
        with self._lock:
            state = first if first is not None and not self.exists() else self.load()
            yield state
            write_json(self.state_file, {**asdict(state)})

    def write_job(self, record: JobRecord) -> None:
        """Write (or rewrite) what a job says about itself."""
        write_json(self.jobs_dir / f"{record.id}.json", asdict(record))

    def read_jobs(self) -> dict[str, JobRecord]:
        """:returns: every job's record, by job ID (one read per job that started)"""
        records = {}
        for path in self.jobs_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                record = JobRecord(**json.loads(path.read_text()))
                records[record.id] = record
        return records

    def job_output(self, job_id: str) -> Path:
        """:returns: where the scheduler writes the output of job *job_id*"""
        return self.jobs_dir / f"{job_id}.out"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace *path* with *data* at once: a reader sees the old file or the new one, never half of it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it (mkstemp's 0600 hides it from a shared group)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
            out.write("\n")
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def parse_duration(text: str) -> float:
    """Wall time as Slurm writes it, or with a unit.

    ``90`` (minutes), ``30:00`` (minutes:seconds), ``2:00:00``, ``1-12``, ``1-12:30``, ``1-12:30:00`` (days-hours...),
    ``45s``, ``30m``, ``2h``, ``1.5d``.

    :returns: seconds
    :raises CampaignError: for anything else, or zero
    """
    cleaned = text.strip()
    if match := _DURATION.match(cleaned):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        seconds = _slurm_duration(cleaned)
    if seconds <= 0:
        msg = f"wall time {text!r} is not more than 0"
        raise CampaignError(msg)
    return seconds


def _slurm_duration(text: str) -> float:
    days, dash, clock = text.rpartition("-")
    parts = clock.split(":")
    if not all(part.isdigit() for part in [*parts, *([days] if dash else [])]) or len(parts) > 3:
        msg = f"wall time {text!r} is not like 90 (minutes), 30:00, 2:00:00, 1-12:00:00, 45s, 30m, 2h or 1d"
        raise CampaignError(msg)
    numbers = [int(part) for part in parts]
    if dash:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = [*numbers, 0, 0][:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(numbers) == 1:  # minutes
        return numbers[0] * 60.0
    if len(numbers) == 2:  # minutes:seconds
        return numbers[0] * 60.0 + numbers[1]
    return numbers[0] * 3600.0 + numbers[1] * 60 + numbers[2]


def slurm_time(seconds: float) -> str:
    """:returns: *seconds* as Slurm's ``--time`` (days-hours:minutes:seconds), rounded up to the second"""
    total = int(-(-seconds // 1))
    minutes, secs = divmod(total, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def default_margin(wall_seconds: float, grace: float) -> float:
    """:returns: how long before its wall time a farmer stops: its --grace and 30 s to spare, at most half the time"""
    return min(grace + 30.0, wall_seconds / 2)
