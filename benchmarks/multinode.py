"""Many farmers on one list, on a filesystem where every request costs a round trip: the multi-node case on one
machine.

For 1, 4, 8 and 16 farmers of 2 workers each (``--farmers``), started together on ONE tasklist of ``true`` and ONE
work directory, both on a ``latencyfs.py`` mount that delays every request by ``--delay-ms`` (0.5 ms: a Lustre or
NFS metadata server), each farmer named as a host of its own (``SLURMD_NODENAME``), it prints in one run:

- the aggregate tasks per second (tasks over the time from the start to the last farmer's end);
- the filesystem requests per task (every request the mount served, lookups, reads, writes and locks included);
- the lock acquisitions per task (exclusive ``flock`` requests granted);

and, as references on the local disk, the same single farmer and ``xargs -P2``. Every run is checked: each task
exactly once in ``finished``, nothing left, or the script fails. ``--rounds`` runs give medians and min-max spreads.
``--repo`` measures another checkout of the product (its ``bin/pytaskfarmer.py`` with its own package first on
``PYTHONPATH``), so one script compares two versions::

    .venv/bin/python benchmarks/multinode.py --tasks 2000 --rounds 3
    .venv/bin/python benchmarks/multinode.py --repo /tmp/old-checkout --tasks 600 --farmers 1,4

Needs FUSE (``/dev/fuse``, Debian's ``fuse3``) and ``mfusepy`` (``pip install --group bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from _common import nproc

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE: Final = Path(__file__).resolve().parent
MOUNT_WAIT: Final = 10.0


class BenchmarkError(RuntimeError):
    """A run did not do every task exactly once: its figures mean nothing."""


@dataclass(frozen=True)
class Figures:
    """One run."""

    tasks_per_s: float
    requests_per_task: float | None = None
    locks_per_task: float | None = None


@contextlib.contextmanager
def latency_mount(scratch: Path, *, delay_ms: float) -> Iterator[tuple[Path, dict[str, int]]]:
    """Mount a fresh ``latencyfs.py`` under *scratch*; after the block, the dict holds its request counts."""
    backing, mount, stats = scratch / "backing", scratch / "mnt", scratch / "stats.json"
    backing.mkdir(parents=True)
    mount.mkdir()
    argv = [sys.executable, str(HERE / "latencyfs.py"), str(backing), str(mount), "--delay-ms", str(delay_ms)]
    server = subprocess.Popen([*argv, "--stats", str(stats)], stderr=subprocess.DEVNULL)
    counts: dict[str, int] = {}
    try:
        deadline = time.monotonic() + MOUNT_WAIT
        while not os.path.ismount(mount):
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError("latencyfs.py did not mount (is /dev/fuse there, and mfusepy installed?)")
            time.sleep(0.05)
        yield mount, counts
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=False, capture_output=True)
        try:
            server.wait(timeout=MOUNT_WAIT)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGKILL)
            server.wait()
        if stats.exists():
            counts.update(json.loads(stats.read_text()))


def _farmers(repo: Path, directory: Path, farmers: int, *, workdir: Path) -> float:
    """Run *farmers* farmers together on ``directory/tasks.txt``. :returns: the seconds until the last one ended"""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    argv = [sys.executable, str(repo / "bin" / "pytaskfarmer.py"), "-n", "2", "-q", "-w", str(workdir)]
    started = time.perf_counter()
    running = [
        subprocess.Popen(
            [*argv, str(directory / "tasks.txt")],
            env={**env, "SLURMD_NODENAME": f"node{index}"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(farmers)
    ]
    for farmer in running:
        _, stderr = farmer.communicate()
        if farmer.returncode != 0:
            raise BenchmarkError(f"a farmer exited {farmer.returncode}: {stderr.strip()}")
    return time.perf_counter() - started


def _check(workdir: Path, tasks: int) -> None:
    finished = [line.split(" ", 1)[0] for line in (workdir / "finished").read_text().splitlines()]
    if sorted(int(x) for x in finished) != list(range(tasks)):
        duplicates = len(finished) - len(set(finished))
        raise BenchmarkError(f"{len(set(finished))} of {tasks} tasks finished, {duplicates} twice")
    if (workdir / "toprocess").stat().st_size:
        raise BenchmarkError("tasks left in toprocess")


def shared_run(repo: Path, scratch: Path, *, farmers: int, tasks: int, delay_ms: float) -> Figures:
    """One run of *farmers* farmers on the latency filesystem."""
    with latency_mount(scratch, delay_ms=delay_ms) as (mount, counts):
        (mount / "tasks.txt").write_bytes(b"true\n" * tasks)
        seconds = _farmers(repo, mount, farmers, workdir=mount / "wd")
        _check(mount / "wd", tasks)
    requests = sum(n for kind, n in counts.items() if kind != "lock acquisitions")
    return Figures(tasks / seconds, requests / tasks, counts.get("lock acquisitions", 0) / tasks)


def local_run(repo: Path, scratch: Path, *, tasks: int) -> Figures:
    """The same single farmer on the local disk."""
    scratch.mkdir(parents=True)
    (scratch / "tasks.txt").write_bytes(b"true\n" * tasks)
    seconds = _farmers(repo, scratch, 1, workdir=scratch / "wd")
    _check(scratch / "wd", tasks)
    return Figures(tasks / seconds)


def xargs_run(scratch: Path, *, tasks: int) -> Figures:
    """``xargs -P2`` running the same lines, on the local disk."""
    scratch.mkdir(parents=True)
    tasklist = scratch / "tasks.txt"
    tasklist.write_bytes(b"true\n" * tasks)
    started = time.perf_counter()
    with tasklist.open("rb") as lines:
        subprocess.run(["xargs", "-P", "2", "-I{}", "sh", "-c", "{}"], stdin=lines, check=True)
    return Figures(tasks / (time.perf_counter() - started))


def _spread(values: list[float], fmt: str) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{format(median, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _row(name: str, runs: list[Figures]) -> str:
    rate = _spread([r.tasks_per_s for r in runs], ".0f")
    requests = [r.requests_per_task for r in runs if r.requests_per_task is not None]
    locks = [r.locks_per_task for r in runs if r.locks_per_task is not None]
    request_text = _spread(requests, ".1f") if requests else "-"
    lock_text = _spread(locks, ".3f") if locks else "-"
    return f"| {name} | {rate} | {request_text} | {lock_text} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks in the list (default: 2000)")
    parser.add_argument("--farmers", default="1,4,8,16", help="farmer counts to run (default: 1,4,8,16)")
    parser.add_argument("--delay-ms", type=float, default=0.5, help="per filesystem request (default: 0.5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout to measure (default: this)")
    args = parser.parse_args()
    if shutil.which("fusermount3") is None:
        parser.error("fusermount3 not found: apt-get install fuse3")
    counts = [int(n) for n in args.farmers.split(",")]
    results: dict[str, list[Figures]] = {}
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        for round_ in range(args.rounds):  # interleaved: a load change hits every configuration alike
            for farmers in counts:
                name = f"{farmers} farmer{'s' if farmers > 1 else ''} x 2 workers, {args.delay_ms:g} ms/request"
                where = scratch / f"shared-{farmers}-{round_}"
                figures = shared_run(args.repo, where, farmers=farmers, tasks=args.tasks, delay_ms=args.delay_ms)
                results.setdefault(name, []).append(figures)
            results.setdefault("1 farmer x 2 workers, local disk", []).append(
                local_run(args.repo, scratch / f"local-{round_}", tasks=args.tasks)
            )
            results.setdefault("`xargs -P2`, local disk", []).append(
                xargs_run(scratch / f"xargs-{round_}", tasks=args.tasks)
            )
    print(f"{args.tasks} tasks of `true`, {args.rounds} rounds, {nproc()} cores; median (min-max)")
    print("| configuration | tasks/s | filesystem requests per task | lock acquisitions per task |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        print(_row(name, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
