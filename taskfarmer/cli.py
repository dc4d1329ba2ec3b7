"""Command line: ``pytaskfarmer.py`` (PyTaskFarmer-compatible) and ``taskfarmer`` with subcommands.

The only module that prints errors and picks exit statuses:

    0  every task of the list finished (none failed, none left to process)
    1  the list is done, but some tasks failed (see WORKDIR/failed)
    2  bad input: nothing ran, nothing changed
    3  stopped early (signal, --timeout, or workers that keep dying): running tasks went back to the queue;
       run the same command again to go on
    130  stopped at once by a second Ctrl-C
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from taskfarmer import config
from taskfarmer.errors import TaskFarmerError, TaskListError
from taskfarmer.store import WorkDir, default_lock_path
from taskfarmer.store._ingest import open_tasklist

if TYPE_CHECKING:
    from collections.abc import Sequence

_LOGGER: Final = logging.getLogger("taskfarmer")
EXIT_OK: Final = 0
EXIT_FAILED_TASKS: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED: Final = 3
EXIT_INTERRUPTED: Final = 130


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        msg = f"must be at least 1, not {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        msg = f"must be more than 0 seconds, not {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


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
        "--tasklist", "-t", dest="handler", default="default", help="tasklist handler defined in tasklists.d/*.ini"
    )
    parser.add_argument("--lockdir", type=Path, help="directory for the lock file (default: $SCRATCH, else WORKDIR)")
    parser.add_argument(
        "--lease",
        type=_positive_seconds,
        default=600.0,
        help="seconds without heartbeat after which a farmer on another host is presumed dead (default: 600)",
    )
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping a task (default: 5)"
    )


def _run_parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, description="Run every command of a tasklist once, with N workers, crash-safe.")
    add_run_arguments(parser)
    return parser


def pytaskfarmer_main(argv: Sequence[str] | None = None) -> int:
    """``pytaskfarmer.py [options] tasklist``: run a tasklist."""
    args = _run_parser("pytaskfarmer.py").parse_args(argv)
    return _guarded(_run, args)


def main(argv: Sequence[str] | None = None) -> int:
    """``taskfarmer run|status|runners``."""
    parser = _Parser(prog="taskfarmer", description="Crash-safe task farmer for HPC and batch clusters.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_run_arguments(commands.add_parser("run", help="run a tasklist (same as pytaskfarmer.py)"))
    status = commands.add_parser("status", help="show the state of a work directory")
    status.add_argument("workdir", type=Path)
    status.add_argument("--lockdir", type=Path)
    commands.add_parser("runners", help="list the runners defined and where")
    args = parser.parse_args(argv)
    handlers = {"run": _run, "status": _status, "runners": _runners}
    return _guarded(handlers[args.command], args)


def _guarded(command: object, args: argparse.Namespace) -> int:
    _configure_logging(getattr(args, "verbose", 0))
    try:
        return command(args)  # type: ignore[operator, no-any-return]  # one of the _command functions
    except TaskFarmerError as exc:
        _LOGGER.debug("error details", exc_info=True)
        sys.stderr.write(f"pytaskfarmer: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s pytaskfarmer: %(message)s", stream=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from taskfarmer.run import run_tasklist  # noqa: PLC0415  # `status` and `runners` need none of it

    return run_tasklist(args)


def _status(args: argparse.Namespace) -> int:
    from taskfarmer.status import print_status  # noqa: PLC0415  # imported for this command only

    if not (args.workdir / "toprocess").is_file():
        msg = f"{args.workdir} is not a pytaskfarmer work directory (it has no toprocess file)."
        raise TaskListError(msg)
    store = WorkDir(args.workdir, lock_path=default_lock_path(args.workdir, args.lockdir))
    print_status(store, sys.stdout)
    return EXIT_OK


def _runners(_args: argparse.Namespace) -> int:
    catalog = config.runner_catalog()
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
