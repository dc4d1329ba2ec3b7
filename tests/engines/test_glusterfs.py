"""Farmers on a real shared filesystem: GlusterFS volumes, each mounted twice, with farmers on both mounts as two hosts.

Needs the mounts of ``ci/glusterfs-up.sh DIR`` (its ``TASKFARMER_GLUSTER_*`` variables): the volume
``taskfarmer-safe`` has the client caches off and is mounted with ``attribute-timeout=0,entry-timeout=0,
direct-io-mode=enable`` (close-to-open consistent), ``taskfarmer-cached`` has Gluster's defaults. Each test works in
a fresh directory of one volume, seen through mount A (farmers on ``hostA``), mount B (``hostB``) and, for the
final count, the brick: what the server stores, without any client cache in the way.

Each task creates ``out/ID.HOST.RANDOM`` (``mktemp``): a task run twice leaves two files, whatever the client caches
do to appends.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import pytest

from tests.helpers import (
    GLUSTER_MOUNTS,
    LONG,
    cleanup,
    farmer_argv,
    freeze_then_kill,
    lines,
    processes_with_env,
    serve_and_wait,
    throttled,
    wait_for,
    write_tasklist,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.glusterfs, pytest.mark.slow]

TASKS: Final = 300
WATCHDOG: Final = 200.0  # seconds: beyond every timeout of this file (pytest-timeout cannot end a FUSE wait)
FARMER_DEADLINE: Final = 150.0  # seconds for 4 farmers to run the whole list (about 20 tasks/s on the safe volume)
TASK: Final = (  # {} is the longest pause in ms
    'mktemp "$TASKFARMER_WORKDIR/../out/$PROC_NUMBER.$TASKFARMER_HOST.XXXXXX" >/dev/null && '
    "sleep $(printf 0.%03d $((RANDOM % {})))"
)


@pytest.fixture(autouse=True)
def fuse_watchdog() -> Iterator[None]:
    """Cut the mounts off after :data:`WATCHDOG` seconds: a hung FUSE client then fails the test, instead of leaving
    its processes waiting for an answer for ever (no signal ends a FUSE request the client has already read).
    """
    mounts = [Path(os.environ[variable]) for variable in GLUSTER_MOUNTS if variable in os.environ]
    fired: list[Path] = []

    def abort() -> None:
        fired.extend(mounts)
        for mount in mounts:
            _abort_fuse(mount)

    timer = threading.Timer(WATCHDOG, abort)
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()
    assert not fired, f"a GlusterFS mount hung: its FUSE connections were aborted after {WATCHDOG:.0f} s"


def _abort_fuse(mount: Path) -> None:
    """End every request of the FUSE connection of *mount* (``/sys/fs/fuse/connections/N/abort``)."""
    for fields in (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()):
        if fields[4] == str(mount):
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/fuse/connections/{fields[2].split(':')[1]}/abort").write_text("1")


@dataclass(frozen=True)
class Shared:
    """One directory of a volume, through its two mounts (two hosts) and on its brick (the server's copy)."""

    a: Path
    b: Path
    brick: Path


def _shared(volume: str) -> Iterator[Shared]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    shared = Shared(
        a=Path(os.environ[f"TASKFARMER_GLUSTER_{volume}_A"]) / name,
        b=Path(os.environ[f"TASKFARMER_GLUSTER_{volume}_B"]) / name,
        brick=Path(os.environ[f"TASKFARMER_GLUSTER_{volume}_BRICK"]) / name,
    )
    (shared.a / "out").mkdir(parents=True)
    wait_for((shared.b / "out").is_dir, what=f"{shared.a} to show through the other mount")
    try:
        yield shared
    finally:
        shutil.rmtree(shared.a, ignore_errors=True)


@pytest.fixture
def safe() -> Iterator[Shared]:
    """A fresh directory on the volume with the client caches off."""
    yield from _shared("SAFE")


@pytest.fixture
def cached() -> Iterator[Shared]:
    """A fresh directory on the volume with Gluster's default caches and mount options."""
    yield from _shared("CACHED")


class Farm:
    """Farmers on the two mounts of one shared directory, each host's farmers tagged so they can be killed.

    The tasklist (:data:`TASKS` tasks, each pausing up to *pause* ms) is written through mount A.
    """

    def __init__(self, shared: Shared, logs: Path, *, pause: int = 50) -> None:
        self.shared = shared
        self.logs = logs
        self.procs: list[subprocess.Popen[str]] = []
        self.stderr: list[Path] = []
        self._files: list[IO[str]] = []
        write_tasklist(shared.a / "tasks.txt", [TASK.format(pause)] * TASKS)
        wait_for(lambda: len(lines(shared.b / "tasks.txt")) == TASKS, what="the tasklist through the other mount")

    def start(self, host: str, marker: str) -> subprocess.Popen[str]:
        """Start a farmer (2 workers) on the mount of *host* (``hostA``: A, ``hostB``: B), tagged with *marker*."""
        root = self.shared.a if host == "hostA" else self.shared.b
        log = self.logs / f"farmer-{len(self.procs)}-{host}.stderr"
        # stderr to a file, not a pipe: a farmer printing tracebacks must never block on a full pipe.
        self._files.append(log.open("w"))
        proc = subprocess.Popen(
            farmer_argv(root / "tasks.txt", "-n", "2", "-q", "-w", str(root / "wd")),
            stdout=subprocess.DEVNULL,
            stderr=self._files[-1],
            text=True,
            env={**os.environ, "SLURMD_NODENAME": host, "TF_TEST_MARK": marker},
            start_new_session=True,
        )
        self.procs.append(proc)
        self.stderr.append(log)
        return proc

    def wait(self, procs: list[subprocess.Popen[str]]) -> list[int]:
        """:returns: the exit statuses of *procs*; fails the test when one has not ended by the deadline"""
        deadline = time.monotonic() + FARMER_DEADLINE
        try:
            return [proc.wait(timeout=max(deadline - time.monotonic(), 0.1)) for proc in procs]
        except subprocess.TimeoutExpired:
            pytest.fail(f"a farmer still runs {FARMER_DEADLINE} s after the start: {self.errors()}")

    def errors(self) -> str:
        """:returns: every farmer's stderr, each under its file name"""
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self.stderr)

    def close(self) -> None:
        """Close the stderr files (the processes are reaped by :func:`tests.helpers.cleanup`)."""
        for file in self._files:
            file.close()


@pytest.fixture
def farms(tmp_path: Path) -> Iterator[list[Farm]]:
    """Farms made by the test; every farmer of them reaped at the end, whatever happened."""
    made: list[Farm] = []
    try:
        yield made
    finally:
        with cleanup(*(proc for farm in made for proc in farm.procs)):
            pass
        for farm in made:
            farm.close()


def _runs(out: Path) -> dict[int, list[str]]:
    """:returns: for each task that ran, the host of each of its runs (from the files the tasks created)"""
    runs: dict[int, list[str]] = collections.defaultdict(list)
    for path in out.iterdir():
        task, host, _ = path.name.split(".", 2)
        runs[int(task)].append(host)
    return runs


def _finished(workdir: Path) -> tuple[list[int], list[str]]:
    """:returns: the IDs in ``finished``, and a description of each of its lines that is no record (corrupt)"""
    finished, corrupt = [], []
    path = workdir / "finished"
    for line in path.read_bytes().splitlines() if path.exists() else []:
        first = line.split(b" ", 1)[0]
        if first.isdigit():
            finished.append(int(first))
        else:
            corrupt.append(f"{len(line)} bytes ({line.count(0)} NUL): {line[:30]!r}")
    return finished, corrupt


def _with_nul_bytes(workdir: Path) -> list[str]:
    """:returns: the files of *workdir* holding a NUL byte (never written by the farmer nor by these tasks)"""
    files = (path for path in workdir.rglob("*") if path.is_file())
    return [str(path.relative_to(workdir)) for path in files if b"\0" in path.read_bytes()]


def _running_on(workdir: Path, host: str) -> set[int]:
    """:returns: the tasks the work directory says farmers of *host* hold (``taskfarmer status --json``)"""
    result = subprocess.run(
        [sys.executable, "-m", "taskfarmer", "status", str(workdir), "--json"],
        capture_output=True,
        text=True,
        timeout=LONG,
        check=True,
    )
    return {int(entry["task"]) for entry in json.loads(result.stdout)["running"] if entry["host"] == host}


@pytest.mark.timeout(180)
def test_two_farmers_per_mount_run_each_task_once(safe: Shared, tmp_path: Path, farms: list[Farm]) -> None:
    farm = Farm(safe, tmp_path)
    farms.append(farm)
    procs = [farm.start(host, uuid.uuid4().hex) for host in ("hostA", "hostA", "hostB", "hostB")]
    statuses = farm.wait(procs)
    assert statuses == [0, 0, 0, 0], farm.errors()
    runs = _runs(safe.a / "out")
    assert sorted(runs) == list(range(TASKS)), "some task never ran"
    assert {task: hosts for task, hosts in runs.items() if len(hosts) > 1} == {}, "tasks ran twice"
    assert {host for hosts in runs.values() for host in hosts} == {"hostA", "hostB"}, "one mount did all the work"
    finished, corrupt = _finished(safe.a / "wd")
    assert corrupt == []
    assert sorted(finished) == list(range(TASKS)), "finished must hold every task once"
    assert _with_nul_bytes(safe.a / "wd") == []
    assert "Traceback" not in farm.errors()


@pytest.mark.timeout(180)
def test_kill_9_of_one_mount_then_restart_loses_nothing(safe: Shared, tmp_path: Path, farms: list[Farm]) -> None:
    farm = Farm(safe, tmp_path, pause=300)  # tasks of 0 to 0.3 s: each worker is in a task most of the time
    farms.append(farm)
    host_a = uuid.uuid4().hex
    farm.start("hostA", host_a)
    farm.start("hostA", host_a)
    others = [farm.start("hostB", uuid.uuid4().hex) for _ in range(2)]
    wait_for(
        throttled(lambda: len(lines(safe.a / "wd" / "finished")) >= TASKS // 4),
        timeout=FARMER_DEADLINE,
        what="a quarter of the tasks to finish",
    )
    in_flight: set[int] = set()
    # hostA is lost at once: its farmers, workers and tasks frozen, what its farmers held read, then all SIGKILLed.
    killed = freeze_then_kill(
        lambda: processes_with_env("TF_TEST_MARK", host_a),
        while_frozen=lambda: in_flight.update(_running_on(safe.a / "wd", "hostA")),
    )
    assert killed >= 6, "two farmers and their four workers should have been killed"
    assert farm.wait(farm.procs[:2]) == [-9, -9]
    restarted = [farm.start("hostA", uuid.uuid4().hex) for _ in range(2)]
    statuses = farm.wait(others + restarted)
    assert statuses == [0, 0, 0, 0], farm.errors()
    runs = _runs(safe.a / "out")
    assert sorted(runs) == list(range(TASKS)), "a task was lost"
    twice = {task for task, hosts in runs.items() if len(hosts) > 1}
    assert twice <= in_flight, f"tasks ran twice that hostA did not hold when it died: {twice - in_flight}"
    assert all(len(hosts) <= 2 for hosts in runs.values())
    finished, corrupt = _finished(safe.a / "wd")
    assert corrupt == []
    assert sorted(finished) == list(range(TASKS)), "finished must hold every task once"
    assert _with_nul_bytes(safe.a / "wd") == []
    assert "Traceback" not in farm.errors()


@pytest.mark.timeout(180)
def test_cached_mounts_are_refused_or_correct_never_silently_wrong(
    cached: Shared, tmp_path: Path, farms: list[Farm]
) -> None:
    """Gluster's client caches break close-to-open consistency: the farmers must see it and stop with one clear
    line naming the filesystem (and saying "stale"), or run the list correctly; never a duplicate, a corrupt file or
    a traceback. Everything is counted on the brick, as the server stores it.
    """
    farm = Farm(cached, tmp_path)
    farms.append(farm)
    procs = [farm.start(host, uuid.uuid4().hex) for host in ("hostA", "hostA", "hostB", "hostB")]
    statuses = farm.wait(procs)
    errors = [log.read_text(errors="replace") for log in farm.stderr]
    runs = _runs(cached.brick / "out")
    twice = {task: len(hosts) for task, hosts in runs.items() if len(hosts) > 1}
    finished, corrupt = _finished(cached.brick / "wd")
    symptoms = (
        f"exit statuses {statuses}; {sum(len(h) for h in runs.values())} runs of {len(runs)} tasks, ran twice: "
        f"{twice}; finished: {len(finished)} lines ({len(set(finished))} tasks), corrupt lines {corrupt}; failed: "
        f"{lines(cached.brick / 'wd' / 'failed')}; files with "
        f"NUL bytes {_with_nul_bytes(cached.brick / 'wd')}; farmers with a traceback "
        f"{[i for i, text in enumerate(errors) if 'Traceback' in text]}\n{farm.errors()}"
    )
    assert not any("Traceback" in text for text in errors), symptoms
    assert twice == {}, symptoms
    assert corrupt == [], symptoms
    assert _with_nul_bytes(cached.brick / "wd") == [], symptoms
    assert len(finished) == len(set(finished)), symptoms
    assert set(finished) <= set(runs), symptoms
    refused = [i for i, status in enumerate(statuses) if status != 0]
    for i in refused:  # refused: one clear line that names the filesystem and says its view was stale
        assert any("stale" in line.lower() and "glusterfs" in line for line in errors[i].splitlines()), symptoms
    if not refused:  # or correct: every task ran once and is recorded once
        assert sorted(runs) == list(range(TASKS)), symptoms
        assert sorted(finished) == list(range(TASKS)), symptoms


def _check_fs(shared: Shared) -> tuple[int, dict[str, str]]:
    """``taskfarmer check-fs A --peer B``. :returns: its exit status and its lines by check name"""
    result = subprocess.run(
        [sys.executable, "-m", "taskfarmer", "check-fs", str(shared.a), "--peer", str(shared.b)],
        capture_output=True,
        text=True,
        timeout=LONG,
        check=False,
    )
    assert result.stderr == ""
    return result.returncode, {line[:13].strip(): line[13:].strip() for line in result.stdout.splitlines()}


@pytest.mark.timeout(60)
def test_check_fs_passes_on_the_safe_volume(safe: Shared) -> None:
    status, lines_by_check = _check_fs(safe)
    assert status == 0, lines_by_check
    assert " is on fuse.glusterfs (" in lines_by_check["filesystem"]
    assert f":taskfarmer-safe on {os.environ['TASKFARMER_GLUSTER_SAFE_A']})" in lines_by_check["filesystem"]
    for name in ("mount options", "lock", "visibility", "latency"):
        assert lines_by_check[name].startswith("ok: "), lines_by_check
    assert f"(through {safe.b})" in lines_by_check["lock"], "the lock must exclude across the two mounts"
    assert "one mount" not in lines_by_check["visibility"]  # two FUSE mounts: two clients


@pytest.mark.timeout(60)
def test_check_fs_finds_the_cached_volume_stale_and_says_what_to_change(cached: Shared) -> None:
    """Measured: 10 to 16 of the 36 rounds see a stale view (a short file, or other bytes) on Gluster's defaults."""
    status, lines_by_check = _check_fs(cached)
    assert status == 1, lines_by_check
    assert lines_by_check["lock"].startswith("ok: "), "flock excludes across the mounts even with the caches on"
    visibility = lines_by_check["visibility"]
    assert visibility.startswith("FAILED: "), lines_by_check
    assert " rounds saw a stale view, first round " in visibility
    assert "performance.X off" in visibility
    assert "-o attribute-timeout=0,entry-timeout=0,direct-io-mode=enable" in visibility
    options = lines_by_check["mount options"]
    assert options.startswith("FAILED: the FUSE client runs without --attribute-timeout=0"), options
    assert "; to fix: turn the volume's client caches off" in options


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("volume", "status"), [("safe", 0), ("cached", 1)])
def test_check_fs_between_two_hosts_serve_and_wait(volume: str, status: int, request: pytest.FixtureRequest) -> None:
    """The two-host form over the two mounts: the same verdict as ``--peer``."""
    shared: Shared = request.getfixturevalue(volume)
    server, waited = serve_and_wait(shared.a, shared.b)
    assert server.returncode == status, server.stdout + server.stderr
    visibility = next(line for line in server.stdout.splitlines() if line.startswith("visibility"))
    assert visibility.startswith("visibility    ok: " if status == 0 else "visibility    FAILED: "), visibility
    answered = re.search(r"answered (\d+) requests", waited)
    assert answered is not None, waited
    assert int(answered.group(1)) > 0, waited  # its count depends on the rounds the checks ran
