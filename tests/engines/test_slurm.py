"""The Slurm job scripts of ``examples/`` themselves, submitted to a real cluster and checked from outside.

Needs a cluster that answers ``sinfo`` (``SLURM_CONF``) with at least the 3 nodes of ``ci/slurm-up.sh DIR``, which
makes one on this host (node1..node3, 2 CPUs each, one shared filesystem). The jobs get this test's environment
(``sbatch`` exports it) with the venv running the tests first on PATH, so they find ``pytaskfarmer.py`` there.
Every task appends ``ID NODE ATTEMPT`` to one file: the tests count the runs of each task across farmers and nodes.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psutil
import pytest

from taskfarmer.store import WorkDir
from tests.helpers import LONG, REPO, freeze_then_kill, ids, lines, throttled, wait_for, write_tasklist

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

EXAMPLES: Final = REPO / "examples"
VENV_BIN: Final = Path(sys.executable).parent
LEASE: Final = 10  # seconds: --lease of the farmers in the kill test
JOB_DEADLINE: Final = 120.0  # seconds for a small job to finish (a requeue alone waits ~20 s to start again)
POLL: Final = 0.5  # seconds between two scontrol calls
ENDED: Final = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)
LIVE: Final = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,REQUEUE_HOLD,REQUEUE_FED,RESIZING,SIGNALING"


@dataclass(frozen=True)
class Run:
    """One line of the tasks' shared output file: a task started on a node."""

    task: int
    node: str
    attempt: int


class Cluster:
    """Submits the example scripts, polls their jobs, and cancels whatever is left at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.jobs: list[str] = []
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def submit(self, script: str, *args: str, options: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
        """``sbatch`` ``examples/SCRIPT`` itself with *args*. :returns: the job ID"""
        result = subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--output={self.tmp_path}/slurm-%A_%a.out",
                f"--chdir={self.tmp_path}",
                *options,
                str(EXAMPLES / script),
                *args,
            ],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=LONG,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        job = result.stdout.strip().split(";", 1)[0]
        self.jobs.append(job)
        return job

    def records(self, job: str) -> list[dict[str, str]]:
        """:returns: the ``scontrol show job`` fields of *job* (one record per array element), ``[]`` once purged"""
        result = subprocess.run(
            ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=LONG, check=False
        )
        if result.returncode != 0:
            return []
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in result.stdout.splitlines() if line.strip()]

    def wait_ended(self, job: str, *, timeout: float = JOB_DEADLINE) -> list[dict[str, str]]:
        """Wait until every element of *job* has ended. :returns: their records"""
        records: list[dict[str, str]] = []

        def ended() -> bool:
            nonlocal records
            records = self.records(job)
            return bool(records) and all(r.get("JobState") in ENDED for r in records)

        wait_for(throttled(ended), timeout=timeout, what=f"job {job} to end\n{self.diagnostics()}")
        return records

    def diagnostics(self) -> str:
        """:returns: the job outputs, to read when a test fails"""
        outputs = sorted(self.tmp_path.glob("slurm-*.out"))
        return "\n".join(f"--- {path.name}:\n{path.read_text(errors='replace')}" for path in outputs)

    def cancel_all(self) -> None:
        """Cancel the jobs of this test and wait until none of them has a process left."""
        if not self.jobs:
            return
        subprocess.run(["scancel", *self.jobs], capture_output=True, timeout=LONG, check=False)

        def gone() -> bool:
            result = subprocess.run(
                ["squeue", "-h", "-o", "%i", "-t", LIVE, "-j", ",".join(self.jobs)],
                capture_output=True,
                text=True,
                timeout=LONG,
                check=False,
            )
            return result.returncode != 0 or not result.stdout.strip()

        wait_for(throttled(gone), timeout=LONG, what=f"jobs {self.jobs} to leave the cluster")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    assert (VENV_BIN / "pytaskfarmer.py").exists(), f"no pytaskfarmer.py next to {sys.executable}"
    submitted = Cluster(tmp_path)
    try:
        yield submitted
    finally:
        submitted.cancel_all()


def _tasklist(tmp_path: Path, count: int, seconds: float) -> tuple[Path, Path, Path]:
    """:returns: a tasklist of *count* tasks of *seconds* each, its work directory, and the file the tasks append to"""
    out = tmp_path / "runs"
    command = f'echo "$PROC_NUMBER ${{SLURMD_NODENAME:-none}} $TASKFARMER_ATTEMPT" >> {out}; sleep {seconds}'
    tasklist = write_tasklist(tmp_path / "tasks.txt", [command] * count)
    return tasklist, tmp_path / "workdir", out


def _runs(out: Path) -> list[Run]:
    return [Run(int(task), node, int(attempt)) for task, node, attempt in (line.split() for line in lines(out))]


def _json(path: Path) -> dict[str, Any] | None:
    """:returns: a ``running/`` or ``farmers/`` file of a work directory, ``None`` when idle, gone or being written"""
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_bytes())
        return record if isinstance(record, dict) else None
    return None


def _held(workdir: Path, farmer: str | None = None) -> dict[int, float]:
    """:returns: the tasks that slots of the work directory hold (of one farmer, if given), with their start time"""
    if not (workdir / "running").exists():
        return {}
    return {r.task: r.started for r in WorkDir(workdir).running_tasks() if farmer is None or r.farmer == farmer}


def _assert_list_done(workdir: Path, count: int) -> None:
    finished = ids(workdir / "finished")
    assert sorted(finished) == list(range(count)), f"finished: {sorted(finished)}"
    assert lines(workdir / "failed") == []
    assert ids(workdir / "toprocess") == []
    assert _held(workdir) == {}


def _assert_job_completed(records: list[dict[str, str]], diagnostics: str) -> None:
    for record in records:
        assert record.get("JobState") == "COMPLETED", f"{record.get('JobId')}: {record.get('JobState')}\n{diagnostics}"
        assert record.get("ExitCode") == "0:0", f"{record.get('JobId')}: exit {record.get('ExitCode')}\n{diagnostics}"


def _farmer_processes(pid: int, name: str) -> list[psutil.Process]:
    """:returns: a farmer's main process, its descendants, and the tasks it started (they carry its name)"""
    found = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        main = psutil.Process(pid)
        found = {proc.pid: proc for proc in [main, *main.children(recursive=True)]}
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("TASKFARMER_FARMER") == name:
                found[proc.pid] = proc
    return list(found.values())


def _fresh(farmers: dict[str, dict[int, float]]) -> list[str]:
    """:returns: the farmers whose running tasks all started less than 1 s ago"""
    now = time.time()
    return [name for name, held in farmers.items() if held and all(now - t < 1.0 for t in held.values())]


def test_array_elements_share_one_list(tmp_path: Path, cluster: Cluster) -> None:
    tasklist, workdir, out = _tasklist(tmp_path, 18, 1)
    # 3 elements of 2 CPUs each: one per node of the test cluster, all at once.
    job = cluster.submit("slurm-array.sh", str(tasklist), str(workdir), options=("--array=0-2",))
    records = cluster.wait_ended(job)
    diagnostics = cluster.diagnostics()
    assert len(records) == 3, diagnostics
    _assert_job_completed(records, diagnostics)
    _assert_list_done(workdir, 18)
    runs = _runs(out)
    assert sorted(run.task for run in runs) == list(range(18)), "every task ran exactly once"
    assert len({run.node for run in runs}) > 1, f"all tasks ran on one node: {runs}"
    assert len({record["NodeList"] for record in records}) > 1, "all elements ran on one node"


def test_the_jobs_end_is_read_from_squeue_whatever_the_users_time_format(tmp_path: Path, cluster: Cluster) -> None:
    # --task-duration asks squeue when the job ends; a user's SLURM_TIME_FORMAT ("%F %T": date, space, time) once made
    # that end midnight today, long past: nothing was claimed. The job has 10 minutes: 60 s tasks fit.
    tasklist, workdir, out = _tasklist(tmp_path, 4, 0)
    env = {"SLURM_TIME_FORMAT": "%F %T", "TASKFARMER_ARGS": "--task-duration 60"}
    job = cluster.submit("slurm-array.sh", str(tasklist), str(workdir), options=("--array=0", "--time=10"), env=env)
    records = cluster.wait_ended(job)
    _assert_job_completed(records, cluster.diagnostics())
    _assert_list_done(workdir, 4)
    assert sorted(run.task for run in _runs(out)) == [0, 1, 2, 3]


def test_one_farmer_per_node_of_an_allocation(tmp_path: Path, cluster: Cluster) -> None:
    tasklist, workdir, out = _tasklist(tmp_path, 18, 1)
    job = cluster.submit("slurm-multinode.sh", str(tasklist), str(workdir), options=("--nodes=3",))
    records = cluster.wait_ended(job)
    _assert_job_completed(records, cluster.diagnostics())
    _assert_list_done(workdir, 18)
    runs = _runs(out)
    assert sorted(run.task for run in runs) == list(range(18)), "every task ran exactly once"
    nodes = {run.node for run in runs}
    assert len(nodes) > 1, f"all tasks ran on one node: {runs}"
    assert nodes <= {"node1", "node2", "node3"}


def test_usr1_returns_the_running_tasks_and_requeues_the_job(tmp_path: Path, cluster: Cluster) -> None:
    tasklist, workdir, out = _tasklist(tmp_path, 12, 3)
    job = cluster.submit("slurm-requeue.sh", str(tasklist), str(workdir), env={"TASKFARMER_PROC": "2"})
    in_flight: dict[int, float] = {}

    def fresh_tasks_running() -> bool:
        # Both workers just started a task (< 1 s of its 3 s), after some tasks finished: none can end before the
        # signal, so exactly these are the tasks in flight at the signal.
        nonlocal in_flight
        in_flight = _held(workdir)
        now = time.time()
        fresh = len(in_flight) == 2 and all(now - started < 1.0 for started in in_flight.values())
        return fresh and len(ids(workdir / "finished")) >= 2

    wait_for(fresh_tasks_running, timeout=JOB_DEADLINE, what=f"two fresh running tasks\n{cluster.diagnostics()}")
    # What the requeue script expects: SIGUSR1 to the batch shell only, as `#SBATCH --signal=B:USR1@N` sends it.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=LONG)
    records = cluster.wait_ended(job, timeout=2 * JOB_DEADLINE)
    diagnostics = cluster.diagnostics()
    assert records[0].get("Restarts") == "1", diagnostics
    _assert_job_completed(records, diagnostics)
    assert "requeueing the job" in diagnostics
    _assert_list_done(workdir, 12)
    runs = _runs(out)
    counts = collections.Counter(run.task for run in runs)
    assert sorted(counts) == list(range(12)), "every task ran"
    listing = "\n".join(map(str, runs))
    # A task stopped before it wrote its first line ran "once": count the second attempts instead.
    assert {task for task, n in counts.items() if n > 1} <= set(in_flight), f"in flight: {in_flight}\n{listing}"
    assert {run.task for run in runs if run.attempt == 2} == set(in_flight), f"in flight: {in_flight}\n{listing}"
    assert max(counts.values()) <= 2


def test_a_farmer_killed_on_one_node_has_its_tasks_recovered_after_the_lease(tmp_path: Path, cluster: Cluster) -> None:
    tasklist, workdir, out = _tasklist(tmp_path, 18, 3)
    job = cluster.submit(
        "slurm-multinode.sh", str(tasklist), str(workdir), options=("--nodes=3",), env={"TASKFARMER_LEASE": str(LEASE)}
    )
    farmers: dict[str, dict[int, float]] = {}

    def every_farmer_runs_tasks() -> bool:
        # ... and one of them (the victim) runs two tasks that started less than 1 s ago (of 3 s): they cannot end
        # before the kill, so they are exactly the tasks it loses.
        nonlocal farmers
        farmers = {path.name: _held(workdir, path.name) for path in (workdir / "farmers").glob("*")}
        return len(farmers) == 3 and all(len(held) == 2 for held in farmers.values()) and bool(_fresh(farmers))

    wait_for(every_farmer_runs_tasks, timeout=JOB_DEADLINE, what=f"3 busy farmers\n{cluster.diagnostics()}")
    victim = min(_fresh(farmers), key=lambda name: (not name.startswith("node2."), name))  # node2 if it can
    record = _json(workdir / "farmers" / victim)
    assert record is not None
    pid = int(record["holder"]["pid"])
    lost = set(farmers[victim])
    killed = freeze_then_kill(lambda: _farmer_processes(pid, victim))
    killed_at = time.monotonic()
    assert killed >= 5, "the farmer, its 2 workers, their 2 tasks at least"
    assert len(lost) == 2

    # Most of the lease: the dead farmer's tasks stay where they are (the others cannot know it is dead yet).
    while time.monotonic() < killed_at + 0.7 * LEASE:
        assert set(_held(workdir, victim)) == lost, "tasks of another host's farmer recovered before its lease ended"
        time.sleep(0.2)
    wait_for(
        lambda: lost <= set(ids(workdir / "finished")),
        timeout=LEASE + LONG,
        what=f"the tasks {lost} of the killed farmer to be run by the others\n{cluster.diagnostics()}",
    )
    records = cluster.wait_ended(job)
    diagnostics = cluster.diagnostics()
    assert records[0]["JobState"] in {"COMPLETED", "FAILED"}, diagnostics  # FAILED: srun saw one task killed
    _assert_list_done(workdir, 18)
    runs = _runs(out)
    counts = collections.Counter(run.task for run in runs)
    assert sorted(counts) == list(range(18)), "every task ran"
    listing = "\n".join(map(str, runs))
    # A lost task may have been frozen before it wrote its first line: count the second attempts instead.
    assert {task for task, n in counts.items() if n > 1} <= lost, f"only {victim}'s {lost} ran again:\n{listing}"
    again = {run.task: run.node for run in runs if run.attempt == 2}
    assert set(again) == lost, f"{victim}'s {lost} ran a second time, nothing else did:\n{listing}"
    assert victim.split(".", 1)[0] not in again.values(), "the tasks were rerun by the other nodes' farmers"
