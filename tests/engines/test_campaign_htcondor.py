"""``taskfarmer submit``, ``status`` and ``cancel`` against a real HTCondor pool (``ci/htcondor-up.sh``: 2 CPUs).

The campaign is submitted as a user of the pool would: by the pool's unprivileged user, inside its chroot
(``htcondor-enter``, written by ``ci/htcondor-up.sh``), with the pytaskfarmer installed there; ``status`` and
``cancel`` run from outside, as from another node. Every task appends ``ID HOST ATTEMPT`` to one file.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from taskfarmer.campaign import Campaign
from tests.engines.test_htcondor import jobdir
from tests.helpers import LONG, ids, lines, throttled, wait_for, write_tasklist

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.htcondor, pytest.mark.timeout(420)]
__all__ = ["jobdir"]  # the fixture, shared with the tests of the example submit file

CAMPAIGN_DEADLINE: Final = 240.0


class Campaigns:
    """Runs ``taskfarmer`` in the job directory, inside the pool's chroot or outside; removes its jobs at the end."""

    def __init__(self, jobdir: Path) -> None:
        self.jobdir = jobdir
        self.workdir = jobdir / "tasks.txt_workdir"

    def inside(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``taskfarmer ARGV`` as the pool's user, in its chroot. :returns: the completed process"""
        enter = shutil.which("htcondor-enter")
        assert enter, "htcondor-enter (from ci/htcondor-up.sh) is not on PATH"
        return self._run([enter, "taskfarmer", *argv])

    def outside(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``taskfarmer ARGV`` with the test's Python. :returns: the completed process"""
        return self._run([str(Path(sys.executable).parent / "taskfarmer"), *argv])

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, cwd=self.jobdir, timeout=LONG * 2, check=False)

    def queue(self) -> list[str]:
        """:returns: the campaign's jobs in the queue (``ID STATUS``)"""
        return self._condor_q("-af:j", "JobStatus")

    def attribute(self, name: str) -> list[str]:
        """:returns: the value of the job ad attribute *name* for each of the campaign's jobs in the queue"""
        return self._condor_q("-af", name)

    def _condor_q(self, *autoformat: str) -> list[str]:
        tag = Campaign(self.workdir).load().settings.tag
        result = subprocess.run(
            ["condor_q", "-constraint", f'TaskfarmerCampaign =?= "{tag}"', *autoformat],
            capture_output=True,
            text=True,
            timeout=LONG,
            check=True,
        )
        return result.stdout.split("\n")[:-1]

    def wait_no_job(self, timeout: float = CAMPAIGN_DEADLINE) -> None:
        """Wait until the campaign has no job left in the queue."""
        wait_for(throttled(lambda: not self.queue(), 2.0), timeout=timeout, what=self.diagnostics())

    def diagnostics(self) -> str:
        """:returns: the jobs' outputs, to read when a test fails"""
        outputs = sorted((self.workdir / "campaign" / "jobs").glob("*.*"))
        return "the campaign's end\n" + "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')}" for p in outputs)

    def remove_all(self) -> None:
        """Remove whatever job the campaign left."""
        if Campaign(self.workdir).exists():
            tag = Campaign(self.workdir).load().settings.tag
            subprocess.run(
                ["condor_rm", "-constraint", f'TaskfarmerCampaign =?= "{tag}"'],
                capture_output=True,
                timeout=LONG,
                check=False,
            )


@pytest.fixture
def campaigns(jobdir: Path) -> Iterator[Campaigns]:
    made = Campaigns(jobdir)
    try:
        yield made
    finally:
        made.remove_all()


def _tasklist(jobdir: Path, count: int, command: str) -> Path:
    line = f'echo "$PROC_NUMBER $TASKFARMER_HOST $TASKFARMER_ATTEMPT" >> {jobdir / "runs"}; {command}'
    return write_tasklist(jobdir / "tasks.txt", [line] * count)


def test_a_campaign_resubmits_its_jobs_at_their_wall_time_until_every_task_ran(campaigns: Campaigns) -> None:
    # 100 tasks of 0.5 s on 2 one-CPU jobs: 25 s of work; each farmer stops 20 s before its 40 s.
    _tasklist(campaigns.jobdir, 100, "sleep 0.5")
    submitted = campaigns.inside("submit", "--scheduler", "htcondor", "--jobs", "2", "--time", "40s", "tasks.txt")
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted 2 htcondor jobs" in submitted.stdout
    assert campaigns.attribute("AllowedJobDuration") == ["40", "40"]  # HTCondor holds a job past its --time
    campaigns.wait_no_job()

    workdir = campaigns.workdir
    assert sorted(ids(workdir / "finished")) == list(range(100)), campaigns.diagnostics()
    assert lines(workdir / "failed") == []
    runs = collections.Counter(int(line.split()[0]) for line in lines(campaigns.jobdir / "runs"))
    stopped = sum(line.split("\t")[2] == "stopped" for line in lines(workdir / "accounting.tsv")[1:])
    assert sum(n - 1 for n in runs.values()) == stopped
    records = Campaign(workdir).read_jobs()
    assert any("successor" in r.outcome for r in records.values()), campaigns.diagnostics()
    assert all(r.ended is not None for r in records.values()), records

    status = campaigns.outside("status", str(workdir))
    assert status.returncode == 0, status.stderr
    assert "campaign htcondor" in status.stdout
    assert "stopped at its wall time" in status.stdout


def test_cancel_removes_the_idle_jobs_and_drains_the_running_ones(campaigns: Campaigns) -> None:
    _tasklist(campaigns.jobdir, 40, "sleep 3")
    submitted = campaigns.inside("submit", "--scheduler", "htcondor", "--jobs", "4", "tasks.txt")
    assert submitted.returncode == 0, submitted.stderr
    runs = campaigns.jobdir / "runs"
    wait_for(throttled(lambda: len(lines(runs)) >= 2), timeout=LONG * 2, what="2 jobs running tasks")

    result = campaigns.outside("cancel", str(campaigns.workdir))
    assert result.returncode == 0, result.stderr
    assert "removed 2 queued jobs; 2 running jobs drain" in result.stdout
    campaigns.wait_no_job(timeout=LONG * 2)

    finished, toprocess = ids(campaigns.workdir / "finished"), ids(campaigns.workdir / "toprocess")
    assert sorted(finished + toprocess) == list(range(40))
    assert 2 <= len(finished) < 40
    assert "cancelled" in campaigns.outside("status", str(campaigns.workdir)).stdout
