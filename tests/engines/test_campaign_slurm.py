"""``taskfarmer submit``, ``status`` and ``cancel`` against a real Slurm cluster (``ci/slurm-up.sh``: 3 nodes).

The jobs get this test's environment (``sbatch`` exports it) with the venv running the tests first on PATH, so the
job script finds ``taskfarmer`` there. Every task appends ``ID NODE ATTEMPT`` to one file: the tests count the runs
of each task across jobs.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from taskfarmer.campaign import Campaign
from tests.helpers import LONG, ids, lines, throttled, wait_for, write_tasklist

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

VENV_BIN: Final = Path(sys.executable).parent
CAMPAIGN_DEADLINE: Final = 300.0  # seconds for a campaign of a few jobs, each up to a minute, to end


class Campaigns:
    """Runs ``taskfarmer`` in a test directory; cancels the campaigns it submitted at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.workdirs: list[Path] = []

    def taskfarmer(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``taskfarmer ARGV`` in the test directory. :returns: the completed process"""
        return subprocess.run(
            [str(VENV_BIN / "taskfarmer"), *argv],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.tmp_path,
            timeout=LONG * 2,
            check=False,
        )

    def submit(self, tasklist: Path, *options: str) -> str:
        """``taskfarmer submit``. :returns: what it printed"""
        self.workdirs.append(Path(f"{tasklist}_workdir"))
        result = self.taskfarmer("submit", *options, tasklist.name)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def squeue(self, workdir: Path) -> list[str]:
        """:returns: the campaign's jobs in Slurm's queue (``ID STATE``)"""
        tag = Campaign(workdir.resolve()).load().settings.tag
        result = subprocess.run(
            ["squeue", "--noheader", "--array", f"--name={tag}", "--format=%i %T"],
            capture_output=True,
            text=True,
            timeout=LONG,
            check=True,
        )
        return result.stdout.split("\n")[:-1]

    def wait_no_job(self, workdir: Path, timeout: float = CAMPAIGN_DEADLINE) -> None:
        """Wait until the campaign has no job left in the queue."""
        wait_for(throttled(lambda: not self.squeue(workdir), 2.0), timeout=timeout, what=self.diagnostics(workdir))

    def diagnostics(self, workdir: Path) -> str:
        """:returns: the jobs' outputs, to read when a test fails"""
        outputs = sorted((workdir / "campaign" / "jobs").glob("*.out"))
        return "the campaign's end\n" + "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')}" for p in outputs)

    def cancel_all(self) -> None:
        """Remove every job the campaigns of this test left."""
        for workdir in self.workdirs:
            if Campaign(workdir.resolve()).exists():
                tag = Campaign(workdir.resolve()).load().settings.tag
                subprocess.run(["scancel", f"--name={tag}"], capture_output=True, timeout=LONG, check=False)


@pytest.fixture
def campaigns(tmp_path: Path) -> Iterator[Campaigns]:
    made = Campaigns(tmp_path)
    try:
        yield made
    finally:
        made.cancel_all()


def _tasklist(tmp_path: Path, count: int, command: str) -> tuple[Path, Path]:
    """:returns: a tasklist of *count* tasks that log their run to a file and run *command*, and that file"""
    out = tmp_path / "runs"
    line = f'echo "$PROC_NUMBER ${{SLURMD_NODENAME:-none}} $TASKFARMER_ATTEMPT" >> {out}; {command}'
    return write_tasklist(tmp_path / "tasks.txt", [line] * count), out


def _stopped_attempts(workdir: Path) -> int:
    return sum(line.split("\t")[2] == "stopped" for line in lines(workdir / "accounting.tsv")[1:])


def test_a_campaign_resubmits_its_jobs_at_their_wall_time_until_every_task_ran(
    tmp_path: Path, campaigns: Campaigns
) -> None:
    # 300 tasks of 0.5 s on 2 jobs of 2 CPUs: 38 s of work; each farmer stops 30 s before its 1-minute limit.
    tasklist, out = _tasklist(tmp_path, 300, "sleep 0.5")
    printed = campaigns.submit(tasklist, "--jobs", "2", "--cpus", "2", "--time", "1")
    assert "submitted 2 slurm jobs" in printed
    workdir = tmp_path / "tasks.txt_workdir"
    assert (workdir / "campaign" / "job.sh").read_text().count("#SBATCH --time=0-00:01:00") == 1
    campaigns.wait_no_job(workdir)

    assert sorted(ids(workdir / "finished")) == list(range(300)), campaigns.diagnostics(workdir)
    assert lines(workdir / "failed") == []
    runs = collections.Counter(int(line.split()[0]) for line in lines(out))
    assert set(runs) == set(range(300))
    # A task runs again only when a stop at the wall time killed it: one `stopped` attempt each.
    assert sum(n - 1 for n in runs.values()) == _stopped_attempts(workdir)
    records = Campaign(workdir.resolve()).read_jobs()
    successors = [r for r in records.values() if "successor" in r.outcome]
    assert successors, campaigns.diagnostics(workdir)
    assert len(records) >= 3
    assert all(r.ended is not None for r in records.values()), records

    status = campaigns.taskfarmer("status", str(workdir))
    assert status.returncode == 0, status.stderr
    assert "300 finished" in status.stdout
    assert f"{len(successors)} of 10 successors used" in status.stdout
    assert "stopped at its wall time" in status.stdout
    assert "the list is done" in status.stdout


def test_cancel_removes_the_queued_jobs_and_drains_the_running_ones(tmp_path: Path, campaigns: Campaigns) -> None:
    tasklist, out = _tasklist(tmp_path, 60, "sleep 3")
    # 3 nodes of 2 CPUs: 3 jobs run, the 4th waits; --max-queued 4 refuses a 5th.
    campaigns.submit(tasklist, "--jobs", "4", "--cpus", "2", "--max-queued", "4")
    workdir = tmp_path / "tasks.txt_workdir"
    refused = campaigns.taskfarmer("submit", "--max-queued", "4", "tasks.txt")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("jobs queued or running (--max-queued 4)"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    wait_for(
        throttled(lambda: sum(line.endswith("RUNNING") for line in campaigns.squeue(workdir)) == 3),
        timeout=LONG * 2,
        what="3 jobs running",
    )
    wait_for(throttled(lambda: len(lines(out)) >= 6), timeout=LONG * 2, what="the tasks of the running jobs")

    result = campaigns.taskfarmer("cancel", str(workdir))
    assert result.returncode == 0, result.stderr
    assert "removed 1 queued job; 3 running jobs drain" in result.stdout
    campaigns.wait_no_job(workdir, timeout=LONG * 2)

    finished, toprocess = ids(workdir / "finished"), ids(workdir / "toprocess")
    assert sorted(finished + toprocess) == list(range(60))  # nothing lost, nothing twice
    assert 6 <= len(finished) < 60  # the tasks running at the cancel finished
    status = campaigns.taskfarmer("status", str(workdir)).stdout
    assert "cancelled" in status
    assert "left the queue without starting" in status


def test_max_failures_stops_the_whole_campaign(tmp_path: Path, campaigns: Campaigns) -> None:
    tasklist, _ = _tasklist(tmp_path, 200, "sleep 0.2; exit 1")
    campaigns.submit(tasklist, "--jobs", "2", "--cpus", "2", "--max-failures", "10")
    workdir = tmp_path / "tasks.txt_workdir"
    campaigns.wait_no_job(workdir, timeout=LONG * 4)

    failed = len(lines(workdir / "failed"))
    assert 10 <= failed < 200
    assert len(ids(workdir / "finished")) + failed + len(ids(workdir / "toprocess")) == 200
    state = Campaign(workdir.resolve()).load()
    assert "--max-failures is 10" in state.stopped
    assert state.successors == 0
    assert "stopped (" in campaigns.taskfarmer("status", str(workdir)).stdout


def test_usr1_moves_a_job_to_its_successor(tmp_path: Path, campaigns: Campaigns) -> None:
    tasklist, out = _tasklist(tmp_path, 40, "sleep 1")
    campaigns.submit(tasklist, "--cpus", "2")
    workdir = tmp_path / "tasks.txt_workdir"
    wait_for(throttled(lambda: len(lines(out)) >= 6), timeout=LONG * 2, what="the first job's tasks")
    first = campaigns.squeue(workdir)[0].split()[0]
    subprocess.run(["scancel", "--batch", "--signal=USR1", first], check=True, timeout=LONG)
    campaigns.wait_no_job(workdir, timeout=LONG * 4)

    assert sorted(ids(workdir / "finished")) == list(range(40)), campaigns.diagnostics(workdir)
    records = Campaign(workdir.resolve()).read_jobs()
    assert "successor" in records[first].outcome, records[first]
    assert len(records) == 2


def test_a_job_of_several_nodes_runs_one_farmer_on_each(tmp_path: Path, campaigns: Campaigns) -> None:
    tasklist, out = _tasklist(tmp_path, 40, "sleep 0.3")
    campaigns.submit(tasklist, "--nodes", "2", "--cpus", "1")
    workdir = tmp_path / "tasks.txt_workdir"
    campaigns.wait_no_job(workdir, timeout=LONG * 4)

    assert sorted(ids(workdir / "finished")) == list(range(40)), campaigns.diagnostics(workdir)
    nodes = collections.Counter(line.split()[1] for line in lines(out))
    assert len(nodes) == 2, nodes  # one farmer per node of the job, both on the list
    (record,) = Campaign(workdir.resolve()).read_jobs().values()
    assert record.farmer_status == 0
