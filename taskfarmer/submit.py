"""``taskfarmer submit TASKLIST``: queue farmer jobs on Slurm or HTCondor for a tasklist, from a login node.

It checks everything a farmer would (runner, handler, tasklist), takes the list into the work directory (so
``status`` counts it at once), writes the job script into ``WORKDIR/campaign/``, submits N jobs in one call, records
their IDs and prints them. Nothing stays running on the login node: the jobs themselves submit their successors
(see ``taskfarmer.jobrun``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from taskfarmer import jobs, schedulers
from taskfarmer.campaign import (
    Campaign,
    CampaignError,
    CampaignState,
    Settings,
    Submission,
    default_margin,
    parse_duration,
)
from taskfarmer.words import plural

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from taskfarmer.store import WorkDir

# The options of `submit` itself, with whether each takes a value: every other word goes to the farmers.
SUBMIT_OPTIONS: Final = {
    "--scheduler": True,
    "--jobs": True,
    "--nodes": True,
    "--cpus": True,
    "--time": True,
    "--partition": True,
    "--account": True,
    "--scheduler-option": True,
    "--max-queued": True,
    "--resubmits": True,
    "--max-failures": True,
    "--margin": True,
    "--dry-run": False,
}


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except CampaignError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_submit_arguments(
    parser: argparse.ArgumentParser, positive: Callable[[str], int], count: Callable[[str], int]
) -> None:
    """The options of ``submit`` (beside the farmer's, which the jobs pass on)."""
    group = parser.add_argument_group(
        "jobs", "The other options go to every farmer, except --max-failures, which counts the whole campaign's."
    )
    group.add_argument(
        "--scheduler", choices=tuple(schedulers.SCHEDULERS), help="default: slurm if sbatch is on PATH, else htcondor"
    )
    group.add_argument("--jobs", type=positive, default=1, help="farmer jobs to queue (array elements) (default: 1)")
    group.add_argument("--nodes", type=positive, default=1, help="nodes per job, one farmer each (Slurm) (default: 1)")
    group.add_argument("--cpus", type=positive, help="CPUs per farmer = its workers (default: --proc if given, else 1)")
    group.add_argument("--time", type=_duration, help="wall time per job: 2:00:00, 90 (minutes), 30m, 2h, 1-00:00:00")
    group.add_argument("--partition", default="", help="Slurm partition")
    group.add_argument("--account", default="", help="Slurm account")
    group.add_argument(
        "--scheduler-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="another sbatch option (--qos=flex) or submit-file line (request_memory = 2G); repeatable",
    )
    group.add_argument(
        "--max-queued", type=positive, help="at most this many jobs of the campaign queued or running at once"
    )
    group.add_argument(
        "--resubmits",
        type=count,
        default=10,
        help="successors the jobs may submit in all when they run out of time with tasks left (default: 10)",
    )
    group.add_argument(
        "--margin", type=_duration, help="stop each farmer this long before its wall time (default: --grace + 30 s)"
    )
    group.add_argument("--dry-run", action="store_true", help="write the job script and print it; submit nothing")


def farmer_words(words: Sequence[str]) -> list[str]:
    """:returns: the command line of ``submit`` without its own options: what each job passes to its farmer"""
    kept: list[str] = []
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
            continue
        name = word.split("=", 1)[0]
        if name in SUBMIT_OPTIONS:
            skip_value = SUBMIT_OPTIONS[name] and "=" not in word
            continue
        kept.append(word)
    return kept


def submit(args: argparse.Namespace, words: Sequence[str]) -> str:
    """Queue the campaign's jobs (see the module's doc).

    :returns: what was submitted, for the user
    :raises CampaignError: for anything that stops the submission (nothing is submitted then)
    """
    from taskfarmer.run import prepare_workdir  # noqa: PLC0415  # run imports cli, which imports this lazily

    scheduler_name = args.scheduler or schedulers.detect()
    if scheduler_name == "htcondor" and args.nodes > 1:
        msg = "--nodes: HTCondor jobs run on one machine each; ask for more --jobs instead"
        raise CampaignError(msg)
    scheduler = schedulers.by_name(scheduler_name)
    if not args.dry_run and shutil.which(scheduler.submit_command) is None:
        msg = f"{scheduler.submit_command} is not on PATH: run this on a host that can submit {scheduler_name} jobs."
        raise CampaignError(msg)
    farmer_args = farmer_words(words)
    campaign = Campaign((args.workdir or Path(f"{args.tasklist}_workdir")).resolve())
    settings = _settings(args, scheduler_name, campaign, farmer_args)  # checked before the work directory is made
    store = prepare_workdir(args, preflight=False).store
    left = store.counts().left
    if left == 0:
        return f"nothing to submit: every task of {args.tasklist} finished or failed (work directory {store.path})"
    campaign.create()
    job_file = scheduler.write_job_files(campaign, settings, _job_command(campaign.workdir, farmer_args))
    if args.dry_run:
        with campaign.update(CampaignState(settings)) as current:
            current.settings = settings  # the jobs of a hand-made submission read it
        return f"wrote {job_file} (not submitted: --dry-run):\n{job_file.read_text()}"
    lines = _submit_jobs(store, campaign, scheduler, settings, job_file)
    lines[0] += f" for {plural(left, 'task')} to run; work directory {store.path}, job script {job_file}"
    return "\n".join(lines)


def _settings(args: argparse.Namespace, scheduler: str, campaign: Campaign, farmer_args: list[str]) -> Settings:
    cpus = args.cpus or (args.proc if _gave_proc(farmer_args) else 1)
    margin = args.margin if args.margin is not None else 0.0
    if args.time is not None and args.margin is None:
        margin = default_margin(args.time, args.grace)
    if args.time is not None and margin >= args.time:
        msg = f"--margin ({margin:.0f} s) leaves no time to run tasks in --time ({args.time:.0f} s)"
        raise CampaignError(msg)
    digest = hashlib.sha1(str(campaign.workdir).encode(), usedforsecurity=False).hexdigest()[:8]
    return Settings(
        scheduler=scheduler,
        tag=f"taskfarmer-{digest}",
        jobs=args.jobs,
        nodes=args.nodes,
        cpus=cpus,
        wall_seconds=args.time,
        margin_seconds=margin,
        max_queued=args.max_queued,
        resubmits=args.resubmits,
        max_failures=args.max_failures,
        partition=args.partition,
        account=args.account,
        scheduler_options=args.scheduler_option,
        submit_dir=str(Path.cwd()),
        farmer_args=farmer_args,
    )


def _gave_proc(farmer_args: list[str]) -> bool:
    return any(word in ("--proc", "-n") or word.startswith(("--proc=", "-n")) for word in farmer_args)


def _job_command(workdir: Path, farmer_args: list[str]) -> str:
    """:returns: the job script's command: ``taskfarmer job WORKDIR -- FARMER OPTIONS``"""
    return f"{_taskfarmer_command()} job {shlex.quote(str(workdir))} -- {shlex.join(farmer_args)}"


def _taskfarmer_command() -> str:
    """:returns: how the jobs call this program: by name when PATH finds this one (the jobs get the same PATH),
    else by its path
    """
    here = Path(sys.argv[0]).resolve()
    found = shutil.which("taskfarmer")
    if found and Path(found).resolve() == here:
        return "taskfarmer"
    if here.name == "taskfarmer" and os.access(here, os.X_OK):
        return shlex.quote(str(here))
    return f"{shlex.quote(sys.executable)} -m taskfarmer"


def _submit_jobs(
    store: WorkDir,
    campaign: Campaign,
    scheduler: schedulers.Scheduler,
    settings: Settings,
    job_file: Path,
) -> list[str]:
    """:returns: what was done, a line each"""
    notes = []
    state = campaign.load() if campaign.exists() else CampaignState(settings)
    live = jobs.live_jobs(jobs.job_rows(campaign, state, jobs.queue_view(campaign, state, max_age=0)))
    count = settings.jobs
    if settings.max_queued is not None:
        count = min(count, settings.max_queued - live)
        if count <= 0:
            msg = (
                f"the campaign already has {plural(live, 'job')} queued or running (--max-queued {settings.max_queued})"
            )
            raise CampaignError(msg)
    if state.cancelled or state.stopped:
        notes.append("the campaign was cancelled or stopped before: it goes on")
    if store.drain_requested():
        store.drain_file.unlink(missing_ok=True)
        notes.append(f"removed {store.drain_file}")
    with campaign.update(CampaignState(settings)) as current:
        submission_id, ids = scheduler.submit(job_file, count)
        current.submissions.append(Submission(submission_id, count, time.time()))
        current.settings, current.cancelled, current.stopped = settings, False, ""
    shown = ", ".join(ids) if len(ids) <= 8 else f"{ids[0]} ... {ids[-1]}"
    return [
        f"submitted {plural(count, settings.scheduler + ' job')} ({shown})",
        *notes,
        f"follow it with: taskfarmer status {store.path}; stop it with: taskfarmer cancel {store.path}",
    ]
