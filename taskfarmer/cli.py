"""Command line: ``pytaskfarmer.py`` (PyTaskFarmer-compatible) and ``taskfarmer`` with subcommands.

The only module that prints errors and picks exit statuses:

    0  every task of the list finished (none failed, none left to process)
    1  the list is done, but some tasks failed (see WORKDIR/failed)
    2  bad input: nothing ran, nothing changed
    3  stopped early (signal, --timeout, drain, --max-failures, end of the allocation): running tasks went back
       to the queue; run the same command again to go on
    4  stopped because its workers kept dying (a broken runner or environment), or this node sees a stale view of
       the work directory: fix it before running again
    130  stopped at once by a Ctrl-C during a stop (a second one, or one during a --timeout stop)
    141  the reader of its output went away (status | head); a farmer goes on, and exits with the farm's status
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from taskfarmer import config
from taskfarmer.allocation import parse_end_time
from taskfarmer.compat import ptf_verbose
from taskfarmer.errors import TaskFarmerError, TaskListError, WorkDirError
from taskfarmer.output import outlive_reader
from taskfarmer.store import WorkDir, default_lock_path, recorded_lock_path
from taskfarmer.store._ingest import open_tasklist
from taskfarmer.words import plural

if TYPE_CHECKING:
    from collections.abc import Sequence

_LOGGER: Final = logging.getLogger("taskfarmer")
EXIT_OK: Final = 0
EXIT_FAILED_TASKS: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED: Final = 3
EXIT_BROKEN: Final = 4
EXIT_INTERRUPTED: Final = 130
EXIT_BROKEN_PIPE: Final = 141  # what a shell reports for a command killed by SIGPIPE
MIN_WATCH_INTERVAL: Final = 0.5  # seconds: status --watch refreshes no more often
_DEFAULT_INTERVAL: Final = 2.0


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        if message.startswith(_UNRECOGNIZED):
            message = self._unknown_option(message) or message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def _unknown_option(self, message: str) -> str:
        """:returns: the first unknown option of an "unrecognized arguments" *message*, with the known option it
        resembles (``--proces 2 t.txt`` takes 2 for the tasklist: "unrecognized arguments: --proces t.txt" misleads)
        """
        words = message.removeprefix(_UNRECOGNIZED).split()
        words = words[: words.index("--")] if "--" in words else words  # after --, words are no options
        unknown = next((word.partition("=")[0] for word in words if _OPTION_LIKE.match(word)), "")
        if not unknown:
            return ""  # a stray word, or a negative number: argparse's own message says it
        close = difflib.get_close_matches(unknown, sorted(self._option_names()), n=1, cutoff=0.6)
        return f"unknown option {unknown}" + (f" (did you mean {close[0]}?)" if close else "")

    def parse_known_args(  # type: ignore[override]  # the same, remembering the subcommand for error()
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        self._verb = getattr(parsed, "verb", None)
        return parsed, extras

    def _option_names(self) -> set[str]:
        names = set(self._option_string_actions)
        verb = getattr(self, "_verb", None)
        for action in self._actions:  # a subcommand's leftovers are reported by its parent: its options count
            if isinstance(action, argparse._SubParsersAction) and verb in action.choices:  # noqa: SLF001
                names |= set(action.choices[verb]._option_string_actions)  # noqa: SLF001
        return {name for name in names if name.startswith("--")}


_UNRECOGNIZED: Final = "unrecognized arguments: "
_OPTION_LIKE: Final = re.compile(r"--?[A-Za-z]")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        msg = f"must be at least 1, not {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if not 0 < value < float("inf"):  # nan fails too
        msg = f"must be more than 0 seconds (and finite), not {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _grace_seconds(text: str) -> float:
    value = _seconds(text)
    if not 0 <= value < float("inf"):  # nan fails too
        msg = f"must be 0 seconds or more (and finite), not {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _end_time(text: str) -> float:
    try:
        end = parse_end_time(text)
    except TaskFarmerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if end is None:
        raise argparse.ArgumentTypeError(f"{text!r} is no time: give seconds since the epoch or 2026-11-21T08:00:00")
    if end <= time.time():
        raise argparse.ArgumentTypeError(f"{text} is in the past ({time.ctime(end)})")
    return end


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        msg = f"must not be negative, not {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _memory_size(text: str) -> int:
    """``4G``, ``512M``, ``1.5GiB``, ``2000000`` (bytes) -> bytes."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in _UNITS else (cleaned, "")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 4G or 512M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return int(value)


def _gpu_list(text: str) -> list[str]:
    gpus = [gpu.strip() for gpu in text.split(",") if gpu.strip()]
    if not gpus:
        raise argparse.ArgumentTypeError("give GPU ids such as 0,1,2,3, or auto")
    return gpus


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a farm run, as PyTaskFarmer has them (plus new long options)."""
    parser.add_argument("tasklist", type=Path, help="file with one shell command per line")
    parser.add_argument("--proc", "-n", type=_positive_int, default=8, help="number of worker processes (default: 8)")
    parser.add_argument(
        "--timeout", type=_positive_seconds, help="stop after this many seconds and return running tasks"
    )
    parser.add_argument("--workdir", "-w", type=Path, help="work directory (default: TASKLIST_workdir)")
    parser.add_argument("--verbose", "-v", action="count", default=0, help="more output: -v each task, -vv debug")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display, only errors and the summary")
    parser.add_argument(
        "--runner", "-r", default="default", help="runner defined in runners.d/*.ini (default: default)"
    )
    parser.add_argument(
        "--tasklist",
        "-t",
        dest="handler",
        default="default",
        help="tasklist handler defined in $PYTASKFARMER_HOME/tasklists.d/*.ini or ./*.ini",
    )
    parser.add_argument("--lockdir", type=Path, help="directory for the lock file (default: $SCRATCH, else WORKDIR)")
    parser.add_argument(
        "--numbering",
        choices=("lines", "tasks"),
        help="task IDs: lines (0-based line numbers, the default) or tasks (counting only task lines, from 0, as"
        " PyTaskFarmer 0.1.0 did); a work directory keeps the one it started with",
    )
    parser.add_argument(
        "--lease",
        type=_positive_seconds,
        default=600.0,
        help="seconds without heartbeat after which a farmer on another host is presumed dead (default: 600)",
    )
    parser.add_argument(
        "--grace",
        type=_grace_seconds,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when stopping a task (default: 5)",
    )
    parser.add_argument(
        "--logs",
        choices=("files", "stream"),
        default="files",
        help="files: one log file per task attempt (default); stream: one file per worker, for huge lists",
    )
    policy = parser.add_argument_group("per-task policies")
    policy.add_argument(
        "--task-timeout", type=_positive_seconds, help="kill a task after this many seconds: failed (timeout)"
    )
    policy.add_argument(
        "--task-memory", type=_memory_size, help="kill a task using more memory (4G, 512M): failed (memory)"
    )
    policy.add_argument("--retries", type=_count, default=0, help="run a failed task again up to N times (default: 0)")
    policy.add_argument("--max-failures", type=_positive_int, help="stop the farmer after this many failed tasks")
    policy.add_argument(
        "--skip-existing",
        action="store_true",
        help="record as finished (skipped:outputs), without running it, a task whose declared outputs all exist",
    )
    policy.add_argument(
        "--max-lost",
        type=_positive_int,
        default=3,
        help="a task running in this many farmers (or workers) that died fails as lost:K instead of running again"
        " (default: 3)",
    )
    policy.add_argument(
        "--gpus", type=_gpu_list, help="GPU ids shared round robin by the workers (0,1,2,3), or auto (detect)"
    )
    batch = parser.add_argument_group("batch allocations")
    batch.add_argument(
        "--task-duration",
        type=_positive_seconds,
        help="expected seconds per task: claim none that could not finish before the allocation ends",
    )
    batch.add_argument(
        "--end-time",
        type=_end_time,
        help="when the allocation ends (epoch seconds or 2026-11-21T08:00:00; default: the Slurm job's): no task is"
        " claimed that could not finish by then (--task-duration, a task's time= directive)",
    )
    batch.add_argument("--node-setup", help="shell command run once per node before the workers start, under a lock")


def _run_parser(prog: str) -> _Parser:
    parser = _Parser(
        prog=prog,
        description="Run every command of a tasklist once, with N workers, crash-safe.",
        epilog=_run_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser)
    _add_version(parser)
    return parser


def _run_epilog() -> str:
    runners = config.home() / "runners.d"
    statuses = (__doc__ or "").split("exit statuses:", 1)[-1].strip("\n")
    return f"Runners (-r) are defined in {runners}/*.ini (taskfarmer runners lists them).\n\nExit statuses:\n{statuses}"


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")


class _Version(argparse.Action):
    """``--version``, looked up when asked for: the package metadata costs every start a hundredth of a second."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        import importlib.metadata  # noqa: PLC0415  # only for --version

        sys.stdout.write(f"{parser.prog} {importlib.metadata.version('pytaskfarmer')}\n")
        parser.exit()


def pytaskfarmer_program() -> NoReturn:
    """The ``pytaskfarmer.py`` program."""
    exit_now(pytaskfarmer_main())


def taskfarmer_program() -> NoReturn:
    """The ``taskfarmer`` program."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """Exit with *code* once the output is written, without the interpreter's teardown of every imported module.

    What a command did is on disk by now; the teardown would add some 30 ms to every farm, a sixth of its fixed cost.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed: nothing more to say
            stream.flush()
    os._exit(code)


def pytaskfarmer_main(argv: Sequence[str] | None = None) -> int:
    """``pytaskfarmer.py [options] tasklist``: run a tasklist."""
    args = _run_parser("pytaskfarmer.py").parse_args(ptf_verbose(sys.argv[1:] if argv is None else list(argv)))
    return _guarded(_run, args)


def main(argv: Sequence[str] | None = None) -> int:
    """``taskfarmer run|status|runners``."""
    parser = _Parser(prog="taskfarmer", description="Crash-safe task farmer for HPC and batch clusters.")
    _add_version(parser)
    commands = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a tasklist (same as pytaskfarmer.py)",
        epilog=_run_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(run)
    status = commands.add_parser("status", help="show the state of a work directory (also while farmers run)")
    status.add_argument("workdir", type=Path, help="the work directory (or the tasklist: TASKLIST_workdir)")
    status.add_argument("--json", action="store_true", help="as JSON, for scripts")
    status.add_argument("--watch", action="store_true", help="a live view, refreshed until q or Ctrl-C")
    status.add_argument(
        "--interval",
        type=_positive_seconds,
        help=f"seconds between two refreshes (default: {_DEFAULT_INTERVAL:g})",
    )
    status.add_argument("--count", type=_positive_int, help="refresh this many times, then exit")
    runners = commands.add_parser("runners", help="list the runners defined and where; show one with a dry run")
    runners.add_argument("name", nargs="?", help="show this runner: its definition and what a task would run")
    runners.add_argument("--command", default="echo hello $PROC_NUMBER", help="the task line of the dry run")
    requeue = commands.add_parser("requeue", help="put failed tasks (or tasks of dead farmers) back in the queue")
    requeue.add_argument("workdir", type=Path, help="the work directory (or the tasklist: TASKLIST_workdir)")
    requeue.add_argument("--status", action="append", default=[], help="only failed tasks with this status (exit:*)")
    requeue.add_argument(
        "--id", dest="ids", type=_count, action="append", default=[], help="only this task (repeatable)"
    )
    requeue.add_argument("--dead", action="store_true", help="the tasks of farmers known to be dead")
    requeue.add_argument(
        "--farmer", action="append", default=[], help="the tasks of this farmer, lost before its lease expired"
    )
    requeue.add_argument(
        "--force", action="store_true", help="with --farmer: even if its heartbeat is fresh (its node is known gone)"
    )
    requeue.add_argument("--lockdir", type=Path, help="the farmers' --lockdir (default: the one they recorded)")
    failed = commands.add_parser("failed", help="print the failed tasks (or only their commands, for a new list)")
    failed.add_argument("workdir", type=Path, help="the work directory (or the tasklist: TASKLIST_workdir)")
    failed.add_argument(
        "--commands", action="store_true", help="only the commands: taskfarmer failed WD --commands > retry.txt"
    )
    drain = commands.add_parser("drain", help="make the farmers of a work directory finish their tasks and exit")
    drain.add_argument("workdir", type=Path, help="the work directory (or the tasklist: TASKLIST_workdir)")
    drain.add_argument("--cancel", action="store_true", help="stop draining: farmers claim tasks again")
    log = commands.add_parser("log", help="print the log of a task")
    log.add_argument("workdir", type=Path, help="the work directory (or the tasklist: TASKLIST_workdir)")
    log.add_argument("task", type=_count, help="the task ID (its line number, from 0)")
    log.add_argument("--attempt", type=_positive_int, help="which attempt, from 1 (default: the last)")
    check_fs = commands.add_parser("check-fs", help="test locking and consistency of a shared filesystem")
    check_fs.add_argument("directory", type=Path, help="a directory on the filesystem to check")
    peer = check_fs.add_mutually_exclusive_group()
    peer.add_argument("--peer", type=Path, help="the same directory through another mount point")
    peer.add_argument("--peer-serve", action="store_true", help="check with a host that runs --peer-wait on DIR")
    peer.add_argument("--peer-wait", action="store_true", help="answer the --peer-serve of another host on DIR")
    _add_campaign_commands(commands)
    words = sys.argv[1:] if argv is None else list(argv)
    if not words:
        parser.print_help(sys.stderr)  # rather than "the following arguments are required: verb"
        return EXIT_USAGE
    args = parser.parse_args(ptf_verbose(words) if words[:1] == ["run"] else words)
    handlers = {
        "run": _run,
        "status": _status,
        "runners": _runners,
        "requeue": _requeue,
        "drain": _drain,
        "failed": _failed,
        "log": _log,
        "check-fs": _check_fs,
        "submit": _submit,
        "cancel": _cancel,
        "job": _job,
        "report": _report,
    }
    args.words = words[1:]
    return _guarded(handlers[args.verb], args)


def _add_campaign_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    """The commands of a campaign of batch jobs: submit, cancel, job, report."""
    from taskfarmer.submit import add_submit_arguments  # noqa: PLC0415  # not for pytaskfarmer.py: faster start

    submit = commands.add_parser(
        "submit",
        help="queue farmer jobs for a tasklist on Slurm or HTCondor; they resubmit themselves until it is done",
        description="Queue farmer jobs for TASKLIST on Slurm or HTCondor. Each job stops its farmer before its wall"
        " time and submits its successor while tasks are left. Example: taskfarmer submit --jobs 4 --cpus 8"
        " --time 2:00:00 tasks.txt --retries 1",
        allow_abbrev=False,
    )
    add_run_arguments(submit)
    add_submit_arguments(submit, _positive_int, _count)
    cancel = commands.add_parser("cancel", help="stop a submitted campaign: drain its farmers, remove its queued jobs")
    cancel.add_argument("workdir", type=Path, help="the work directory (or the tasklist: TASKLIST_workdir)")
    cancel.add_argument("--now", action="store_true", help="also stop the running jobs (their tasks go back)")
    job = commands.add_parser("job", help="what each job of `taskfarmer submit` runs (see its job script)")
    job.add_argument("workdir", type=Path, help="the campaign's work directory")
    job.add_argument("farmer_args", nargs=argparse.REMAINDER, help="-- then the farmer's options and tasklist")
    report = commands.add_parser("report", help="write an HTML page of plots and tables of a work directory's tasks")
    report.add_argument("workdir", type=Path, help="the work directory (or the tasklist: TASKLIST_workdir)")
    report.add_argument("--output", "-o", type=Path, help="the HTML file to write (default: WORKDIR/report.html)")


def _guarded(command: object, args: argparse.Namespace) -> int:
    if command is _run:
        outlive_reader()  # a farm goes on when its output's reader goes away (| head): its status is the farm's
    _configure_logging(getattr(args, "verbose", 0))
    try:
        return command(args)  # type: ignore[operator, no-any-return]  # one of the _command functions
    except TaskFarmerError as exc:
        _LOGGER.debug("error details", exc_info=True)
        sys.stderr.write(f"pytaskfarmer: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`taskfarmer status --json WD | head`): stop quietly, as cat or grep do. Python's
        # own flush of stdout at exit would otherwise fail again, with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s pytaskfarmer: %(message)s", stream=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from taskfarmer.run import run_tasklist  # noqa: PLC0415  # `status` and `runners` need none of it

    return run_tasklist(args)


def _existing_workdir(args: argparse.Namespace) -> WorkDir:
    beside = Path(f"{args.workdir}_workdir")
    if args.workdir.is_file() and (beside / "toprocess").is_file():
        args.workdir = beside  # a tasklist given: its default work directory, as the farmer names it
    if not (args.workdir / "toprocess").is_file():
        raise WorkDirError(_not_a_workdir(args.workdir, beside))
    # The farmers' lock, whatever this shell's $SCRATCH says: a change under another lock would exclude nothing.
    lock_dir = getattr(args, "lockdir", None)
    lock = default_lock_path(args.workdir, lock_dir) if lock_dir else recorded_lock_path(args.workdir)
    store = WorkDir(args.workdir, lock_path=lock or default_lock_path(args.workdir, None))
    store.check_not_foreign()  # PyTaskFarmer's files would be misread, and a change (requeue) would take them over
    return store


def _not_a_workdir(path: Path, beside: Path) -> str:
    """:returns: why *path* (given where a work directory was expected) is none, in the user's terms"""
    if path.is_file():
        return f"{path} has no work directory beside it ({beside}: give the one its farmers used, -w)."
    if not path.exists():
        return f"{path} does not exist (give a work directory, or the tasklist it was made for)."
    return f"{path} is not a pytaskfarmer work directory (it has no toprocess file)."


def _status(args: argparse.Namespace) -> int:
    from taskfarmer.status import print_status  # noqa: PLC0415  # imported for this command only

    if not args.watch and (args.count is not None or args.interval is not None):
        msg = "--count and --interval go with --watch (status alone prints once)"
        raise TaskFarmerError(msg)
    if args.watch:
        _check_watch(args)
        from taskfarmer.watch import watch  # noqa: PLC0415  # imported for this command only

        interval = _DEFAULT_INTERVAL if args.interval is None else args.interval
        watch(_existing_workdir(args), interval=interval, count=args.count, out=sys.stdout)
        return EXIT_OK
    print_status(_existing_workdir(args), sys.stdout, as_json=args.json)
    return EXIT_OK


def _check_watch(args: argparse.Namespace) -> None:
    if args.json:
        msg = "--watch draws a live view: it cannot be --json too (run status --json as often as you need)"
        raise TaskFarmerError(msg)
    if args.interval is not None and args.interval < MIN_WATCH_INTERVAL:
        msg = f"--interval {args.interval:g}: at least {MIN_WATCH_INTERVAL:g} s, to spare the shared filesystem"
        raise TaskFarmerError(msg)


def _requeue(args: argparse.Namespace) -> int:
    from taskfarmer import maintenance  # noqa: PLC0415  # imported for this command only

    if args.force and not args.farmer:
        msg = "--force goes with --farmer (it takes a live-looking farmer's tasks)"
        raise TaskFarmerError(msg)
    store = _existing_workdir(args)
    maintenance.check_farmers_gone(store, args.farmer, force=args.force)
    done = maintenance.requeue(store, statuses=args.status, ids=args.ids, dead=args.dead, farmers=args.farmer)
    sys.stdout.write(done + "\n")
    return EXIT_OK


def _drain(args: argparse.Namespace) -> int:
    from taskfarmer import maintenance  # noqa: PLC0415  # imported for this command only

    sys.stdout.write(maintenance.drain(_existing_workdir(args), cancel=args.cancel) + "\n")
    return EXIT_OK


def _failed(args: argparse.Namespace) -> int:
    from taskfarmer.maintenance import print_failed  # noqa: PLC0415  # imported for this command only

    store = _existing_workdir(args)
    left_out = print_failed(store, commands=args.commands, out=sys.stdout.buffer)
    if left_out:
        sys.stdout.flush()
        sys.stderr.write(
            f"pytaskfarmer: {plural(left_out, 'failed line')} left out: only a preview of each is recorded"
            f" (not UTF-8, too long, or a NUL byte); `taskfarmer failed {store.path}` shows them\n"
        )
    return EXIT_OK


def _log(args: argparse.Namespace) -> int:
    from taskfarmer.logs import print_log  # noqa: PLC0415  # imported for this command only

    print_log(_existing_workdir(args), args.task, attempt=args.attempt, out=sys.stdout.buffer)
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    from taskfarmer.submit import submit  # noqa: PLC0415  # imported for this command only

    sys.stdout.write(submit(args, args.words) + "\n")
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    from taskfarmer.campaign import Campaign  # noqa: PLC0415  # imported for this command only
    from taskfarmer.jobs import cancel  # noqa: PLC0415

    store = _existing_workdir(args)
    sys.stdout.write(cancel(store, Campaign(store.path.resolve()), now=args.now) + "\n")
    return EXIT_OK


def _job(args: argparse.Namespace) -> int:
    from taskfarmer.jobrun import run_job  # noqa: PLC0415  # imported for this command only

    farmer_args = args.farmer_args[1:] if args.farmer_args[:1] == ["--"] else args.farmer_args
    return run_job(args.workdir.resolve(), farmer_args)


def _report(args: argparse.Namespace) -> int:
    from taskfarmer.report import write_report  # noqa: PLC0415  # imported for this command only (and matplotlib)

    store = _existing_workdir(args)
    sys.stdout.write(f"{write_report(store, args.output or store.path / 'report.html')}\n")
    return EXIT_OK


def _check_fs(args: argparse.Namespace) -> int:
    from taskfarmer import checkfs, checkfs_peer  # noqa: PLC0415  # imported for this command only

    if args.peer_serve:
        checks = checkfs_peer.serve(args.directory)
    elif args.peer_wait:
        checks = checkfs_peer.wait(args.directory)
    else:
        checks = checkfs.run_checks(args.directory, peer=args.peer)
    failed = False
    for check in checks:
        sys.stdout.write(check.line() + "\n")
        sys.stdout.flush()
        failed = failed or check.passed is False
    return EXIT_FAILED_TASKS if failed else EXIT_OK


def _runners(args: argparse.Namespace) -> int:
    from taskfarmer.runners import CommandRunner  # noqa: PLC0415  # imported for this command only

    catalog = config.runner_catalog()
    if args.name:
        definition = catalog.get(args.name)
        runner, variables = config.build_runner(definition)
        sys.stdout.write(f"[{definition.name}] from {definition.source}\nRunner = {definition.class_name}\n")
        sys.stdout.writelines(f"{key} = {value}\n" for key, value in definition.options.items())
        sys.stdout.writelines(f"(environment) {key}={value}\n" for key, value in variables.items())
        sys.stdout.write(f"\na task running {args.command!r} gets:\n{runner.describe(args.command)}\n")
        if isinstance(runner, CommandRunner):
            sys.stdout.flush()
            runner.check_shell()  # as the farmer would before its first task (engines are checked by a real run)
        return EXIT_OK
    for name, definition in sorted(catalog.definitions.items()):
        sys.stdout.write(f"{name:20} {definition.class_name:40} {definition.source}\n")
    for broken in catalog.broken:
        sys.stdout.write(f"{'(unreadable)':20} {'':40} {broken}\n")
    return EXIT_OK


def check_tasklist_has_tasks(path: Path) -> None:
    """:raises TaskListError: when the tasklist cannot be read or holds no task (only blank and ``#`` lines)"""
    with open_tasklist(path) as source:
        for line in source:
            stripped = line.strip()
            if stripped and not stripped.startswith(b"#"):
                return
    msg = f"Tasklist {path} has no tasks (it is empty or holds only blank and # lines). Nothing to do."
    raise TaskListError(msg)
