"""What operating features cost: the progress display, the accounting, and the files and metadata calls per task.

Three measurements, in one run, with 2 workers:

1. Throughput with each display, on a tasklist of ``true``: ``-q`` (none), the plain-line mode of a batch job
   (stderr not a terminal), and the live ``rich`` view on a terminal (the farmer runs under ``script``, which gives
   it a pseudo-terminal).
2. The store's claim-and-record step, in-process, by batch size: microseconds and lock holds per task.
3. Files created, and system calls naming a path in the work directory per task (what a shared filesystem's
   metadata server sees), in the default log mode (a file per task that prints) and the streamed mode (a file per
   worker), for silent tasks (``true``) and tasks that print (``echo hello``).
   Needs ``strace`` (``apt-get install strace``).

Run it with the project's Python (the figures depend on the machine; compare within one run)::

    .venv/bin/python benchmarks/operations.py --tasks 2000
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from taskfarmer.store import FarmerRecord, Holder, Outcome, SlotLog, SlotRecord, WorkDir, ended

REPO: Final = Path(__file__).resolve().parent.parent
FARMER: Final = [sys.executable, str(REPO / "bin" / "pytaskfarmer.py")]


def _farm(tasklist: Path, workdir: Path, *options: str, prefix: tuple[str, ...] = ()) -> float:
    started = time.perf_counter()
    command = [*FARMER, "-n", "2", "-w", str(workdir), *options, str(tasklist)]
    argv = ["script", "-qfec", " ".join(command), "/dev/null"] if prefix == ("script",) else [*prefix, *command]
    subprocess.run(argv, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    finished = len((workdir / "finished").read_text().splitlines())
    if finished != len(tasklist.read_text().splitlines()):
        msg = f"{' '.join(argv)}: {finished} tasks finished"
        raise RuntimeError(msg)
    return elapsed


def display_costs(tasklist: Path, scratch: Path, tasks: int, repeat: int) -> None:
    print(f"\n1. throughput by display ({tasks} tasks of `true`, 2 workers, best of {repeat}, runs interleaved)")
    print(f"{'display':32} {'seconds':>8} {'tasks/s':>8} {'vs -q':>7}")
    modes = [
        ("none (-q)", ("-q",), ()),
        ("plain lines (batch job)", (), ()),
        ("live rich view (terminal)", (), ("script",)),
    ]
    best = [float("inf")] * len(modes)
    for run in range(repeat):
        for index, (_, options, prefix) in enumerate(modes):
            seconds = _farm(tasklist, scratch / f"display-{index}-{run}", *options, prefix=prefix)
            best[index] = min(best[index], seconds)
    for (name, _, _), seconds in zip(modes, best, strict=True):
        print(f"{name:32} {seconds:8.2f} {tasks / seconds:8.0f} {seconds / best[0]:6.2f}x")


def _store_loop(root: Path, count: int, *, batch: int) -> tuple[float, float]:
    """Claim and record *count* tasks in-process, *batch* per claim, as a worker does (no task is run).

    :returns: microseconds per task, lock holds per task
    """
    root.mkdir()
    tasklist = root / "list.txt"
    tasklist.write_text("true\n" * count)
    store = WorkDir(root / "wd")
    store.create()
    store.sync_tasklist(tasklist)
    farmer = FarmerRecord.new(workers=1, lease=600)
    store.register(farmer)
    slot = SlotRecord(-1, "", farmer.name, 0, Holder.this_process(), 0.0)
    log = SlotLog(store.slot_path(farmer.name, 0))
    holds = 0
    started = time.perf_counter()
    while tasks := store.exchange(log, slot, want=batch):
        holds += 1
        for index, task in enumerate(tasks):
            log.start(index, attempt=1, log="")
            log.end(ended(slot, index, task, Outcome(0, 1.0, 2.0), retry=False))
    return (time.perf_counter() - started) / count * 1e6, (holds + 1) / count


def store_cost(scratch: Path) -> None:
    count = 3000
    print(f"\n2. store: claim and record {count} tasks in-process (local disk), by batch size")
    print(f"{'batch':>6} {'us/task':>8} {'lock holds/task':>16}")
    for batch in (1, 8, 64):
        micros, holds = _store_loop(scratch / f"store-{batch}", count, batch=batch)
        print(f"{batch:6d} {micros:8.0f} {holds:16.3f}")


def _workdir_calls(argv: list[str], workdir: Path) -> dict[str, int]:
    """:returns: how many times each system call named a path in *workdir* (``strace -f``, tasks included)"""
    with tempfile.NamedTemporaryFile(suffix=".strace") as trace:
        subprocess.run(["strace", "-f", "-e", "trace=%file", "-o", trace.name, *argv], check=True, capture_output=True)
        counts: dict[str, int] = {}
        for line in Path(trace.name).read_text().splitlines():
            match = re.match(r"\d+\s+(\w+)\((?:AT_FDCWD, )?\"([^\"]*)\"", line)
            if match and workdir.name in match.group(2):
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        return counts


def metadata_costs(scratch: Path, tasks: int) -> None:
    if shutil.which("strace") is None:
        print("\n3. metadata: strace not found (apt-get install strace): skipped")
        return
    print(f"\n3. metadata calls on the work directory per task ({tasks} tasks, 2 workers, strace -f)")
    print(f"{'log mode, tasks':24} {'files':>6} {'per task:':>10} calls by type")
    for mode, command in (("files", "true"), ("files", "echo hello"), ("stream", "true"), ("stream", "echo hello")):
        name = f"{mode}-{command.split()[0]}"
        tasklist = scratch / f"{name}.txt"
        tasklist.write_text(f"{command}\n" * tasks)
        workdir = scratch / f"meta-{name}"
        counts = _workdir_calls([*FARMER, "-q", "-n", "2", "--logs", mode, "-w", str(workdir), str(tasklist)], workdir)
        created = sum(1 for path in workdir.rglob("*") if path.is_file())
        total = sum(counts.values()) / tasks
        detail = ", ".join(f"{call} {count / tasks:.1f}" for call, count in sorted(counts.items(), key=lambda i: -i[1]))
        print(f"{mode + ', ' + command:24} {created:6d} {total:10.1f} {detail}")
    print("(files: files in the work directory afterwards; calls: those naming a path in it, all processes)")
    print("(a task that prints gets a log file of its own; a silent task's empty file is renamed for the next task)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--strace-tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        tasklist = scratch / "true.txt"
        tasklist.write_text("true\n" * args.tasks)
        display_costs(tasklist, scratch, args.tasks, args.repeat)
        store_cost(scratch)
        metadata_costs(scratch, args.strace_tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
