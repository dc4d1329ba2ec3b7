"""What ``taskfarmer report`` costs on a big farm: seconds and peak memory for N attempts in ``accounting.tsv``.

It writes a synthetic work directory (N tasks, 16 hosts of 64 workers, 2 % failed, durations log-normal around a
minute), then runs ``taskfarmer report`` on it as a user would::

    .venv/bin/python benchmarks/report.py --tasks 1000000
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from taskfarmer.store import WorkDir
from taskfarmer.store._records import ACCOUNTING_HEADER

HOSTS: Final = 16
WORKERS: Final = 64
FAILED_SHARE: Final = 0.02


def make_workdir(directory: Path, tasks: int) -> Path:
    """Write a tasklist of *tasks* lines and a work directory where every task ran. :returns: the work directory"""
    tasklist = directory / "tasks.txt"
    tasklist.write_bytes(b"".join(b"run_job --seed %d\n" % task for task in range(tasks)))
    store = WorkDir(directory / "tasks.txt_workdir")
    store.create()
    store.sync_tasklist(tasklist)
    store.toprocess.write_bytes(b"")
    generator = random.Random(42)  # noqa: S311  # synthetic figures, reproducible; nothing secret
    clocks = [1.8e9] * (HOSTS * WORKERS)
    with (
        store.accounting.open("wb") as accounting,
        store.finished.open("wb") as finished,
        store.failed.open("wb") as failed,
    ):
        accounting.write(ACCOUNTING_HEADER)
        for task in range(tasks):
            slot = generator.randrange(len(clocks))
            start, seconds = clocks[slot], generator.lognormvariate(4, 0.8)
            clocks[slot] = start + seconds
            status = "exit:1" if generator.random() < FAILED_SHARE else "ok"
            accounting.write(
                b"%d\t1\t%s\t%d\t%.3f\t%.3f\t%.3f\tnid%04d\t%d\tnid%04d.1.abcdef\t%d\t%.3f\t%.3f\tlogs/log_%d\n"
                % (task, status.encode(), status != "ok", start, start + seconds, seconds, slot // WORKERS,
                   slot % WORKERS, slot // WORKERS, generator.randrange(100_000, 4_000_000), seconds * 0.9, 0.1, task)
            )  # fmt: skip
            if status == "ok":
                finished.write(b"%d run_job --seed %d\n" % (task, task))
            else:
                failed.write(b"%d exit:1 run_job --seed %d\n" % (task, task))
    return store.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        workdir = make_workdir(Path(scratch), args.tasks)
        print(f"{args.tasks} attempts written in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "taskfarmer", "report", str(workdir)], check=True)
        elapsed = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size = (workdir / "report.html").stat().st_size / 1024
        print(f"taskfarmer report: {elapsed:.1f} s, peak memory {peak:.0f} MiB, report.html {size:.0f} KiB")


if __name__ == "__main__":
    main()
