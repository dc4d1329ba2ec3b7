"""The HTCondor submit file of ``examples/`` itself, submitted to a real pool and checked from outside.

Needs a pool that answers ``condor_status`` with at least 2 CPUs and a filesystem that the jobs and these tests see
at the same paths: ``ci/htcondor-up.sh DIR`` starts a personal pool (in a Debian 13 chroot) and exports
``TASKFARMER_HTCONDOR_SHARED``, a directory both sides share, where the tests make their job directories (without
it, on a pool of your own, they use pytest's temporary directory, which must then be on the shared filesystem).
The jobs find ``pytaskfarmer.py`` on the PATH of ``condor_submit`` (``getenv = true``). Every task appends
``ID HOST ATTEMPT`` to one file: the tests count the runs of each task across farmers.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from taskfarmer.store import WorkDir
from tests.helpers import LONG, REPO, ids, lines, throttled, wait_for, write_tasklist

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.htcondor, pytest.mark.timeout(300)]

SUBMIT_FILE: Final = REPO / "examples" / "htcondor-farmers.sub"
JOB_DEADLINE: Final = 120.0  # seconds for a small cluster of jobs to leave the queue
POLL: Final = 0.5  # seconds between two condor_q calls
REMOVED: Final = 3  # JobStatus of a job removed with condor_rm
COMPLETED: Final = 4


class Pool:
    """Submits the example, polls its jobs, and removes whatever is left at the end."""

    def __init__(self, jobdir: Path) -> None:
        self.jobdir = jobdir
        self.clusters: list[str] = []

    def condor(self, *argv: str) -> str:
        """Run an HTCondor command in the job directory. :returns: its stdout"""
        result = subprocess.run(argv, capture_output=True, text=True, cwd=self.jobdir, timeout=LONG, check=False)
        assert result.returncode == 0, f"{argv}: {result.stderr}"
        return result.stdout

    def submit(self, **variables: str) -> str:
        """``condor_submit`` ``examples/htcondor-farmers.sub`` itself with these variables. :returns: the cluster"""
        out = self.condor("condor_submit", "-terse", *(f"{k}={v}" for k, v in variables.items()), str(SUBMIT_FILE))
        cluster = out.split(".", 1)[0].strip()  # "C.0 - C.N"
        self.clusters.append(cluster)
        return cluster

    def queued(self, cluster: str) -> dict[int, int]:
        """:returns: ProcId -> JobStatus of the jobs of *cluster* still in the queue"""
        out = self.condor("condor_q", cluster, "-af", "ProcId", "JobStatus")
        return {int(proc): int(status) for proc, status in (line.split() for line in out.splitlines() if line.strip())}

    def history(self, cluster: str) -> dict[int, tuple[int, str]]:
        """:returns: ProcId -> (JobStatus, ExitCode) of the jobs of *cluster* that left the queue"""
        out = self.condor("condor_history", cluster, "-af", "ProcId", "JobStatus", "ExitCode")
        found = {}
        for line in out.splitlines():
            if line.strip():
                proc, status, code = line.split()
                found[int(proc)] = (int(status), code)
        return found

    def wait_gone(self, cluster: str, *, timeout: float = JOB_DEADLINE) -> None:
        """Wait until every job of *cluster* has left the queue."""
        wait_for(throttled(lambda: not self.queued(cluster)), timeout=timeout, what=f"cluster {cluster} to end\n{self}")

    def __str__(self) -> str:
        logs = sorted(self.jobdir.glob("farmer.*.*")) + sorted(self.jobdir.glob("farmers.*.log"))
        return "\n".join(f"--- {path.name}:\n{path.read_text(errors='replace')}" for path in logs)

    def remove_all(self) -> None:
        """Remove the clusters of this test and wait until they left the queue."""
        for cluster in self.clusters:
            subprocess.run(["condor_rm", cluster], capture_output=True, cwd=self.jobdir, timeout=LONG, check=False)
        for cluster in self.clusters:
            self.wait_gone(cluster, timeout=LONG)


@pytest.fixture
def jobdir(tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory the jobs see at the same path, writable by the (unprivileged) user they run as."""
    shared = os.environ.get("TASKFARMER_HTCONDOR_SHARED")
    path = Path(shared) / f"test-{uuid.uuid4().hex[:8]}" if shared else tmp_path / "jobs"
    path.mkdir(parents=True)
    path.chmod(0o777)
    home = path / "tf-home"  # the jobs' PYTASKFARMER_HOME (getenv): the test's own is not theirs to read
    shutil.copytree(taskfarmer_home, home)
    for directory in (home, *home.iterdir()):
        directory.chmod(0o777)
    monkeypatch.setenv("PYTASKFARMER_HOME", str(home))
    try:
        yield path
    finally:
        if shared:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pool(jobdir: Path) -> Iterator[Pool]:
    submitted = Pool(jobdir)
    try:
        yield submitted
    finally:
        submitted.remove_all()


def _tasklist(jobdir: Path, count: int, seconds: float) -> tuple[Path, Path, Path]:
    """:returns: a tasklist of *count* tasks of *seconds* each, its work directory, and the file the tasks append to"""
    out = jobdir / "runs"
    command = f'echo "$PROC_NUMBER $TASKFARMER_HOST $TASKFARMER_ATTEMPT" >> {out}; sleep {seconds}'
    tasklist = write_tasklist(jobdir / "tasks.txt", [command] * count)
    return tasklist, jobdir / "workdir", out


def _runs(out: Path) -> collections.Counter[int]:
    return collections.Counter(int(line.split()[0]) for line in lines(out))


def _held(workdir: Path) -> dict[int, float]:
    """:returns: the tasks running now, with their start time"""
    if not (workdir / "running").exists():
        return {}
    return {r.task: r.started for r in WorkDir(workdir).running_tasks()}


def _assert_list_done(workdir: Path, count: int) -> None:
    assert sorted(ids(workdir / "finished")) == list(range(count))
    assert lines(workdir / "failed") == []
    assert ids(workdir / "toprocess") == []
    assert _held(workdir) == {}


def test_farmers_share_one_list(pool: Pool, jobdir: Path) -> None:
    tasklist, workdir, out = _tasklist(jobdir, 12, 1)
    # 3 farmers on 2 CPUs: two at once, the third when one ends (and finds the list done, or not).
    cluster = pool.submit(tasklist=str(tasklist), workdir=str(workdir), farmers="3")
    pool.wait_gone(cluster)
    assert pool.history(cluster) == dict.fromkeys(range(3), (COMPLETED, "0")), pool
    _assert_list_done(workdir, 12)
    runs = _runs(out)
    assert sorted(runs) == list(range(12))
    assert set(runs.values()) == {1}, f"every task ran exactly once: {runs}"


def test_condor_rm_of_one_farmer_loses_nothing(pool: Pool, jobdir: Path) -> None:
    tasklist, workdir, out = _tasklist(jobdir, 10, 3)
    cluster = pool.submit(tasklist=str(tasklist), workdir=str(workdir), farmers="2")
    held: dict[int, float] = {}

    def both_farmers_run_a_fresh_task() -> bool:
        # Started less than 1 s ago (of 3 s): the removed farmer is still running its task when the signal comes.
        nonlocal held
        held = _held(workdir)
        return len(held) == 2 and all(time.time() - started < 1.0 for started in held.values())

    wait_for(both_farmers_run_a_fresh_task, timeout=JOB_DEADLINE, what=f"both farmers running a task\n{pool}")
    pool.condor("condor_rm", f"{cluster}.0")
    pool.wait_gone(cluster)
    history = pool.history(cluster)
    assert history[0][0] == REMOVED, pool
    assert history[1] == (COMPLETED, "0"), pool
    removed_err = (jobdir / f"farmer.{cluster}.0.err").read_text()
    assert "went back to the queue" in removed_err, pool  # a graceful stop, not a SIGKILL
    _assert_list_done(workdir, 10)
    runs = _runs(out)
    assert sorted(runs) == list(range(10)), "no task lost"
    twice = {task for task, n in runs.items() if n > 1}
    assert len(twice) <= 1, f"only the removed farmer's task ran again: {runs}"
    assert twice <= set(held)
    assert max(runs.values()) <= 2
