"""Throughput of pytaskfarmer against ``xargs -P`` and GNU Parallel on tasklists of ``true``.

Every tool runs the same tasklists (2,000 and 20,000 lines of ``true`` by default, written to a temporary
directory) with two parallel jobs, so the figures measure each tool's overhead per task:

- ``xargs -P 2 -I{} sh -c '{}'``: the baseline, every line run as a shell command;
- ``parallel -j2`` (GNU Parallel, skipped when it is not installed);
- ``pytaskfarmer.py --proc 2 -q`` with a fresh work directory per run; the run fails loudly unless
  ``WORKDIR/finished`` holds one line per task;
- optionally, with ``--pytaskfarmer-legacy PATH``, the ``pytaskfarmer.py`` script of PyTaskFarmer 0.1.0, on
  the smallest list only (its claim is O(N) per task, so it is slow on long lists).

The table gives the best wall-clock time of ``--repeat`` runs, the tasks per second, and that throughput as a
fraction of ``xargs``'s on the same list (``0.50x``: half as many tasks per second). The absolute figures depend
on the machine (and on what else runs on it); compare the ratios. Run it with the project's Python::

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --sizes 2000 --repeat 3 \\
        --pytaskfarmer-legacy /tmp/ptf/bin/pytaskfarmer.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from _common import count_lines, nproc, write_tasklist

REPO: Final = Path(__file__).resolve().parent.parent
FARMER: Final = REPO / "bin" / "pytaskfarmer.py"
LIST: Final = "{LIST}"
WORKDIR: Final = "{WORKDIR}"


class BenchmarkError(RuntimeError):
    """A tool failed or did not run every task: its timing means nothing."""


@dataclass(frozen=True)
class Tool:
    """How to run one tool on a tasklist.

    :param name: the name shown in the table
    :param argv: the command; ``{LIST}`` and ``{WORKDIR}`` are replaced by the tasklist and a fresh work directory
    :param stdin: the tasklist is fed on standard input
    :param counts_finished: the work directory's ``finished`` file must hold one line per task afterwards
    :param max_tasks: run on lists of at most this many tasks only
    """

    name: str
    argv: tuple[str, ...]
    stdin: bool = False
    counts_finished: bool = False
    max_tasks: int | None = None


@dataclass(frozen=True)
class Result:
    """The best time of one tool on one list."""

    tool: str
    tasks: int
    seconds: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000", help="comma-separated tasklist lengths (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool and list; the best counts (default: 1)")
    parser.add_argument(
        "--pytaskfarmer-legacy",
        type=Path,
        metavar="PATH",
        help="also time this PyTaskFarmer 0.1.0 pytaskfarmer.py script, on the smallest list only",
    )
    args = parser.parse_args(argv)
    args.sizes = sorted({int(size) for size in args.sizes.split(",")})
    if args.repeat < 1 or args.sizes[0] < 1:
        parser.error("--sizes and --repeat must be positive")
    return args


def legacy_argv(script: Path) -> tuple[str, ...]:
    """Run *script* with the Python of its own virtual environment when it has one (``bin/python``)."""
    python = script.parent / "python"
    prefix = (str(python),) if python.exists() else ()
    return (*prefix, str(script), "--proc", "2", "--workdir", WORKDIR, LIST)


def tools(legacy: Path | None, smallest: int) -> list[Tool]:
    """The tools to time, in table order; GNU Parallel only when installed."""
    found = [Tool("xargs -P2", ("xargs", "-P", "2", "-I{}", "sh", "-c", "{}"), stdin=True)]
    if shutil.which("parallel"):
        found.append(Tool("parallel -j2", ("parallel", "--will-cite", "-j2"), stdin=True))
    farmer = (sys.executable, str(FARMER), "--proc", "2", "-q", "-w", WORKDIR, LIST)
    found.append(Tool("pytaskfarmer", farmer, counts_finished=True))
    if legacy is not None:
        found.append(Tool("PyTaskFarmer 0.1.0", legacy_argv(legacy), counts_finished=True, max_tasks=smallest))
    return found


def run_once(tool: Tool, tasklist: Path, *, tasks: int) -> float:
    """Run *tool* on *tasklist* in a fresh work directory. :returns: wall-clock seconds.

    :raises BenchmarkError: when the tool fails or, for a farmer, did not finish every task
    """
    workdir = Path(tempfile.mkdtemp(prefix="wd_", dir=tasklist.parent))
    argv = [str(workdir) if arg == WORKDIR else str(tasklist) if arg == LIST else arg for arg in tool.argv]
    with tasklist.open("rb") as handle:
        start = time.perf_counter()
        stdin = handle if tool.stdin else subprocess.DEVNULL
        done = subprocess.run(argv, stdin=stdin, capture_output=True, cwd=workdir, check=False)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-2000:]
        msg = f"{tool.name} exited with status {done.returncode} on {tasks} tasks: {argv}\n{tail}"
        raise BenchmarkError(msg)
    if tool.counts_finished and (finished := count_lines(workdir / "finished")) != tasks:
        msg = f"{tool.name} finished {finished} of {tasks} tasks: {argv}"
        raise BenchmarkError(msg)
    shutil.rmtree(workdir)
    return seconds


def measure(tool: Tool, tasklist: Path, *, tasks: int, repeat: int) -> Result:
    best = min(run_once(tool, tasklist, tasks=tasks) for _ in range(repeat))
    return Result(tool.name, tasks, best)


def format_table(results: list[Result]) -> str:
    baseline = {result.tasks: result.seconds for result in results if result.tool.startswith("xargs")}
    lines = [f"{'tool':<20} {'tasks':>7} {'seconds':>8} {'tasks/s':>8} {'x xargs':>9}"]
    for result in results:
        ratio = baseline[result.tasks] / result.seconds  # throughput as a fraction of xargs's
        rate = result.tasks / result.seconds
        lines.append(f"{result.tool:<20} {result.tasks:>7} {result.seconds:>8.2f} {rate:>8.0f} {ratio:>8.2f}x")
    return "\n".join(lines)


def run_all(args: argparse.Namespace, directory: Path) -> list[Result]:
    results: list[Result] = []
    for tasks in args.sizes:
        tasklist = write_tasklist(directory, tasks)
        chosen = [tool for tool in tools(args.pytaskfarmer_legacy, args.sizes[0]) if tasks <= (tool.max_tasks or tasks)]
        results.extend(measure(tool, tasklist, tasks=tasks, repeat=args.repeat) for tool in chosen)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"nproc: {nproc()}; tasks are `true`, 2 parallel jobs, best of {args.repeat} run(s)")
    print("note: the figures depend on the machine and its load; compare the ratios, not the seconds")
    if not shutil.which("parallel"):
        print("GNU Parallel not found: skipped (apt-get install parallel)")
    with tempfile.TemporaryDirectory(prefix="ptf_throughput_") as directory:
        try:
            results = run_all(args, Path(directory))
        except BenchmarkError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
