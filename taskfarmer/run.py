"""``pytaskfarmer.py TASKLIST``: check everything the user gave, then farm, then say how it went."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from taskfarmer import allocation, config, gpus
from taskfarmer.cli import (
    EXIT_BROKEN,
    EXIT_FAILED_TASKS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    check_tasklist_has_tasks,
)
from taskfarmer.display import Display
from taskfarmer.errors import WorkDirError
from taskfarmer.farmer import Farmer, FarmerOptions, FarmerResult, StopReason
from taskfarmer.store import Counts, IngestResult, WorkDir, default_lock_path
from taskfarmer.words import plural
from taskfarmer.worker import TaskPolicy

if TYPE_CHECKING:
    import argparse

_LOGGER: Final = logging.getLogger(__name__)
_INVALID_SHOWN: Final = 5


def run_tasklist(args: argparse.Namespace) -> int:
    """Run the tasklist of *args* (see ``cli.add_run_arguments``).

    :returns: the exit status
    """
    prepared = prepare_workdir(args, preflight=True)
    store, runner, runner_object, handler = prepared.store, prepared.runner, prepared.runner_object, prepared.handler
    workdir = store.path
    work_end = allocation.work_end(end_time=args.end_time, timeout=args.timeout, task_duration=args.task_duration)
    options = FarmerOptions(
        tasklist=args.tasklist.resolve(),
        processes=args.proc,
        runner=runner,
        handler=handler,
        timeout=args.timeout,
        lease=args.lease,
        grace=args.grace,
        log_level=logging.getLogger().level,
        policy=TaskPolicy(timeout=args.task_timeout, memory=args.task_memory, retries=args.retries),
        max_failures=args.max_failures,
        gpus=_gpus(args.gpus),
        log_mode=args.logs,
        skip_existing=args.skip_existing,
        work_end=work_end,
        claim_until=work_end - args.task_duration if work_end is not None and args.task_duration else None,
    )
    if args.node_setup:
        allocation.run_node_setup(args.node_setup, workdir=workdir, log_dir=store.logs)
    display = Display(store, quiet=args.quiet)
    if display.live:
        logging.getLogger().handlers = [display.log_handler()]  # log lines above the live view, not through it
        options = dataclasses.replace(options, forward_logs=True)
    counts = display.counts
    display.announce(
        f"pytaskfarmer: {plural(counts.left, 'task')} to run ({counts.finished} finished, {counts.failed} failed"
        f" before) with {plural(args.proc, 'worker')}, runner {runner.name}, work directory {workdir}"
    )
    farmer = Farmer(store, options, listener=display.on_event, runner=runner_object)
    farmer.install_signal_handlers()
    started = time.monotonic()
    try:
        result = farmer.run()
    finally:
        display.close()
    return _summarize(store, result, time.monotonic() - started)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A work directory ready for farmers: its tasklist taken in, its runner and handler checked."""

    store: WorkDir
    runner: config.Definition
    runner_object: object
    handler: config.Definition


def prepare_workdir(args: argparse.Namespace, *, preflight: bool) -> Prepared:
    """Check the runner, the tasklist handler and the tasklist, then make the work directory and take the list in.

    *preflight* also checks what the runner needs on this host (an image, an engine): not on a login node that
    only submits jobs.
    """
    runner = config.runner_catalog().get(args.runner)
    # A wrong definition fails here, before the work directory is touched.
    runner_object, _ = config.build_runner(runner, grace=args.grace)
    _LOGGER.info("runner %s (%s) from %s", runner.name, runner.class_name, runner.source)
    handler = config.tasklist_catalog().get(args.handler)
    config.build_tasklist(handler)
    check_tasklist_has_tasks(args.tasklist)
    workdir = args.workdir or Path(f"{args.tasklist}_workdir")
    store = WorkDir(workdir, lock_path=default_lock_path(workdir, args.lockdir))
    store.max_lost = args.max_lost
    if why := store.stale_mark():
        raise WorkDirError(why)
    store.check_not_foreign()
    if preflight and hasattr(runner_object, "preflight"):  # PyTaskFarmer runners have none
        runner_object.preflight(workdir=workdir)
    store.create()
    _report_invalid(args.tasklist, store.sync_tasklist(args.tasklist, numbering=args.numbering))
    return Prepared(store, runner, runner_object, handler)


def _unfit_words(count: int) -> str:
    return "the next task needs" if count == 1 else f"the next {count} tasks need"


def _gpus(requested: list[str] | None) -> tuple[str, ...]:
    if requested != ["auto"]:
        return tuple(requested or ())
    found = gpus.detect()
    if not found:
        sys.stderr.write("pytaskfarmer: warning: --gpus auto found no GPU: the workers are not bound to any\n")
    _LOGGER.info("GPUs for the workers: %s", ",".join(found) or "none")
    return found


def _report_invalid(tasklist: Path, ingested: IngestResult | None) -> None:
    if ingested is None or not ingested.invalid:
        return
    for invalid in ingested.invalid[:_INVALID_SHOWN]:
        sys.stderr.write(
            f"pytaskfarmer: warning: {tasklist} line {invalid.line + 1} (task {invalid.taskid}) will not run:"
            f" {invalid.reason}; recorded in failed\n"
        )
    if ingested.invalid_count > _INVALID_SHOWN:
        sys.stderr.write(f"pytaskfarmer: warning: {ingested.invalid_count - _INVALID_SHOWN} more invalid lines\n")


def _summarize(store: WorkDir, result: FarmerResult, elapsed: float) -> int:
    counts = store.counts()
    ran = plural(result.ran, "task")
    sys.stderr.write(f"pytaskfarmer: {_state_line(counts)}; this farmer ran {ran} in {elapsed:.1f} s\n")
    status = _outcome(store, result, counts)
    if not result.tasklist_error:
        return status
    sys.stderr.write(
        f"pytaskfarmer: lines added to the tasklist while it ran were not taken in: {result.tasklist_error}\n"
    )
    return EXIT_USAGE if status in (EXIT_OK, EXIT_FAILED_TASKS) else status  # not done: it needs the user


def _outcome(store: WorkDir, result: FarmerResult, counts: Counts) -> int:
    """Say why the farmer ended, unless the list is done.

    :returns: the exit status
    """
    if result.out_of_time and counts.toprocess:
        sys.stderr.write(
            f"pytaskfarmer: the allocation (or --timeout) ends before another task could finish (--task-duration):"
            f" {plural(counts.toprocess, 'task')} left for the next job.\n"
        )
        return EXIT_STOPPED
    if result.drained and counts.toprocess:
        by_file = store.drain_requested()  # a SIGUSR2 too, maybe: the file is what the next farmer will see
        why = f"{store.drain_file} exists" if by_file else "SIGUSR2"
        then = "Remove that file (taskfarmer drain --cancel) and run" if by_file else "Run"
        sys.stderr.write(
            f"pytaskfarmer: drained ({why}): {plural(counts.toprocess, 'task')} left."
            f" {then} the same command again to go on.\n"
        )
        return EXIT_STOPPED
    if result.stopped is not None:
        return _stopped(store, result, result.stopped)
    if result.unfit:
        sys.stderr.write(
            f"pytaskfarmer: {_unfit_words(result.unfit)} more cores, GPUs or time than this farmer has"
            " (--proc, --gpus, the allocation's end or --timeout): left for a farmer that has them.\n"
        )
        return EXIT_STOPPED
    if counts.failed:
        sys.stderr.write(f"pytaskfarmer: {plural(counts.failed, 'task')} failed: see {store.failed}\n")
        return EXIT_FAILED_TASKS
    return EXIT_STOPPED if counts.toprocess else EXIT_OK


def _stopped(store: WorkDir, result: FarmerResult, reason: StopReason) -> int:
    if reason is StopReason.STORE:
        sys.stderr.write(f"pytaskfarmer: {result.error}\n")
        return EXIT_BROKEN
    if reason is StopReason.WORKERS_FAILING:
        sys.stderr.write(
            f"pytaskfarmer: stopped ({reason.value}, see above): their tasks are back in the queue. Fix what kills"
            f" them (memory, the runner, the node), then run the same command again (work directory {store.path}).\n"
        )
        return EXIT_BROKEN
    sys.stderr.write(
        f"pytaskfarmer: stopped ({reason.value}): {plural(len(result.returned), 'running task')} went back to the"
        f" queue. Run the same command again to go on (work directory {store.path}).\n"
    )
    return EXIT_INTERRUPTED if reason is StopReason.IMMEDIATE else EXIT_STOPPED


def _state_line(counts: Counts) -> str:
    line = f"{counts.finished} finished, {counts.failed} failed, {counts.toprocess} left"
    if counts.running or counts.claimed:
        line += f", {counts.running + counts.claimed} still running or claimed in other farmers"
    return line
