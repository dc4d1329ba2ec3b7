"""Promise 1 and 2 under kill -9: no task lost, no task run twice unless its farmer died while running it."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from taskfarmer.store import WorkDir, recorded_lock_path
from taskfarmer.worker import WORKER_NAME
from tests.helpers import (
    LONG,
    cleanup,
    ids,
    lines,
    processes_with_env,
    run_farmer,
    start_farmer,
    wait_for,
    workers_of,
    write_tasklist,
)

TASKS = 300
WORKERS = 4
KILLS = 6


def _tasklist(tmp_path: Path) -> Path:
    starts, done = tmp_path / "starts", tmp_path / "done"
    return write_tasklist(
        tmp_path / "tasks.txt",
        [f"echo $PROC_NUMBER >> {starts}; sleep 0.0$((RANDOM % 5)); echo $PROC_NUMBER >> {done}"] * TASKS,
    )


def _slot_tasks(workdir: Path) -> set[int]:
    held: set[int] = set()
    for path in (workdir / "running").glob("*"):
        view = WorkDir.read_slot(path)
        if view is not None:
            held.update(task.taskid for task in view.tasks)  # its whole batch: ended ones are written yet
    return held


def _assert_each_task_in_exactly_one_state(workdir: Path) -> None:
    store = WorkDir(workdir)
    with store.locked():  # completes a change a killed farmer left half done, as the next farmer would
        pass
    states = [
        ids(workdir / "toprocess"),
        ids(workdir / "finished"),
        ids(workdir / "failed"),
        sorted(_slot_tasks(workdir)),
    ]
    everything = [task for state in states for task in state]
    duplicates = [task for task, n in collections.Counter(everything).items() if n > 1]
    assert duplicates == [], f"tasks in two states at once: {duplicates}"
    assert sorted(everything) == list(range(TASKS)), "tasks lost"


def _assert_each_log_in_the_accounting_is_that_attempts(workdir: Path) -> None:
    # A silent task's empty log is renamed to the next task's: a kill anywhere in that must never leave a record
    # pointing at a file that is gone, or at another task's.
    for row in lines(workdir / "accounting.tsv")[1:]:
        taskid, attempt, *_, log = row.split("\t")
        if log:
            assert log == (f"logs/log_{taskid}" if attempt == "1" else f"logs/log_{taskid}.{attempt}"), row
            assert (workdir / log).exists(), row


def _kill_whole_tree(farmer: subprocess.Popen[str], marker: str) -> None:
    os.killpg(farmer.pid, signal.SIGKILL)
    for proc in processes_with_env("TF_TEST_MARK", marker):  # tasks run in sessions of their own
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _kill_main_only(farmer: subprocess.Popen[str], marker: str, workdir: Path, seen: set[int]) -> None:
    os.kill(farmer.pid, signal.SIGKILL)

    # Workers notice their farmer is gone, end their tasks and return them; watch what they still hold meanwhile,
    # often (a slot may be held for milliseconds), and look for surviving processes (a slow scan) now and then.
    def gone() -> bool:
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            seen.update(_slot_tasks(workdir))
        return not processes_with_env("TF_TEST_MARK", marker)

    wait_for(gone, what="the workers and tasks of a killed farmer to end")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["whole tree", "main process only"])
def test_random_kill_9_then_restart_loses_nothing(tmp_path: Path, mode: str) -> None:
    tasklist = _tasklist(tmp_path)
    workdir = tmp_path / "tasks.txt_workdir"
    rng = random.Random(os.environ.get("PYTEST_SEED", "7"))  # noqa: S311  # timing jitter, not cryptography
    in_flight: set[int] = set()
    for _ in range(KILLS):
        marker = uuid.uuid4().hex
        farmer = start_farmer(tasklist, "-n", str(WORKERS), "-q", env={"TF_TEST_MARK": marker})
        with cleanup(farmer):
            time.sleep(rng.uniform(0.3, 2.0))  # the kill lands anywhere: startup, claims, tasks, finishes
            in_flight |= _slot_tasks(workdir) if workdir.exists() else set()
            if mode == "whole tree":
                _kill_whole_tree(farmer, marker)
            else:
                _kill_main_only(farmer, marker, workdir, in_flight)
            farmer.wait(timeout=LONG)
        if (workdir / "toprocess").exists():
            in_flight |= _slot_tasks(workdir)
            _assert_each_task_in_exactly_one_state(workdir)
    final = run_farmer(tasklist, "-n", str(WORKERS), timeout=240)
    assert final.returncode == 0, final.stderr
    assert sorted(ids(workdir / "finished")) == list(range(TASKS))
    done = collections.Counter(int(x) for x in lines(tmp_path / "done"))
    assert set(done) == set(range(TASKS)), "some task never completed"
    ran_twice = {task for task, n in done.items() if n > 1}
    assert ran_twice <= in_flight, f"tasks ran twice without being in flight at a kill: {ran_twice - in_flight}"
    assert sum(n - 1 for n in done.values()) <= KILLS * WORKERS
    _assert_each_log_in_the_accounting_is_that_attempts(workdir)


@pytest.mark.timeout(180)
def test_four_farmers_share_one_list_without_duplicates(tmp_path: Path) -> None:
    count = 3000
    done = tmp_path / "done"
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"echo $PROC_NUMBER >> {done}"] * count)
    farmers = [start_farmer(tasklist, "-n", "2", "-q") for _ in range(4)]
    with cleanup(*farmers):
        statuses = [farmer.wait(timeout=170) for farmer in farmers]
    assert statuses == [0, 0, 0, 0]
    counts = collections.Counter(int(x) for x in lines(done))
    assert sorted(counts) == list(range(count))
    assert max(counts.values()) == 1, "a task ran twice"
    finished = ids(tmp_path / "tasks.txt_workdir" / "finished")
    assert sorted(finished) == list(range(count))


def _descriptors_of(proc: psutil.Process, path: Path) -> int:
    return sum(Path(item.path) == path for item in proc.open_files())


def _busy_farmer(tmp_path: Path, line: str) -> tuple[subprocess.Popen[str], Path]:
    """Start a farmer of 2 workers on 4 tasks of *line*; return once both run one."""
    farmer = start_farmer(write_tasklist(tmp_path / "t.txt", [line] * 4), "-n", "2")
    workdir = tmp_path / "t.txt_workdir"
    busy = lambda: (workdir / "running").exists() and len(WorkDir(workdir).running_tasks()) == 2  # noqa: E731
    try:
        wait_for(busy, what="both workers busy")
    except BaseException:
        farmer.kill()
        raise
    return farmer, workdir


@pytest.mark.timeout(120)
def test_workers_share_no_open_lock_file_with_their_farmer(tmp_path: Path) -> None:
    # A flock belongs to an open file, which lives while any process holds a descriptor of it: a worker forked
    # with its farmer's descriptor would keep the work directory locked after a kill -9 of the farmer holding it.
    farmer, workdir = _busy_farmer(tmp_path, "sleep 30")
    with cleanup(farmer):
        first = workers_of(farmer.pid)
        first[0].kill()  # its replacement is started by a farmer that has used the lock by then

        def replaced() -> set[int]:
            return {p.pid for p in workers_of(farmer.pid)} - {first[0].pid}

        wait_for(lambda: len(replaced()) == 2 and len(WorkDir(workdir).running_tasks()) == 2, what="a new worker busy")
        lock = recorded_lock_path(workdir)
        assert lock is not None
        assert _descriptors_of(psutil.Process(farmer.pid), lock) == 1
        for pid in replaced():
            assert _descriptors_of(psutil.Process(pid), lock) == 1  # its own, opened for its claims


@pytest.mark.timeout(60)
def test_pkill_of_the_farmers_command_line_spares_its_workers_which_end_their_tasks(tmp_path: Path) -> None:
    # Forked workers show a title of their own, not the farmer's command line: "pkill -9 -f TASKLIST" kills the
    # farmer alone, and its workers, seeing it gone, end their tasks and give them back.
    marker = uuid.uuid4().hex
    farmer, workdir = _busy_farmer(tmp_path, f"TF_TEST_MARK={marker} sleep 30")
    with cleanup(farmer):
        workers = workers_of(farmer.pid)
        assert [p.cmdline()[0].split()[0] for p in workers] == [f"{WORKER_NAME}0", f"{WORKER_NAME}1"]
        pkill = subprocess.run(["pkill", "-9", "-f", str(tmp_path / "t.txt")], check=False)
        assert pkill.returncode == 0
        wait_for(lambda: not processes_with_env("TF_TEST_MARK", marker), what="the tasks to end")
        wait_for(lambda: len(ids(workdir / "toprocess")) == 4, what="the tasks back in the queue")
        assert not WorkDir(workdir).running_tasks()


@pytest.mark.timeout(60)
def test_the_pool_lock_file_of_a_killed_farmer_is_removed_by_the_next_on_its_host(tmp_path: Path) -> None:
    # Each farmer guards its core slots with a flock on a node-local file, removed when it ends; kill -9 leaves it.
    host = f"poolhost{uuid.uuid4().hex[:8]}"

    def pool_files() -> list[Path]:
        return sorted(Path(tempfile.gettempdir()).glob(f"taskfarmer-{host}.*.slots"))

    busy = write_tasklist(tmp_path / "busy.txt", ["sleep 30"] * 4)
    killed, alive = (start_farmer(busy, "-n", "1", env={"SLURMD_NODENAME": host}) for _ in range(2))
    with cleanup(killed, alive):
        wait_for(lambda: len(pool_files()) == 2, what="two pool files")
        killed_file = next(path for path in pool_files() if f".{killed.pid}." in path.name)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=LONG)
        assert killed_file.exists()  # the kill left it
        quick = write_tasklist(tmp_path / "quick.txt", ["true"])
        assert run_farmer(quick, env={"SLURMD_NODENAME": host}).returncode == 0
        assert [path.name for path in pool_files()] == [f"taskfarmer-{_farmer_name(alive.pid, busy)}.slots"]
    assert not pool_files()  # the last ended as it should: it removed its own


def _farmer_name(pid: int, tasklist: Path) -> str:
    workdir = tasklist.parent / f"{tasklist.name}_workdir"
    (name,) = [path.name for path in (workdir / "farmers").iterdir() if f".{pid}." in path.name]
    return name


@pytest.mark.timeout(60)
def test_a_farmer_waiting_for_its_workers_sleeps(tmp_path: Path) -> None:
    # It wakes when a worker ends (its sentinel pipe) or at its tick: a worker that closed its end of that pipe
    # would make the farmer spin.
    farmer, _ = _busy_farmer(tmp_path, "sleep 4")
    with cleanup(farmer):
        watched = psutil.Process(farmer.pid)
        before = sum(watched.cpu_times()[:2])
        time.sleep(2)
        used = sum(watched.cpu_times()[:2]) - before
        assert used < 0.5, f"the farmer used {used:.2f} s of CPU in 2 s while its workers waited for their tasks"
        farmer.communicate(timeout=30)
    assert farmer.returncode == 0


@pytest.mark.timeout(120)
def test_a_dead_worker_is_replaced_and_its_task_returned(tmp_path: Path) -> None:
    done = tmp_path / "done"
    tasklist = write_tasklist(tmp_path / "t.txt", [f"sleep 0.3; echo $PROC_NUMBER >> {done}"] * 20)
    farmer = start_farmer(tasklist, "-n", "2")
    workdir = tmp_path / "t.txt_workdir"
    with cleanup(farmer):
        busy = lambda: len(WorkDir(workdir).running_tasks()) == 2 if (workdir / "running").exists() else False  # noqa: E731
        wait_for(busy, what="both workers busy")
        workers = workers_of(farmer.pid)
        assert len(workers) == 2
        victim = workers[0]
        victim_task = next(r.task for r in WorkDir(workdir).running_tasks() if r.holder.pid == victim.pid)
        victim.kill()
        _, stderr = farmer.communicate(timeout=90)
    assert farmer.returncode == 0, stderr
    assert "worker" in stderr
    assert "died" in stderr
    assert sorted(ids(workdir / "finished")) == list(range(20))
    assert victim_task in {int(x) for x in lines(done)}
