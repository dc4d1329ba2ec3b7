"""Per-task overhead of the engine runners, against the engine's own command line, in the same run.

One function per runner kind (``docker_rows``...) measures N tasks of ``true`` (50 by default), one after the
other, in three ways:

- the engine's bare command line (for Docker: ``docker run --rm IMAGE true``): the baseline;
- the runner object itself, ``runner.run(taskid, "true", log)`` in this process: what the runner adds or saves;
- ``pytaskfarmer.py --proc 1`` on a tasklist of N lines: the whole farmer, start-up and checks included.

The table gives the total wall-clock time, the time per task and the ratio to the baseline. The absolute figures
depend on the machine and on what else runs on it: compare the ratios. Bring the engines up first::

    eval "$(ci/docker-up.sh /tmp/tf-docker | tail -n 1)"
    eval "$(ci/apptainer-install.sh /tmp/tf-apptainer | grep '^export ')"
    .venv/bin/python benchmarks/runners.py --tasks 50
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

REPO: Final = Path(__file__).resolve().parent.parent
FARMER: Final = REPO / "bin" / "pytaskfarmer.py"
sys.path.insert(0, str(REPO))  # run from a checkout without installing


class BenchmarkError(RuntimeError):
    """A task failed: its timing means nothing."""


@dataclass(frozen=True)
class Row:
    """One measurement: *tasks* tasks run one way by one runner kind in *seconds*."""

    runner: str
    way: str
    tasks: int
    seconds: float

    @property
    def per_task_ms(self) -> float:
        """:returns: milliseconds per task"""
        return 1000 * self.seconds / self.tasks


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _repeat_cli(argv: list[str], tasks: int) -> None:
    for _ in range(tasks):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            msg = f"{' '.join(argv)} failed with exit status {result.returncode}: {result.stderr.strip()[-300:]}"
            raise BenchmarkError(msg)


def _repeat_runner(runner: object, tasks: int, scratch: Path) -> None:
    run = runner.run  # type: ignore[attr-defined]  # any Runner
    with (scratch / "runner.log").open("w") as log:
        for taskid in range(tasks):
            status = run(taskid, "true", log)
            if status != 0:
                msg = f"{type(runner).__name__} task {taskid} failed with exit status {status}: see {log.name}"
                raise BenchmarkError(msg)


def _farm(definition: str, name: str, tasks: int, scratch: Path) -> None:
    home = scratch / "home"
    (home / "runners.d").mkdir(parents=True, exist_ok=True)
    (home / "runners.d" / "bench.ini").write_text(definition)
    tasklist = scratch / "tasks.txt"
    tasklist.write_text("true\n" * tasks)
    workdir = scratch / f"workdir-{time.monotonic_ns()}"
    argv = [sys.executable, str(FARMER), "-r", name, "--proc", "1", "-q", "-w", str(workdir), str(tasklist)]
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, env={**os.environ, "PYTASKFARMER_HOME": str(home)}
    )
    finished = (workdir / "finished").read_text().count("\n") if (workdir / "finished").exists() else 0
    if result.returncode != 0 or finished != tasks:
        tail = result.stderr.strip()[-300:]
        msg = f"pytaskfarmer.py -r {name}: exit status {result.returncode}, {finished}/{tasks} finished: {tail}"
        raise BenchmarkError(msg)


def docker_rows(tasks: int, *, image: str, scratch: Path) -> list[Row]:
    """Docker: ``docker run --rm IMAGE true`` against DockerRunner, directly and through the farmer.

    :param image: a local image with ``/bin/sh`` and ``true`` (``ci/docker-up.sh`` builds ``local/busybox``)
    """
    from taskfarmer.runners.docker import DockerRunner  # noqa: PLC0415  # after sys.path is set

    rows = []
    if shutil.which("docker"):
        bare = ["docker", "run", "--rm", image, "true"]
        rows.append(Row("docker", "docker run --rm (CLI)", tasks, _timed(lambda: _repeat_cli(bare, tasks))))
        # The same container as the runner's: docker-init, host network, the caller's uid:gid.
        user = f"{os.getuid()}:{os.getgid()}"
        alike = ["docker", "run", "--rm", "--init", "--network", "host", "--user", user, image, "true"]
        rows.append(Row("docker", "  + runner's flags (CLI)", tasks, _timed(lambda: _repeat_cli(alike, tasks))))
    runner = DockerRunner(image=image, shell="/bin/sh")  # noqa: S604  # the container's shell, not shell=True
    runner.preflight(workdir=scratch / "preflight")
    rows.append(Row("docker", "DockerRunner.run", tasks, _timed(lambda: _repeat_runner(runner, tasks, scratch))))
    definition = f"[bench]\nRunner = DockerRunner\nimage = {image}\nshell = /bin/sh\n"
    rows.append(
        Row("docker", "pytaskfarmer.py -n 1", tasks, _timed(lambda: _farm(definition, "bench", tasks, scratch)))
    )
    return rows


def apptainer_rows(tasks: int, *, image: str, scratch: Path) -> list[Row]:
    """Apptainer: ``apptainer exec IMAGE true`` against ApptainerRunner, directly and through the farmer.

    :param image: a SIF or sandbox with ``/bin/sh`` and ``true`` (``ci/apptainer-install.sh`` builds one)
    """
    from taskfarmer.runners.apptainer import ApptainerRunner  # noqa: PLC0415  # after sys.path is set

    rows = []
    executable = shutil.which("apptainer") or shutil.which("singularity")
    if executable is None or not image:
        msg = "apptainer: no engine on PATH or no image (--apptainer-image, or $TASKFARMER_TEST_SIF)"
        raise BenchmarkError(msg)
    bare = [executable, "exec", image, "true"]
    rows.append(Row("apptainer", "apptainer exec (CLI)", tasks, _timed(lambda: _repeat_cli(bare, tasks))))
    runner = ApptainerRunner(image=image, shell="/bin/sh")  # noqa: S604  # the container's shell, not shell=True
    runner.preflight(workdir=scratch / "preflight")
    rows.append(Row("apptainer", "ApptainerRunner.run", tasks, _timed(lambda: _repeat_runner(runner, tasks, scratch))))
    definition = f"[bench]\nRunner = ApptainerRunner\nimage = {image}\nshell = /bin/sh\n"
    rows.append(
        Row("apptainer", "pytaskfarmer.py -n 1", tasks, _timed(lambda: _farm(definition, "bench", tasks, scratch)))
    )
    return rows


RUNNERS: Final[dict[str, Callable[..., list[Row]]]] = {"apptainer": apptainer_rows, "docker": docker_rows}


def print_table(rows: list[Row]) -> None:
    """Print the rows, each with its ratio to the first row of the same runner kind (the engine's baseline)."""
    print(f"{'runner':10} {'way':24} {'tasks':>6} {'total s':>8} {'ms/task':>8} {'ratio':>6}")
    baseline: dict[str, float] = {}
    for row in rows:
        base = baseline.setdefault(row.runner, row.per_task_ms)
        print(
            f"{row.runner:10} {row.way:24} {row.tasks:6d} {row.seconds:8.2f} {row.per_task_ms:8.1f}"
            f" {row.per_task_ms / base:6.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=50, help="tasks per measurement (default: 50)")
    parser.add_argument("--runners", nargs="+", choices=sorted(RUNNERS), default=sorted(RUNNERS))
    parser.add_argument("--docker-image", default="local/busybox", help="image for docker (default: local/busybox)")
    parser.add_argument(
        "--apptainer-image", default=os.environ.get("TASKFARMER_TEST_SIF", ""), help="SIF for apptainer"
    )
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tf-bench-runners-") as scratch:
        for name in args.runners:
            options = {"image": args.docker_image if name == "docker" else args.apptainer_image}
            rows.extend(RUNNERS[name](args.tasks, scratch=Path(scratch), **options))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
