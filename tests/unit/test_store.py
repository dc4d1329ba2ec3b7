from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import psutil
import pytest

from taskfarmer.store import FarmerRecord, Holder, Outcome, SlotRecord, WorkDir, default_lock_path
from taskfarmer.store._leases import process_ctime

if TYPE_CHECKING:
    from pathlib import Path


def _store(tmp_path: Path, count: int = 5) -> tuple[WorkDir, FarmerRecord, SlotRecord]:
    tasklist = tmp_path / "tasks.txt"
    tasklist.write_text("".join(f"echo {i}\n" for i in range(count)))
    store = WorkDir(tmp_path / "wd")
    store.create()
    store.sync_tasklist(tasklist)
    farmer = FarmerRecord.new(workers=1, lease=60)
    store.register(farmer)
    slot = SlotRecord(-1, "", farmer.name, 0, Holder.this_process(), 0.0)
    return store, farmer, slot


def _finish(store: WorkDir, slot: SlotRecord, taskid: int, command: str, returncode: int = 0) -> None:
    store.finish_and_claim(replace(slot, task=taskid, command=command), Outcome(returncode, 1.0, 2.5), claim_next=False)


def test_tasks_are_claimed_in_file_order_and_recorded_in_the_slot(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    claimed = []
    while (task := store.claim(slot)) is not None:
        claimed.append(task.taskid)
        record = store.read_slot(store.slot_path(slot.farmer, 0))
        assert record is not None
        assert (record.task, record.command) == (task.taskid, f"echo {task.taskid}")
    assert claimed == [0, 1, 2, 3, 4]
    assert store.toprocess.read_bytes() == b""
    assert store.read_slot(store.slot_path(slot.farmer, 0)) is None


def test_a_released_task_is_claimed_next(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    first = store.claim(slot)
    assert first is not None
    assert store.release(replace(slot, task=first.taskid, command=first.command)) is True
    assert store.read_slot(store.slot_path(slot.farmer, 0)) is None
    assert store.toprocess.read_text().splitlines()[-1] == "0@2 echo 0"
    again = store.claim(slot)
    assert again == replace(first, attempt=2)
    assert store.counts().toprocess == 4


def test_release_of_a_task_recovered_by_someone_else_does_nothing(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    task = store.claim(slot)
    assert task is not None
    other_holder = replace(slot.holder, pid=slot.holder.pid + 1)
    assert store.release(replace(slot, task=task.taskid, command=task.command, holder=other_holder)) is False
    assert store.counts().toprocess == 4


def test_finish_records_status_and_timeline_stays_valid_json(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    for expected_rc in (0, 3, -9, 0):
        task = store.claim(slot)
        assert task is not None
        _finish(store, slot, task.taskid, task.command, expected_rc)
        events = json.loads(store.timeline.read_text())
        assert events[-1]["args"]["task"] == task.taskid
    assert store.finished.read_text() == "0 echo 0\n3 echo 3\n"
    assert store.failed.read_text() == "1 exit:3 echo 1\n2 signal:SIGKILL echo 2\n"
    events = json.loads(store.timeline.read_text())
    tasks = [e for e in events if e["ph"] == "X"]
    assert [e["args"]["status"] for e in tasks] == ["ok", "exit:3", "signal:SIGKILL", "ok"]
    assert tasks[0]["dur"] == 1_500_000
    assert next(e for e in events if e["ph"] == "M")["args"]["name"] == slot.farmer
    counts = store.counts()
    assert (counts.toprocess, counts.running, counts.finished, counts.failed) == (1, 0, 2, 2)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_tasks_of_a_dead_local_worker_come_back_on_top(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    dead = replace(slot, worker=1, holder=replace(slot.holder, pid=_dead_pid()))
    task = store.claim(dead)
    assert task is not None
    live_task = store.claim(slot)
    assert live_task is not None
    returned = store.recover_dead(me=farmer.name)
    assert [t.taskid for t in returned] == [task.taskid]
    assert store.toprocess.read_text().splitlines()[-1] == f"{task.taskid}@2 {task.command}"
    assert not store.slot_path(farmer.name, 1).exists()
    assert store.read_slot(store.slot_path(farmer.name, 0)) is not None  # a live worker keeps its task


def test_a_reused_pid_does_not_keep_a_dead_holder_alive(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    # Our own PID, but a start time that is not ours: the process that claimed is gone, the PID was reused.
    impostor = replace(slot, worker=1, holder=replace(slot.holder, ctime=slot.holder.ctime - 1000))
    assert store.claim(impostor) is not None
    assert len(store.recover_dead(me=farmer.name)) == 1


def _remote(store: WorkDir, *, lease: float, age: float) -> SlotRecord:
    remote_holder = Holder(host="other-node", boot="x", pid=4242, ctime=1.0)
    remote = FarmerRecord(name="other-node.4242.abcdef", holder=remote_holder, started=0.0, workers=1, lease=lease)
    store.register(remote)
    heartbeat = time.time() - age
    os.utime(store.farmers / remote.name, (heartbeat, heartbeat))
    return SlotRecord(-1, "", remote.name, 0, remote_holder, 0.0)


@pytest.mark.parametrize(("age", "recovered"), [(5.0, False), (120.0, True)])
def test_remote_farmers_are_dead_only_after_their_lease(tmp_path: Path, age: float, recovered: bool) -> None:
    store, farmer, _ = _store(tmp_path)
    remote_slot = _remote(store, lease=60.0, age=age)
    task = store.claim(remote_slot)
    assert task is not None
    returned = store.recover_dead(me=farmer.name)
    assert [t.taskid for t in returned] == ([task.taskid] if recovered else [])
    assert (store.farmers / remote_slot.farmer).exists() is not recovered


def test_a_late_remote_farmer_is_reported_stale_before_its_lease_ends(tmp_path: Path) -> None:
    store, farmer, _ = _store(tmp_path)
    remote_slot = _remote(store, lease=60.0, age=30.0)
    assert store.claim(remote_slot) is not None
    assert store.stale_holders(me=farmer.name) == [remote_slot.farmer]


def test_lock_goes_to_scratch_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    lock = default_lock_path(tmp_path / "wd", None)
    assert lock.parent == tmp_path / "scratch"
    assert lock.name.startswith("taskfarmer-")
    monkeypatch.delenv("SCRATCH")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node-local"))
    assert default_lock_path(tmp_path / "wd", None) == tmp_path / "wd" / ".lock"
    assert default_lock_path(tmp_path / "wd", tmp_path / "locks").parent == tmp_path / "locks"


def test_a_retried_task_is_claimed_again_at_once_and_never_lost(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path, count=3)
    task = store.claim(slot)
    assert task is not None
    failing = replace(slot, task=task.taskid, command=task.command, attempt=task.attempt)
    again = store.finish_and_claim(failing, Outcome(1, 1.0, 2.0), claim_next=True, retry=True)
    assert again is not None
    assert (again.taskid, again.attempt) == (0, 2)
    assert sorted(int(line.split()[0]) for line in store.toprocess.read_text().splitlines()) == [1, 2]
    assert store.failed.read_text() == ""


def test_a_zombie_holder_is_dead(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    child = subprocess.Popen(["sleep", "0.2"])
    started = process_ctime(child.pid)  # its true start time: only its being a zombie makes it dead
    assert started is not None
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    zombie = replace(slot.holder, pid=child.pid, ctime=started)
    assert store.claim(replace(slot, worker=1, holder=zombie)) is not None
    assert len(store.recover_dead(me=farmer.name)) == 1
    child.wait()


def test_a_task_given_back_while_it_ran_is_only_accounted_when_it_ends(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path, count=2)
    task = store.claim(slot)
    assert task is not None
    assert [t.taskid for t in store.forget_farmer(farmer.name)] == [0]  # e.g. its lease expired
    running = replace(slot, task=task.taskid, command=task.command)
    assert store.finish_and_claim(running, Outcome(0, 1.0, 2.0), claim_next=False) is None
    assert store.finished.read_text() == ""
    assert [line.split()[0] for line in store.toprocess.read_text().splitlines()] == ["1", "0@2"]
    assert len(store.accounting.read_text().splitlines()) == 2  # the header and this attempt


def test_another_local_farmer_leaves_a_live_farmers_dead_worker_to_it(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    dead_worker = replace(slot, worker=1, holder=replace(slot.holder, pid=_dead_pid()))
    assert store.claim(dead_worker) is not None
    assert store.recover_dead(me="some-other-farmer") == []  # its own farmer kills what it left, then recovers
    assert len(store.recover_dead(me=farmer.name)) == 1


def test_a_half_written_appended_line_waits_for_its_newline(tmp_path: Path) -> None:
    tasklist = tmp_path / "tasks.txt"
    tasklist.write_text("a\nb\n")
    store = WorkDir(tmp_path / "wd")
    store.create()
    store.sync_tasklist(tasklist)
    with tasklist.open("a") as handle:
        handle.write("c\nd")  # a generator in the middle of writing "def\n"
    store.sync_tasklist(tasklist)
    assert store.toprocess.read_text() == "2 c\n1 b\n0 a\n"
    with tasklist.open("a") as handle:
        handle.write("ef\n")
    store.sync_tasklist(tasklist)
    assert store.toprocess.read_text() == "3 def\n2 c\n1 b\n0 a\n"


def test_records_of_a_newer_farmer_version_are_read_not_taken_for_damaged(tmp_path: Path) -> None:
    store, farmer, _ = _store(tmp_path)
    remote_slot = _remote(store, lease=60.0, age=5.0)
    newer = json.loads((store.farmers / remote_slot.farmer).read_text())
    newer["gpu_model"] = "A100"  # a field this version does not know
    newer["holder"]["namespace"] = "pid:[4026531836]"
    (store.farmers / remote_slot.farmer).write_text(json.dumps(newer))
    assert remote_slot.farmer in store.read_farmers()
    assert store.claim(remote_slot) is not None
    assert store.recover_dead(me=farmer.name) == []  # alive: its heartbeat is recent
