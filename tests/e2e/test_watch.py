"""``taskfarmer status --watch``: the live view of a running farm, and what each refresh costs the filesystem."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taskfarmer.store import WorkDir
from taskfarmer.watch import Watcher
from tests.helpers import LONG, cleanup, ids, in_a_terminal, run_farmer, start_farmer, wait_for, write_tasklist

pytestmark = pytest.mark.timeout(120)

TASKFARMER = str(Path(sys.executable).parent / "taskfarmer")


def test_the_live_view_shows_counts_hosts_and_failures_and_restores_the_terminal(tmp_path: Path) -> None:
    started = tmp_path / "started"
    tasklist = write_tasklist(tmp_path / "t.txt", ["exit 7", *[f"echo >> {started}; sleep 30"] * 3])
    farmer = start_farmer(tasklist, "-n", "3", "--grace", "1", env={"SLURMD_NODENAME": "nodeW"})
    with cleanup(farmer):
        wait_for(lambda: started.exists() and len(started.read_text()) >= 3, what="3 tasks running")
        wait_for(lambda: ids(tmp_path / "t.txt_workdir" / "failed") == [0], what="the failure written")
        status, screen = in_a_terminal(
            [TASKFARMER, "status", "--watch", "--interval", "0.5", "--count", "3", "t.txt"], tmp_path
        )
    assert status == 0
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", screen).decode(errors="replace")
    assert "4 tasks: 0 finished, 1 failed, 3 running, 0 to process" in text
    assert re.search(r"nodeW\s+1 alive\s+3\s+3\s", text), text
    assert "task 0 (exit:7): exit 7" in text
    assert screen.index(b"\x1b[?1049h") < screen.rindex(b"\x1b[?1049l")  # the alternate screen, left at the end


def test_without_a_terminal_it_prints_one_line_per_refresh(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "true", "exit 1"])
    assert run_farmer(tasklist, "-n", "2").returncode == 1
    result = subprocess.run(
        [TASKFARMER, "status", "--watch", "--interval", "0.5", "--count", "2", str(tasklist)],
        capture_output=True,
        text=True,
        timeout=LONG,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all("3 tasks: 2 finished, 1 failed, 0 running, 0 to process" in line for line in lines)
    assert "\x1b" not in result.stdout


@pytest.mark.parametrize(
    ("options", "needle"),
    [(["--json"], "cannot be --json too"), (["--interval", "0.1"], "--interval 0.1: at least 0.5 s")],
)
def test_bad_watch_options_get_one_line(tmp_path: Path, options: list[str], needle: str) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    assert run_farmer(tasklist).returncode == 0
    result = subprocess.run(
        [TASKFARMER, "status", "--watch", *options, str(tasklist)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert needle in result.stderr


def _rchar() -> int:
    """:returns: the bytes this process has read through system calls so far"""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _workdir(tmp_path: Path, tasks: int) -> WorkDir:
    tasklist = write_tasklist(tmp_path / f"t{tasks}.txt", [f"true {n}" for n in range(tasks)])
    assert run_farmer(tasklist, "-n", "2", "-q", "--logs", "stream", timeout=300).returncode == 0
    return WorkDir(Path(f"{tasklist}_workdir"))


def _opens_per_refresh(workdir: Path, refreshes: int) -> collections.Counter[str]:
    trace = workdir.parent / f"{workdir.name}.strace"
    watch = [TASKFARMER, "status", "--watch", "--interval", "0.5", "--count", str(refreshes), str(workdir)]
    strace = ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace)]
    subprocess.run([*strace, *watch], capture_output=True, timeout=LONG, check=True)
    opened = re.findall(r'openat\(AT_FDCWD, "([^"]+)"', trace.read_text())
    return collections.Counter(Path(path).name for path in opened if path.startswith(str(workdir)))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_refresh_costs_the_same_for_100_tasks_as_for_10000(tmp_path: Path) -> None:
    assert shutil.which("strace"), "strace is needed to count what a refresh opens (Debian package strace)"
    small, big = _workdir(tmp_path, 100), _workdir(tmp_path, 10_000)
    # Files opened: the same for both lists; each refresh after the first lists the slot and farmer directories
    # (whose files it reads: one per worker and farmer, none here) and opens nothing else.
    assert _opens_per_refresh(small.path, 1) == _opens_per_refresh(big.path, 1)
    more = _opens_per_refresh(big.path, 10) - _opens_per_refresh(big.path, 1)
    assert more == collections.Counter({"running": 9, "farmers": 9})
    # Bytes read: after the first refresh, nothing of the state files while nothing changes.
    watcher = Watcher(big)
    first = _rchar()
    assert watcher.snapshot().counts.finished == 10_000
    read_first = _rchar() - first
    before = _rchar()
    for _ in range(10):
        assert watcher.snapshot().counts.finished == 10_000
    assert _rchar() - before < 4096, "an idle refresh read the state files again"
    assert read_first > big.finished.stat().st_size  # the first one read them (the measure measures)


def test_status_reads_each_slot_file_once(tmp_path: Path) -> None:
    assert shutil.which("strace"), "strace is needed to count what status opens (Debian package strace)"
    tasklist = tmp_path / "t.txt"
    write_tasklist(tasklist, ["sleep 60"] * 6)
    farmer = start_farmer(tasklist, "-n", "3", "--grace", "0")
    workdir = tmp_path / "t.txt_workdir"
    with cleanup(farmer):
        busy = lambda: (workdir / "running").exists() and len(WorkDir(workdir).running_tasks()) == 3  # noqa: E731
        wait_for(busy, what="three tasks running")
        trace = tmp_path / "status.strace"
        strace = ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace)]
        status = subprocess.run(
            [*strace, TASKFARMER, "status", str(workdir)], capture_output=True, text=True, check=False
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("  running  task") == 3
    opened = re.findall(r'openat\(AT_FDCWD, "([^"]+)"', trace.read_text())
    slots = collections.Counter(path for path in opened if path.startswith(str(workdir / "running") + "/"))
    assert len(slots) == 3, slots  # one per worker
    assert set(slots.values()) == {1}, slots  # counts, rate, logs and running lines: from one read


@pytest.mark.parametrize("mode", ["files", "stream"])
def test_the_failures_name_their_logs_in_both_modes(tmp_path: Path, mode: str) -> None:
    tasklist = tmp_path / "t.txt"
    tasklist.write_bytes(b"exit 3\necho out; exit 4\necho \xff\n")
    assert run_farmer(tasklist, "-n", "1", "--logs", mode).returncode == 1
    workdir = tmp_path / "t.txt_workdir"
    failures = Watcher(WorkDir(workdir)).snapshot().failures
    assert len(failures) == 3
    silent, printed, unreadable = sorted(failures)
    assert silent.endswith("  no output")
    assert unreadable.startswith("task 2 (invalid:not-utf8)")
    assert unreadable.endswith("  no output")  # never run
    if mode == "files":
        assert printed.endswith(f"  {workdir}/logs/log_1")
    else:
        assert re.search(rf"  {workdir}/logs/stream\.\S+@\d+\+4$", printed), printed
