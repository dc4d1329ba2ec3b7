"""The batch systems ``taskfarmer submit`` talks to: Slurm and HTCondor, through their command-line tools.

Each one writes the job files of a campaign, submits N jobs in one call (a Slurm array, an HTCondor cluster), lists
the campaign's jobs still in its queue (one call, found by the campaign's tag, so admins see no per-job polling),
removes them, and tells a job its own ID.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

from taskfarmer import allocation, process
from taskfarmer.campaign import CampaignError, Settings, slurm_time

if TYPE_CHECKING:
    from pathlib import Path

    from taskfarmer.campaign import Campaign

_TOOL_TIMEOUT: Final = 60.0
JOB_ID_VARIABLE: Final = "TASKFARMER_JOB_ID"  # set in HTCondor jobs by the submit file
# Scheduler states, by what they mean for a campaign's job.
QUEUED: Final = "queued"
RUNNING: Final = "running"
HELD: Final = "held"
_SLURM_STATES: Final = {
    "PENDING": QUEUED,
    "REQUEUED": QUEUED,
    "REQUEUE_HOLD": HELD,
    "REQUEUE_FED": QUEUED,
    "CONFIGURING": RUNNING,
    "RUNNING": RUNNING,
    "COMPLETING": RUNNING,
    "SIGNALING": RUNNING,
    "RESIZING": RUNNING,
    "STAGE_OUT": RUNNING,
    "SUSPENDED": HELD,
    "STOPPED": HELD,
}
_CONDOR_STATES: Final = {"1": QUEUED, "2": RUNNING, "5": HELD, "6": RUNNING, "7": HELD}  # JobStatus; 3, 4: gone


@dataclass(frozen=True)
class QueuedJob:
    """A job of the campaign as the scheduler lists it."""

    state: str  # QUEUED, RUNNING or HELD
    host: str = ""


class Scheduler(Protocol):
    """What a campaign needs from a batch system."""

    name: ClassVar[str]
    submit_command: ClassVar[str]

    def write_job_files(self, campaign: Campaign, settings: Settings, command: str) -> Path:
        """Write the job script (and submit description) that runs *command*.

        :returns: the file to submit
        """

    def submit(self, job_file: Path, count: int) -> tuple[str, list[str]]:
        """Queue *count* jobs.

        :returns: the submission's ID and its jobs' IDs
        """

    def queue(self, settings: Settings) -> dict[str, QueuedJob]:
        """:returns: the campaign's jobs still in the queue, by job ID"""

    def remove(self, settings: Settings, *, running: bool) -> None:
        """Remove the campaign's queued jobs (and the running ones too when *running*)."""

    def own_job_id(self) -> str | None:
        """:returns: the ID of the job this process runs in (``None``: not in one of this scheduler's jobs)"""

    def end_time(self, started: float, settings: Settings) -> float | None:
        """:returns: when this job's wall time ends (epoch seconds), ``None`` when it has no limit"""


def _run(argv: list[str]) -> str:
    """:returns: the tool's output; :raises CampaignError: when it fails, with what it said"""
    tool = shutil.which(argv[0])
    if tool is None:
        msg = f"{argv[0]} is not on PATH: run this on a host that can submit jobs."
        raise CampaignError(msg)
    try:
        result = process.run_tool([tool, *argv[1:]], timeout=_TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        msg = f"{argv[0]} failed: {exc}"
        raise CampaignError(msg) from None
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())
        msg = f"{shlex.join(argv)} failed (exit status {result.returncode}): {said}"
        raise CampaignError(msg)
    return result.stdout


def _header(campaign: Campaign, settings: Settings) -> str:
    workdir = shlex.quote(str(campaign.workdir))
    return (
        f"# Written by `taskfarmer submit` on {time.strftime('%Y-%m-%d %H:%M:%S')} in {settings.submit_dir}: one"
        f" farmer job of the campaign of {campaign.workdir}.\n"
        f"# `taskfarmer status {workdir}` follows it, `taskfarmer cancel {workdir}` stops it.\n"
    )


class Slurm:
    """``sbatch --array``, ``squeue --name``, ``scancel --name``."""

    name: ClassVar[str] = "slurm"
    submit_command: ClassVar[str] = "sbatch"

    def write_job_files(self, campaign: Campaign, settings: Settings, command: str) -> Path:
        """The batch script, with every option as an ``#SBATCH`` line."""
        options = [
            f"--job-name={settings.tag}",
            f"--nodes={settings.nodes}",
            "--ntasks-per-node=1",
            f"--cpus-per-task={settings.cpus}",
            f"--chdir={settings.submit_dir}",
            f"--output={campaign.jobs_dir}/%A_%a.out",
            "--open-mode=append",
        ]
        if settings.wall_seconds:
            options.append(f"--time={slurm_time(settings.wall_seconds)}")
        options += [f"--partition={settings.partition}"] * bool(settings.partition)
        options += [f"--account={settings.account}"] * bool(settings.account)
        options += settings.scheduler_options
        lines = ["#!/bin/bash", _header(campaign, settings).rstrip("\n")]
        lines.append(f"# Submit {settings.jobs} more by hand: sbatch --array=0-{settings.jobs - 1} {campaign.script}")
        lines += [f"#SBATCH {option}" for option in options]
        lines.append(f"exec {command}")
        campaign.script.write_text("\n".join(lines) + "\n")
        campaign.script.chmod(0o755)
        return campaign.script

    def submit(self, job_file: Path, count: int) -> tuple[str, list[str]]:
        """One array of *count* elements."""
        output = _run(["sbatch", "--parsable", f"--array=0-{count - 1}", str(job_file)])
        array = output.strip().split(";")[0]  # "ID" or "ID;cluster"
        if not array.isdigit():
            msg = f"sbatch answered {output.strip()!r}, not a job ID"
            raise CampaignError(msg)
        return array, [f"{array}_{index}" for index in range(count)]

    def queue(self, settings: Settings) -> dict[str, QueuedJob]:
        """One ``squeue`` for the whole campaign."""
        output = _run(["squeue", "--noheader", "--array", f"--name={settings.tag}", "--format=%i|%T|%N"])
        jobs = {}
        for line in output.splitlines():
            job_id, state, nodes = [*line.strip().split("|"), "", ""][:3]
            if job_id:
                jobs[job_id] = QueuedJob(_SLURM_STATES.get(state, RUNNING), nodes)
        return jobs

    def remove(self, settings: Settings, *, running: bool) -> None:
        """``scancel`` by name: pending elements only, unless *running*."""
        states = [] if running else ["--state=PENDING"]
        _run(["scancel", f"--name={settings.tag}", f"--user={_user()}", *states])

    def own_job_id(self) -> str | None:
        """``ARRAYID_INDEX``."""
        array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")

    def end_time(self, started: float, settings: Settings) -> float | None:
        """What Slurm says (it may have started the job late, or given it less time)."""
        return allocation.slurm_end_time() or (started + settings.wall_seconds if settings.wall_seconds else None)


class HTCondor:
    """``condor_submit -queue N``, ``condor_q -constraint``, ``condor_rm -constraint``."""

    name: ClassVar[str] = "htcondor"
    submit_command: ClassVar[str] = "condor_submit"

    def write_job_files(self, campaign: Campaign, settings: Settings, command: str) -> Path:
        """The executable ``job.sh`` and the submit description ``job.sub`` (without its queue statement)."""
        campaign.script.write_text(f"#!/bin/bash\n{_header(campaign, settings)}exec {command}\n")
        campaign.script.chmod(0o755)
        lines = [
            _header(campaign, settings).rstrip("\n"),
            f"# Submit {settings.jobs} more by hand: condor_submit {campaign.submit_file} -queue {settings.jobs}",
            "universe = vanilla",
            f"executable = {campaign.script}",
            f"initialdir = {settings.submit_dir}",
            "should_transfer_files = NO",
            "getenv = true",
            f'environment = "{JOB_ID_VARIABLE}=$(ClusterId).$(ProcId)"',
            f'+TaskfarmerCampaign = "{settings.tag}"',
            f"request_cpus = {settings.cpus}",
            "# condor_rm and evictions: SIGTERM to the farmer, which returns its running tasks to the queue.",
            "kill_sig = SIGTERM",
            "want_graceful_removal = true",
            "job_max_vacate_time = 120",
            f"output = {campaign.jobs_dir}/$(ClusterId).$(ProcId).out",
            f"error = {campaign.jobs_dir}/$(ClusterId).$(ProcId).err",
            f"log = {campaign.jobs_dir}/condor.log",
            *_condor_wall_time(settings),
            *settings.scheduler_options,
        ]
        campaign.submit_file.write_text("\n".join(lines) + "\n")
        return campaign.submit_file

    def submit(self, job_file: Path, count: int) -> tuple[str, list[str]]:
        """One cluster of *count* jobs."""
        output = _run(["condor_submit", "-terse", str(job_file), "-queue", str(count)])
        first = output.strip().split(" - ")[0]  # "12.0 - 12.3"
        cluster = first.split(".")[0]
        if not cluster.isdigit():
            msg = f"condor_submit answered {output.strip()!r}, not job IDs"
            raise CampaignError(msg)
        return cluster, [f"{cluster}.{index}" for index in range(count)]

    def queue(self, settings: Settings) -> dict[str, QueuedJob]:
        """One ``condor_q`` for the whole campaign."""
        output = _run(["condor_q", "-constraint", _constraint(settings), "-af:j", "JobStatus", "RemoteHost"])
        jobs = {}
        for line in output.splitlines():
            job_id, status, host = [*line.split(), "", ""][:3]
            if job_id and status in _CONDOR_STATES:
                jobs[job_id] = QueuedJob(_CONDOR_STATES[status], "" if host == "undefined" else host)
        return jobs

    def remove(self, settings: Settings, *, running: bool) -> None:
        """``condor_rm`` of the idle and held jobs (every job when *running*)."""
        constraint = _constraint(settings) + ("" if running else " && JobStatus =!= 2")
        try:
            _run(["condor_rm", "-constraint", constraint])
        except CampaignError as exc:
            if "no jobs" not in str(exc).lower() and "couldn't find" not in str(exc).lower():
                raise

    def own_job_id(self) -> str | None:
        """From the environment the submit file sets."""
        return os.environ.get(JOB_ID_VARIABLE)

    def end_time(self, started: float, settings: Settings) -> float | None:
        """The campaign's ``--time`` from this job's start (``allowed_job_duration`` counts the same)."""
        return started + settings.wall_seconds if settings.wall_seconds else None


def _condor_wall_time(settings: Settings) -> list[str]:
    """HTCondor's own limit of the run time, as Slurm's --time: a job whose farmer hangs past it is held."""
    if not settings.wall_seconds:
        return []
    return [
        "# --time: the farmer stops --margin before it; a job that runs past it anyway is held (condor_rm clears it).",
        f"allowed_job_duration = {math.ceil(settings.wall_seconds)}",
    ]


def _constraint(settings: Settings) -> str:
    return f'TaskfarmerCampaign =?= "{settings.tag}"'


def _user() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())


SCHEDULERS: Final[dict[str, type[Slurm | HTCondor]]] = {"slurm": Slurm, "htcondor": HTCondor}


def by_name(name: str) -> Scheduler:
    """:returns: the scheduler called *name*"""
    return SCHEDULERS[name]()


def detect() -> str:
    """:returns: the scheduler whose submit command is on PATH (Slurm first); :raises CampaignError: when none is"""
    for name, command in (("slurm", "sbatch"), ("htcondor", "condor_submit")):
        if shutil.which(command):
            return name
    msg = "neither sbatch (Slurm) nor condor_submit (HTCondor) is on PATH: run this on a host that can submit jobs."
    raise CampaignError(msg)
