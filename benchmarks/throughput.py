"""Throughput of pytaskfarmer against ``xargs -P`` and GNU Parallel on tasklists of ``true``.

Every tool runs the same tasklists (2,000 and 20,000 lines of ``true`` by default, or of ``--task COMMAND``, written
to ``--dir``, by default a new temporary directory) with two parallel jobs, so the figures measure each tool's
overhead per task:

- ``xargs -P 2 -I{} sh -c '{}'``: the baseline, every line run as a shell command;
- ``parallel -j2`` (GNU Parallel; with ``--parallel``, when installed: it takes minutes on 20,000 tasks);
- ``pytaskfarmer.py --proc 2 -q`` with a fresh work directory per run (a log file per task, the default), and the
  same with ``--logs stream`` (one log stream per worker); a run fails loudly unless ``WORKDIR/finished`` holds one
  line per task;
- optionally, with ``--pytaskfarmer-legacy PATH``, the ``pytaskfarmer.py`` script of PyTaskFarmer 0.1.0, on
  the smallest list only (its claim is O(N) per task, so it is slow on long lists).

The tools take turns within each of ``--rounds`` rounds, so that a change of the machine's load falls on all of
them. The table gives, per tool and list, the median tasks per second (min-max over the rounds), and that
throughput as a fraction of ``xargs``'s in the same round (``0.50x``: half as many tasks per second), median and
range. The absolute figures depend on the machine (and on what else runs on it); compare the ratios.

A task that prints something gets a log file of its own (``--task 'echo hello'``; a silent task's empty file is
reused for the next task), and a file creation costs what the filesystem makes it cost, which varies even from one
directory to the next (on ext4, an inode is sought in the block group of the directory): the script measures it in
a new directory beside the work directories, and after each run that wrote log files in that run's own ``logs``
directory, and prints both. Run it with the project's Python::

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --task 'echo hello'
    .venv/bin/python benchmarks/throughput.py --sizes 2000 --rounds 3 --parallel \\
        --pytaskfarmer-legacy /tmp/ptf/bin/pytaskfarmer.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    """The times of one tool on one list, one per round, and xargs's in the same rounds."""

    tool: str
    tasks: int
    seconds: list[float]
    baseline: list[float]

    def rates(self) -> list[float]:
        """:returns: tasks per second in each round"""
        return [self.tasks / seconds for seconds in self.seconds]

    def ratios(self) -> list[float]:
        """:returns: the throughput as a fraction of xargs's, in each round"""
        return [base / seconds for seconds, base in zip(self.seconds, self.baseline, strict=True)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000", help="comma-separated tasklist lengths (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool and list, in turns (default: 3)")
    parser.add_argument("--parallel", action="store_true", help="also time GNU Parallel (minutes on 20,000 tasks)")
    parser.add_argument("--dir", type=Path, help="where the tasklists and work directories go (default: a new temp)")
    parser.add_argument("--task", default="true", help="the command of every line (default: %(default)s)")
    parser.add_argument(
        "--pytaskfarmer-legacy",
        type=Path,
        metavar="PATH",
        help="also time this PyTaskFarmer 0.1.0 pytaskfarmer.py script, on the smallest list only",
    )
    args = parser.parse_args(argv)
    args.sizes = sorted({int(size) for size in args.sizes.split(",")})
    if args.rounds < 1 or args.sizes[0] < 1:
        parser.error("--sizes and --rounds must be positive")
    if not args.task.strip() or "\n" in args.task:
        parser.error("--task must be one non-empty line")
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: no such directory")
    return args


def legacy_argv(script: Path) -> tuple[str, ...]:
    """Run *script* with the Python of its own virtual environment when it has one (``bin/python``)."""
    python = script.parent / "python"
    prefix = (str(python),) if python.exists() else ()
    return (*prefix, str(script), "--proc", "2", "--workdir", WORKDIR, LIST)


def tools(args: argparse.Namespace) -> list[Tool]:
    """The tools to time, in table order."""
    found = [Tool("xargs -P2", ("xargs", "-P", "2", "-I{}", "sh", "-c", "{}"), stdin=True)]
    if args.parallel and shutil.which("parallel"):
        found.append(Tool("parallel -j2", ("parallel", "--will-cite", "-j2"), stdin=True))
    farmer = (sys.executable, str(FARMER), "--proc", "2", "-q", "-w", WORKDIR)
    found.append(Tool("pytaskfarmer", (*farmer, LIST), counts_finished=True))
    found.append(Tool("pytaskfarmer, stream", (*farmer, "--logs", "stream", LIST), counts_finished=True))
    if args.pytaskfarmer_legacy is not None:
        legacy = legacy_argv(args.pytaskfarmer_legacy)
        found.append(Tool("PyTaskFarmer 0.1.0", legacy, counts_finished=True, max_tasks=args.sizes[0]))
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
    if (workdir / "logs" / "log_0").exists():  # a log file per task: what one more costs in that very directory
        LOG_CREATES.append(create_cost(workdir / "logs", files=500))
    shutil.rmtree(workdir)
    return seconds


LOG_CREATES: list[float] = []  # microseconds, one figure per run that wrote a log file per task


def create_cost(directory: Path, files: int = 2000) -> float:
    """:returns: the median microseconds to create (and close) an empty file in *directory*; the files are removed"""
    times = []
    for number in range(files):
        start = time.perf_counter()
        os.close(os.open(directory / f"probe_{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.perf_counter() - start)
    for number in range(files):
        (directory / f"probe_{number}").unlink()
    return statistics.median(times) * 1e6


def _spread(values: list[float], form: str) -> str:
    return f"{format(statistics.median(values), form)} ({format(min(values), form)}-{format(max(values), form)})"


def format_table(results: list[Result]) -> str:
    lines = [f"{'tool':<22} {'tasks':>6}  {'tasks/s, median (min-max)':<27} {'x xargs, median (min-max)'}"]
    for result in results:
        rates, ratios = _spread(result.rates(), ",.0f"), _spread(result.ratios(), ".2f")
        lines.append(f"{result.tool:<22} {result.tasks:>6}  {rates:<27} {ratios}")
    return "\n".join(lines)


def run_all(args: argparse.Namespace, directory: Path) -> list[Result]:
    results: list[Result] = []
    for tasks in args.sizes:
        tasklist = write_tasklist(directory, tasks, args.task)
        chosen = [tool for tool in tools(args) if tasks <= (tool.max_tasks or tasks)]
        times: dict[str, list[float]] = {tool.name: [] for tool in chosen}
        for _ in range(args.rounds):
            for tool in chosen:  # in turns: a change of the machine's load falls on every tool
                times[tool.name].append(run_once(tool, tasklist, tasks=tasks))
        baseline = times[chosen[0].name]
        results.extend(Result(tool.name, tasks, times[tool.name], baseline) for tool in chosen)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"nproc: {nproc()}; tasks are `{args.task}`, 2 parallel jobs, {args.rounds} round(s) in turns")
    print("note: the figures depend on the machine and its load; compare the ratios, not the seconds")
    if args.parallel and not shutil.which("parallel"):
        print("GNU Parallel not found: skipped (apt-get install parallel)")
    with tempfile.TemporaryDirectory(prefix="ptf_throughput_", dir=args.dir) as directory:
        cost = create_cost(Path(tempfile.mkdtemp(prefix="creates_", dir=directory)))
        print(f"creating an empty file in a new directory beside the work directories: {cost:.0f} µs (median)")
        try:
            results = run_all(args, Path(directory))
        except BenchmarkError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    print(format_table(results))
    if LOG_CREATES:
        spread = _spread(LOG_CREATES, ".0f")
        print(f"creating one more file in the logs directory of each run with a log file per task: {spread} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
