"""Scaling of pytaskfarmer with the length of the tasklist: the cost per task must not grow with it.

Two tasklists of ``true`` (1,000 and 1,000,000 lines by default) are written to a temporary directory, and the
farmer (``pytaskfarmer.py --proc 2 -q``, fresh work directory) runs the short one to completion and the long one
until ``--timeout`` (10 s by default) stops it. For each run the table shows:

- **first task starts**: seconds from the launch until ``WORKDIR/logs/log_0`` exists (target: under 1 s on
  the long list);
- **per task**: the run's wall-clock time minus that first-task latency, divided by the number of lines in
  ``WORKDIR/finished`` (so the start-up does not count; target: within 1.2x of the short list);
- **peak RSS**: of the farmer's main process and of its largest Python child (the workers, and
  multiprocessing's helper processes; the tasks themselves are not Python and are left out), sampled with
  psutil every 50 ms (target: within 1.2x of the short list).

After the long run (stopped by ``--timeout``, exit status 3) the script checks that no task was lost:
the lines of ``toprocess``, ``finished`` and ``failed`` add up to the length of the list. The short run must exit
0 with every task in ``finished``. Either check failing makes the script exit 1.

The absolute figures depend on the machine and its load; the ratios are what matters. Run it with the project's
Python::

    .venv/bin/python benchmarks/scaling.py
    .venv/bin/python benchmarks/scaling.py --timeout 30 --proc 4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil
from _common import count_lines, nproc, write_tasklist

REPO: Final = Path(__file__).resolve().parent.parent
FARMER: Final = REPO / "bin" / "pytaskfarmer.py"
POLL: Final = 0.002  # seconds between looks for the first task's log
SAMPLE: Final = 0.05  # seconds between memory samples
EXTRA_WAIT: Final = 300.0  # seconds a run may take beyond its --timeout before it counts as hung
STOPPED: Final = 3  # the farmer's exit status after --timeout
MIB: Final = 1 << 20


class BenchmarkError(RuntimeError):
    """The farmer failed, hung or lost tasks: its figures mean nothing."""


@dataclass
class Peak:
    """Largest resident set sizes seen, in bytes."""

    main: int = 0
    worker: int = 0


@dataclass(frozen=True)
class Run:
    """What one farmer run did and cost."""

    tasks: int
    returncode: int
    elapsed: float
    first_task: float
    finished: int
    failed: int
    toprocess: int
    peak: Peak
    stderr: str

    @property
    def per_task(self) -> float:
        """Seconds per finished task, start-up latency excluded."""
        return (self.elapsed - self.first_task) / max(self.finished, 1)


class MemorySampler(threading.Thread):
    """Record the peak RSS of a process and of its Python descendants until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.peak = Peak()
        self._main = psutil.Process(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self._sample()
            if self._stop_event.wait(SAMPLE):
                return

    def stop(self) -> Peak:
        self._stop_event.set()
        self.join()
        return self.peak

    def _sample(self) -> None:
        try:
            self.peak.main = max(self.peak.main, self._main.memory_info().rss)
            children = self._main.children(recursive=True)
        except psutil.Error:  # the farmer is gone
            return
        self.peak.worker = max([self.peak.worker, *map(python_rss, children)])


def python_rss(process: psutil.Process) -> int:
    """:returns: the RSS of *process* if it is a Python process (a worker, not a task), else 0"""
    try:
        return process.memory_info().rss if "python" in process.name().lower() else 0
    except psutil.Error:  # a task or worker that just ended
        return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="short list, run to completion (default: 1000)")
    parser.add_argument("--large", type=int, default=1_000_000, help="long list, run until --timeout (default: 1e6)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds the long list runs (default: 10)")
    parser.add_argument("--proc", type=int, default=2, help="farmer worker processes (default: 2)")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.large or args.timeout <= 0 or args.proc < 1:
        parser.error("need 0 < --small < --large, --timeout > 0 and --proc >= 1")
    return args


def wait_for_file(path: Path, process: subprocess.Popen[bytes], *, start: float) -> float:
    """:returns: seconds from *start* until *path* exists; :raises BenchmarkError: if *process* ends first"""
    while not path.exists():
        if process.poll() is not None and not path.exists():
            msg = f"the farmer exited with status {process.returncode} before {path} existed"
            raise BenchmarkError(msg)
        time.sleep(POLL)
    return time.perf_counter() - start


def wait_for_exit(process: subprocess.Popen[bytes], *, limit: float) -> None:
    try:
        process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        msg = f"the farmer did not end within {limit:.0f} s: killed"
        raise BenchmarkError(msg) from None


def farmer_argv(tasklist: Path, workdir: Path, *, proc: int, timeout: float | None) -> list[str]:
    argv = [sys.executable, str(FARMER), "--proc", str(proc), "-q", "-w", str(workdir), str(tasklist)]
    return argv if timeout is None else [*argv, "--timeout", str(timeout)]


def tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-2000:].strip()


def watch(process: subprocess.Popen[bytes], workdir: Path, *, start: float, limit: float) -> tuple[float, Peak]:
    """Sample *process* until it ends. :returns: the first task's start latency and the peak memory"""
    sampler = MemorySampler(process.pid)
    sampler.start()
    try:
        first_task = wait_for_file(workdir / "logs" / "log_0", process, start=start)
        wait_for_exit(process, limit=limit)
    finally:
        peak = sampler.stop()
        if process.poll() is None:
            process.kill()
            process.wait()
    return first_task, peak


def run_farmer(tasklist: Path, *, tasks: int, proc: int, timeout: float | None) -> Run:
    """Run the farmer on *tasklist* in a fresh work directory, timing its first task and sampling its memory.

    :raises BenchmarkError: when the farmer ends before its first task or hangs (with its stderr)
    """
    workdir = tasklist.with_suffix(".workdir")
    errors = tasklist.with_suffix(".stderr")
    with errors.open("wb") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            farmer_argv(tasklist, workdir, proc=proc, timeout=timeout), stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            first_task, peak = watch(process, workdir, start=start, limit=(timeout or 0) + EXTRA_WAIT)
        except BenchmarkError as exc:
            msg = f"{exc}; its stderr:\n{tail(errors)}"
            raise BenchmarkError(msg) from None
    elapsed = time.perf_counter() - start
    counts = {name: count_lines(workdir / name) for name in ("finished", "failed", "toprocess")}
    return Run(tasks, process.returncode, elapsed, first_task, peak=peak, stderr=tail(errors), **counts)


def check_complete(run: Run) -> None:
    """:raises BenchmarkError: unless the run exited 0 with every task finished"""
    if run.returncode != 0 or run.finished != run.tasks:
        msg = f"the {run.tasks}-task run exited {run.returncode} with {run.finished} finished:\n{run.stderr}"
        raise BenchmarkError(msg)


def check_nothing_lost(run: Run) -> str:
    """:returns: the accounting of the stopped run; :raises BenchmarkError: on a bad exit or a lost task"""
    total = run.toprocess + run.finished + run.failed
    accounting = (
        f"toprocess {run.toprocess:,} + finished {run.finished:,} + failed {run.failed:,} = {total:,} "
        f"of {run.tasks:,} (exit status {run.returncode})"
    )
    if run.returncode not in {0, STOPPED} or total != run.tasks:
        msg = f"tasks lost or bad exit status: {accounting}\n{run.stderr}"
        raise BenchmarkError(msg)
    return accounting


def row(label: str, short: float, long: float, *, target: str, ok: bool) -> str:
    ratio = f"{long / short:>6.2f}x" if short else f"{'-':>7}"
    return f"{label:<22} {short:>10.2f} {long:>10.2f} {ratio}  {target:<18} {'ok' if ok else 'MISSED'}"


def ratio_row(label: str, short: float, long: float) -> str:
    return row(label, short, long, target="<= 1.2x", ok=long <= 1.2 * short)


def format_table(small: Run, large: Run) -> str:
    return "\n".join(
        [
            f"{'':<22} {small.tasks:>10,} {large.tasks:>10,} {'ratio':>7}  {'target':<18} result",
            f"{'tasks finished':<22} {small.finished:>10,} {large.finished:>10,}",
            row(
                "first task starts (s)",
                small.first_task,
                large.first_task,
                target="< 1 s (long list)",
                ok=large.first_task < 1,
            ),
            ratio_row("per task (ms)", small.per_task * 1e3, large.per_task * 1e3),
            ratio_row("peak RSS main (MiB)", small.peak.main / MIB, large.peak.main / MIB),
            ratio_row("peak RSS worker (MiB)", small.peak.worker / MIB, large.peak.worker / MIB),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"nproc: {nproc()}; pytaskfarmer --proc {args.proc} on lists of `true`; the long one stopped by --timeout")
    print("note: the figures depend on the machine and its load; compare the ratios, not the absolute values")
    with tempfile.TemporaryDirectory(prefix="ptf_scaling_") as name:
        directory = Path(name)
        try:
            small = run_farmer(write_tasklist(directory, args.small), tasks=args.small, proc=args.proc, timeout=None)
            check_complete(small)
            large_list = write_tasklist(directory, args.large)
            large = run_farmer(large_list, tasks=args.large, proc=args.proc, timeout=args.timeout)
            accounting = check_nothing_lost(large)
        except BenchmarkError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
    print(format_table(small, large))
    print(f"no task lost after the stop: {accounting}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
