"""A farmer on another host that dies is recovered after its lease, not before: two "hosts" without a scheduler.

Each farmer runs in a UTS namespace of its own (``unshare -u``) with a hostname of its own, on one shared work
directory: to each other they are farmers on other hosts, whose death only a heartbeat older than ``--lease`` can
show. One is killed with SIGKILL (all its processes at once, as when its node is lost) while it runs tasks.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Final

import pytest

from taskfarmer.store import WorkDir
from tests.helpers import (
    LONG,
    cleanup,
    farmer_argv,
    freeze_then_kill,
    ids,
    lines,
    processes_with_env,
    wait_for,
    write_tasklist,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)

LEASE: Final = 8  # seconds
TASKS: Final = 12
TASK_SECONDS: Final = 4  # long enough that a loaded machine still sees both of nodeA's tasks fresh
# Set the hostname in the new UTS namespace, then become the farmer (no `hostname` program needed).
SET_HOSTNAME: Final = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"


def _uts_prefix() -> list[str] | None:
    """:returns: how to start a process in a UTS namespace of its own here, ``None`` when this is not permitted"""
    for prefix in (["unshare", "--uts"], ["unshare", "--user", "--map-root-user", "--uts"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = [*prefix, sys.executable, "-c", SET_HOSTNAME, "probe", "/bin/true"]
            if subprocess.run(probe, capture_output=True, timeout=LONG, check=False).returncode == 0:
                return prefix
    return None


@pytest.fixture(scope="module")
def uts_prefix() -> list[str]:
    prefix = _uts_prefix()
    if prefix is None:
        pytest.skip("unshare --uts is not permitted here (neither as root nor in a user namespace)")
    return prefix


def _start_on_host(
    prefix: list[str], host: str, tasklist: Path, marker: str, lease: float = LEASE
) -> subprocess.Popen[str]:
    """Start a farmer on "host" *host*, on *tasklist* with the work directory ``workdir`` beside it."""
    argv = farmer_argv(tasklist, "--proc", "2", "--lease", str(lease), "--workdir", str(tasklist.parent / "workdir"))
    env = {key: value for key, value in os.environ.items() if key != "SLURMD_NODENAME"}  # the hostname decides
    env["TF_TEST_MARK"] = marker
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", SET_HOSTNAME, host, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _held_by(workdir: Path, host: str) -> dict[int, float]:
    """:returns: the tasks that farmers on *host* hold in ``running/``, with their start time"""
    if not (workdir / "running").exists():
        return {}
    return {r.task: r.started for r in WorkDir(workdir).running_tasks() if r.holder.host == host}


def test_another_hosts_dead_farmer_is_recovered_after_its_lease_only(tmp_path: Path, uts_prefix: list[str]) -> None:
    out = tmp_path / "runs"
    tasklist = write_tasklist(
        tmp_path / "tasks.txt",
        [f'echo "$PROC_NUMBER $TASKFARMER_HOST $TASKFARMER_ATTEMPT" >> {out}; sleep {TASK_SECONDS}'] * TASKS,
    )
    workdir = tmp_path / "workdir"
    marker = f"uts-{os.getpid()}-{tmp_path.name}"
    doomed = _start_on_host(uts_prefix, "nodeA", tasklist, f"{marker}-A")
    survivor = _start_on_host(uts_prefix, "nodeB", tasklist, f"{marker}-B")
    with cleanup(doomed, survivor):
        lost: dict[int, float] = {}

        def doomed_runs_fresh_tasks() -> bool:
            # Two tasks that started less than 2 s ago (of 4 s): neither can end before the kill.
            nonlocal lost
            lost = _held_by(workdir, "nodeA")
            return len(lost) == 2 and all(time.time() - started < TASK_SECONDS / 2 for started in lost.values())

        wait_for(doomed_runs_fresh_tasks, what="the farmer on nodeA to run two fresh tasks")
        killed = freeze_then_kill(lambda: processes_with_env("TF_TEST_MARK", f"{marker}-A"))
        killed_at = time.monotonic()
        assert killed >= 5, "the farmer, its 2 workers and their 2 tasks at least"
        assert doomed.wait(timeout=LONG) == -signal.SIGKILL

        # For most of the lease, nodeB cannot tell a dead farmer from a busy one: the tasks stay nodeA's.
        while time.monotonic() < killed_at + 0.7 * LEASE:
            assert set(_held_by(workdir, "nodeA")) == set(lost), "nodeA's tasks were taken before its lease ended"
            assert survivor.poll() is None, "nodeB gave up while nodeA's tasks were still leased"
            time.sleep(0.1)
        wait_for(lambda: not _held_by(workdir, "nodeA"), timeout=LEASE, what="nodeA's lease to expire")
        recovered_after = time.monotonic() - killed_at
        assert recovered_after >= 0.7 * LEASE

        stdout, stderr = survivor.communicate(timeout=LONG + LEASE)
        assert survivor.returncode == 0, stderr
    assert sorted(ids(workdir / "finished")) == list(range(TASKS))
    assert lines(workdir / "failed") == []
    runs = [line.split() for line in lines(out)]
    counts = collections.Counter(int(task) for task, _, _ in runs)
    assert sorted(counts) == list(range(TASKS)), "every task ran"
    # A lost task may have been frozen before it wrote its first line: the second attempts tell which ran again.
    assert {task for task, n in counts.items() if n > 1} <= set(lost), f"only nodeA's tasks ran again: {counts}"
    reruns = {(int(task), host, int(attempt)) for task, host, attempt in runs if int(task) in lost and attempt != "1"}
    assert reruns == {(task, "nodeB", 2) for task in lost}, stdout


def test_a_farmer_out_of_work_waits_for_a_silent_holder_of_tasks_until_its_lease_ends(
    tmp_path: Path, uts_prefix: list[str]
) -> None:
    # nodeA holds the last tasks and dies; nodeB, started just after with nothing left in the queue, must not leave
    # them to no one: it waits, as nodeA's heartbeat has not come since it ran out of work, and runs them.
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"sleep {TASK_SECONDS}"] * 2)
    workdir = tmp_path / "workdir"
    marker = f"uts-{os.getpid()}-{tmp_path.name}"
    doomed = _start_on_host(uts_prefix, "nodeA", tasklist, f"{marker}-A")
    with cleanup(doomed):
        wait_for(lambda: len(_held_by(workdir, "nodeA")) == 2, what="nodeA to run both tasks")
        freeze_then_kill(lambda: processes_with_env("TF_TEST_MARK", f"{marker}-A"))
        doomed.wait(timeout=LONG)
    late = _start_on_host(uts_prefix, "nodeB", tasklist, f"{marker}-B")
    with cleanup(late):
        _, stderr = late.communicate(timeout=LONG + LEASE)
    assert late.returncode == 0, stderr
    assert sorted(ids(workdir / "finished")) == [0, 1], stderr  # it left at once with "2 still running" before


def test_a_farmer_out_of_work_leaves_once_the_holder_of_the_last_tasks_heartbeats(
    tmp_path: Path, uts_prefix: list[str]
) -> None:
    tasklist = write_tasklist(tmp_path / "tasks.txt", ["sleep 60"] * 2)
    workdir = tmp_path / "workdir"
    marker = f"uts-{os.getpid()}-{tmp_path.name}"
    lease = 60  # nodeA heartbeats every 6 s: nodeB sees one within about 9 s, far from waiting for the lease
    busy = _start_on_host(uts_prefix, "nodeA", tasklist, f"{marker}-A", lease=lease)
    with cleanup(busy):
        wait_for(lambda: len(_held_by(workdir, "nodeA")) == 2, what="nodeA to run both tasks")
        idle = _start_on_host(uts_prefix, "nodeB", tasklist, f"{marker}-B", lease=lease)
        with cleanup(idle):
            started = time.monotonic()
            _, stderr = idle.communicate(timeout=LONG + lease)
            waited = time.monotonic() - started
        assert idle.returncode == 0, stderr
        assert "2 still running or claimed in other farmers" in stderr
        assert waited < lease / 2, f"it waited {waited:.1f} s for a farmer that heartbeats every {lease / 10} s"
