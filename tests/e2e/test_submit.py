"""``taskfarmer submit`` without a batch system: its checks, ``--dry-run``, and a job run by hand from its script.

The real submissions, resubmissions and cancels run against Slurm and HTCondor in ``tests/engines/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskfarmer.campaign import Campaign
from tests.helpers import LONG, ids, write_tasklist

pytestmark = pytest.mark.timeout(120)

VENV_BIN = Path(sys.executable).parent


def _taskfarmer(tmp_path: Path, *argv: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path if path is not None else f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(VENV_BIN / "taskfarmer"), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=LONG * 2,
        check=False,
    )


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--scheduler", "htcondor", "--nodes", "2"], "--nodes: HTCondor jobs run on one machine each"),
        (["--scheduler", "slurm", "--dry-run", "--time", "1", "--margin", "2m"], "--margin (120 s) leaves no time"),
        (["--scheduler", "slurm", "--time", "banana"], "wall time 'banana' is not like 90 (minutes)"),
        (["--scheduler", "slurm", "--time", "0"], "wall time '0' is not more than 0"),
        (["--scheduler", "slurm", "--jobs", "0"], "--jobs: must be at least 1"),
        (["--scheduler", "lsf"], "invalid choice: 'lsf'"),
        (["--scheduler", "slurm", "--dry-run", "--runner", "nosuch"], "nosuch"),
        ([], "neither sbatch (Slurm) nor condor_submit (HTCondor) is on PATH"),
        (["--scheduler", "htcondor"], "condor_submit is not on PATH"),
    ],
)
def test_bad_submit_options_get_one_line_and_make_no_work_directory(
    tmp_path: Path, options: list[str], needle: str
) -> None:
    write_tasklist(tmp_path / "t.txt", ["true"])
    result = _taskfarmer(tmp_path, "submit", *options, "t.txt", path=str(VENV_BIN))  # no scheduler on PATH
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert needle in result.stderr
    assert not (tmp_path / "t.txt_workdir").exists()


def test_dry_run_writes_the_job_script_with_every_option(tmp_path: Path) -> None:
    write_tasklist(tmp_path / "t.txt", ["true", "exit 3"])
    result = _taskfarmer(
        tmp_path,
        "submit",
        "--scheduler",
        "slurm",
        "--dry-run",
        "--jobs",
        "3",
        "--cpus=4",
        "--time",
        "2h",
        "--partition",
        "debug",
        "--scheduler-option=--qos=flex",
        "t.txt",
        "--retries",
        "2",
        path=str(VENV_BIN),
    )
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "t.txt_workdir" / "campaign" / "job.sh").read_text()
    assert script in result.stdout
    for line in (
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=0-02:00:00",
        "#SBATCH --partition=debug",
        "#SBATCH --qos=flex",
        f"#SBATCH --chdir={tmp_path}",
        f"exec taskfarmer job {tmp_path / 't.txt_workdir'} -- t.txt --retries 2",
        (
            f"# `taskfarmer status {tmp_path / 't.txt_workdir'}` follows it, `taskfarmer cancel"
            f" {tmp_path / 't.txt_workdir'}` stops it."
        ),
        f"# Submit 3 more by hand: sbatch --array=0-2 {tmp_path / 't.txt_workdir' / 'campaign' / 'job.sh'}",
    ):
        assert line in script.splitlines(), line
    settings = Campaign(tmp_path / "t.txt_workdir").load().settings
    assert (settings.jobs, settings.cpus, settings.wall_seconds, settings.margin_seconds) == (3, 4, 7200.0, 35.0)
    status = _taskfarmer(tmp_path, "status", "t.txt", path=str(VENV_BIN))
    assert status.stdout.splitlines()[-1] == "  campaign slurm, no job submitted"


def test_a_job_run_by_hand_from_its_script_runs_the_list_and_records_itself(tmp_path: Path) -> None:
    write_tasklist(tmp_path / "t.txt", [f"echo {n}" for n in range(20)] + ["exit 3"])
    dry = _taskfarmer(tmp_path, "submit", "--scheduler", "slurm", "--dry-run", "--cpus", "2", "t.txt", "--retries", "1")
    assert dry.returncode == 0, dry.stderr
    command = (tmp_path / "t.txt_workdir" / "campaign" / "job.sh").read_text().splitlines()[-1]
    job = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
        timeout=LONG * 2,
        check=False,
    )
    assert job.returncode == 0, job.stderr  # the list is done: one task failed, which the farmer reports with 1
    workdir = tmp_path / "t.txt_workdir"
    assert sorted(ids(workdir / "finished")) == list(range(20))
    assert ids(workdir / "failed") == [20]
    (record,) = Campaign(workdir).read_jobs().values()
    assert record.farmer_status == 1
    assert record.finished_tasks == 21
    assert "the list is done" in record.outcome
    status = _taskfarmer(tmp_path, "status", "t.txt")
    assert status.returncode == 0, status.stderr
    assert f"job      {record.id} done" in status.stdout


def test_a_farmer_timeout_given_to_submit_ends_the_job_as_its_wall_time_would(tmp_path: Path) -> None:
    write_tasklist(tmp_path / "t.txt", ["sleep 1"] * 20)
    dry = _taskfarmer(
        tmp_path, "submit", "--scheduler", "htcondor", "--dry-run", "--time", "10m", "t.txt", "--timeout", "2"
    )
    assert dry.returncode == 0, dry.stderr
    assert "allowed_job_duration = 600" in (tmp_path / "t.txt_workdir" / "campaign" / "job.sub").read_text()
    command = (tmp_path / "t.txt_workdir" / "campaign" / "job.sh").read_text().splitlines()[-1]
    job = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"},  # no condor_submit here
        timeout=LONG * 2,
        check=False,
    )
    assert job.returncode == 3, job.stderr  # stopped, and no successor could follow
    (record,) = Campaign(tmp_path / "t.txt_workdir").read_jobs().values()
    assert record.farmer_status == 3
    assert 0 < record.finished_tasks <= 4  # stopped after 2 s, not 10 minutes less the margin
    assert "stopped at its wall time" in record.outcome
    assert "submitting a successor failed: condor_submit is not on PATH" in record.outcome


def test_max_failures_counts_the_failed_tasks_of_the_whole_work_directory(tmp_path: Path) -> None:
    write_tasklist(tmp_path / "t.txt", ["exit 1"] * 30)
    workdir = tmp_path / "t.txt_workdir"
    dry = _taskfarmer(tmp_path, "submit", "--scheduler", "slurm", "--dry-run", "--max-failures", "5", "t.txt")
    assert dry.returncode == 0, dry.stderr
    before = _taskfarmer(tmp_path, "run", "-n", "1", "--max-failures", "2", "t.txt")  # 2 failed before the job
    assert before.returncode == 3, before.stderr
    command = (workdir / "campaign" / "job.sh").read_text().splitlines()[-1]
    job = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"},
        timeout=LONG * 2,
        check=False,
    )
    assert "--max-failures 3" in job.stderr  # 5 for the campaign, 2 already failed
    state = Campaign(workdir).load()
    assert state.stopped == "5 tasks failed, --max-failures is 5"
    assert (workdir / "drain").exists()  # every other farmer of the campaign drains
    (record,) = Campaign(workdir).read_jobs().values()
    assert "campaign stopped" in record.outcome
