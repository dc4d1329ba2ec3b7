from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import psutil
import pytest

from taskfarmer import store as store_module
from taskfarmer.errors import TaskFarmerError, WorkDirError
from taskfarmer.logs import print_log
from taskfarmer.store import (
    FarmerRecord,
    Holder,
    Outcome,
    SlotLog,
    SlotRecord,
    StaleViewError,
    Task,
    WorkDir,
    default_lock_path,
    ended,
)
from taskfarmer.store._leases import process_ctime

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

_Result = TypeVar("_Result")


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


def _log(store: WorkDir, slot: SlotRecord) -> SlotLog:
    return SlotLog(store.slot_path(slot.farmer, slot.worker))


def _claim(store: WorkDir, slot: SlotRecord, want: int = 1) -> tuple[SlotLog, list[Task]]:
    log = _log(store, slot)
    return log, store.exchange(log, slot, want=want)


def _run(log: SlotLog, slot: SlotRecord, index: int, returncode: int = 0, *, retry: bool = False) -> None:
    """What a worker writes to its slot file for an attempt of task *index* of its batch, lock-free."""
    task = log.tasks[index]
    attempt = max([task.attempt, *(e.attempt + 1 for e in log.ended if e.index == index)])
    log.start(index, attempt=attempt, log=f"logs/log_{task.taskid}")
    outcome = Outcome(returncode, 1.0, 2.5, attempt=attempt)
    log.end(ended(slot, index, replace(task, attempt=attempt), outcome, retry=retry))


def _ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()]


def test_tasks_are_claimed_in_file_order_in_batches_recorded_in_the_slot(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    log = _log(store, slot)
    batches = []
    while tasks := store.exchange(log, slot, want=2):
        batches.append([t.taskid for t in tasks])
        view = store.read_slot(store.slot_path(slot.farmer, 0))
        assert view is not None
        assert view.tasks == tasks
        assert [t.command for t in tasks] == [f"echo {t.taskid}" for t in tasks]
        for index in range(len(tasks)):
            _run(log, slot, index)
    assert batches == [[0, 1], [2, 3], [4]]
    assert store.toprocess.read_bytes() == b""
    assert _ids(store.finished) == ["0", "1", "2", "3", "4"]
    assert store.read_slot(store.slot_path(slot.farmer, 0)) is None


def test_outcomes_reach_the_shared_files_at_the_next_claim_and_counts_include_them_before(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    log, tasks = _claim(store, slot, want=4)
    for index, returncode in enumerate((0, 3, -9)):
        _run(log, slot, index, returncode)
    log.start(3, attempt=1, log="logs/log_3")
    assert store.finished.read_text() == ""  # still in the slot file only
    counts = store.counts()
    assert (counts.toprocess, counts.claimed, counts.running, counts.finished, counts.failed) == (1, 0, 1, 1, 2)
    assert [r.task for r in store.running_tasks()] == [3]
    _run(log, slot, 3)
    store.exchange(log, slot, want=1)
    assert store.finished.read_text() == "0 echo 0\n3 echo 3\n"
    assert store.failed.read_text() == "1 exit:3 echo 1\n2 signal:SIGKILL echo 2\n"
    events = [e for e in json.loads(store.timeline.read_text()) if e["ph"] == "X"]
    assert [e["args"]["status"] for e in events] == ["ok", "exit:3", "signal:SIGKILL", "ok"]
    assert [e["name"] for e in events] == ["task 0", "task 1", "task 2", "task 3"]
    assert events[1]["args"]["command"] == "echo 1"
    assert events[0]["dur"] == 1_500_000
    counts = store.counts()
    assert (counts.toprocess, counts.claimed, counts.running, counts.finished, counts.failed) == (0, 1, 0, 2, 2)
    assert tasks[0].taskid == 0


def test_a_stop_gives_back_the_running_task_and_the_unstarted_ones_on_top_in_order(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    log, _ = _claim(store, slot, want=3)
    _run(log, slot, 0)
    log.start(1, attempt=1, log="logs/log_1")  # killed by the stop
    store.exchange(log, slot, want=0)
    assert store.toprocess.read_text().splitlines()[-2:] == ["2 echo 2", "1@2 echo 1"]
    assert _ids(store.finished) == ["0"]
    assert store.read_slot(store.slot_path(slot.farmer, 0)) is None
    rows = [line.split("\t") for line in store.accounting.read_text().splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [("0", "ok"), ("1", "stopped")]
    _, again = _claim(store, slot)
    assert again == [Task(1, "echo 1", 2)]


def test_a_retried_task_is_accounted_each_attempt_and_recorded_once(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path, count=3)
    log, _ = _claim(store, slot, want=1)
    _run(log, slot, 0, 1, retry=True)
    _run(log, slot, 0, 0)
    store.exchange(log, slot, want=0)
    assert store.finished.read_text() == "0 echo 0\n"
    assert store.failed.read_text() == ""
    rows = [line.split("\t")[:3] for line in store.accounting.read_text().splitlines()[1:]]
    assert rows == [["0", "1", "exit:1"], ["0", "2", "ok"]]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_dead_local_workers_batch_is_settled_what_ended_is_kept_the_rest_comes_back_on_top(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    dead = replace(slot, worker=1, holder=replace(slot.holder, pid=_dead_pid()))
    log, tasks = _claim(store, dead, want=3)
    _run(log, dead, 0)
    log.start(1, attempt=1, log="logs/log_1")  # it died running this one
    log.close()
    _, live = _claim(store, slot)
    returned = store.recover_dead(me=farmer.name)
    assert [t.taskid for t in returned] == [1, 2]
    assert store.toprocess.read_text().splitlines()[-2:] == ["2 echo 2", "1@2 echo 1"]  # its farmer lives on
    assert _ids(store.finished) == ["0"]
    rows = [line.split("\t")[:3] for line in store.accounting.read_text().splitlines()[1:]]
    assert rows == [["0", "1", "ok"], ["1", "1", "lost"]]
    assert not store.slot_path(farmer.name, 1).exists()
    assert store.read_slot(store.slot_path(farmer.name, 0)) is not None  # a live worker keeps its batch
    assert [t.taskid for t in tasks] == [0, 1, 2]
    assert [t.taskid for t in live] == [3]


def test_a_dead_workers_attempt_in_a_stream_is_accounted_with_what_it_printed(tmp_path: Path) -> None:
    # In stream mode a worker records its attempt's span at the end: one that died records none (+0). Its stream has
    # no other writer once it is dead, so the attempt printed what lies from its start to the stream's end.
    store, farmer, slot = _store(tmp_path, count=2)
    dead = replace(slot, worker=1, holder=replace(slot.holder, pid=_dead_pid()))
    stream = store.logs / "stream.dead.1"
    stream.write_bytes(b"task 0 said this\n")
    log, _ = _claim(store, dead, want=2)
    log.start(0, attempt=1, log="logs/stream.dead.1@17+0")  # it died running this one
    log.close()
    with stream.open("ab") as output:
        output.write(b"line 1\nline 2\n")
    store.recover_dead(me=farmer.name)
    rows = [line.split("\t") for line in store.accounting.read_text().splitlines()[1:]]
    assert [(row[2], row[-1]) for row in rows] == [("lost", "logs/stream.dead.1@17+14")]


def test_the_tasks_of_a_dead_farmer_are_said_back_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, _, slot = _store(tmp_path, count=8)
    dead_holder = replace(slot.holder, pid=_dead_pid())
    dead_farmer = FarmerRecord(
        name=f"{dead_holder.host}.{dead_holder.pid}.dead00", holder=dead_holder, started=0.0, workers=1, lease=60
    )
    store.register(dead_farmer)
    dead = replace(slot, farmer=dead_farmer.name, holder=dead_holder)
    log, tasks = _claim(store, dead, want=7)
    log.close()
    with caplog.at_level(logging.WARNING):
        assert len(store.recover_dead(me=slot.farmer)) == 7
    said = [record.getMessage() for record in caplog.records]
    ids = ", ".join(str(task.taskid) for task in tasks[:5])
    assert said == [f"tasks {ids} and 2 more, held by farmer {dead_farmer.name}, which is gone: back in the queue"]


def test_a_slot_file_of_the_previous_version_is_recovered(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    dead = replace(slot, worker=1, holder=replace(slot.holder, pid=_dead_pid()))
    legacy = replace(dead, task=4, command="echo 4", started=time.time())
    store.slot_path(farmer.name, 1).write_bytes(legacy.to_json())
    assert [t.taskid for t in store.recover_dead(me=farmer.name)] == [4]
    assert store.toprocess.read_text().splitlines()[-1] == "4@2 echo 4"  # its farmer lives: not counted as lost


def test_a_reused_pid_does_not_keep_a_dead_holder_alive(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    # Our own PID, but a start time that is not ours: the process that claimed is gone, the PID was reused.
    impostor = replace(slot, worker=1, holder=replace(slot.holder, ctime=slot.holder.ctime - 1000))
    assert _claim(store, impostor)[1]
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
    _, tasks = _claim(store, remote_slot)
    returned = store.recover_dead(me=farmer.name)
    assert [t.taskid for t in returned] == ([tasks[0].taskid] if recovered else [])
    assert (store.farmers / remote_slot.farmer).exists() is not recovered


@pytest.mark.parametrize("farmer_file", ["damaged", "missing"])
def test_a_remote_farmer_whose_file_cannot_be_read_keeps_its_tasks(tmp_path: Path, farmer_file: str) -> None:
    # A client cache (GlusterFS's defaults) can serve a farmer file half written: that farmer is not gone.
    store, farmer, _ = _store(tmp_path)
    remote_slot = _remote(store, lease=60.0, age=5.0)
    _, tasks = _claim(store, remote_slot)
    path = store.farmers / remote_slot.farmer
    if farmer_file == "damaged":
        path.write_bytes(b'{"name": "other-node.42')
    else:
        path.unlink()
    returned = store.recover_dead(me=farmer.name)
    assert [t.taskid for t in returned] == ([] if farmer_file == "damaged" else [tasks[0].taskid])


def test_remote_holders_are_listed_until_their_tasks_are_given_back_with_their_signs_of_life(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    remote_slot = _remote(store, lease=60.0, age=30.0)
    name = remote_slot.farmer
    assert store.remote_holders(me=farmer.name) == {}  # it holds no task yet
    log, _ = _claim(store, remote_slot)
    holders = store.remote_holders(me=farmer.name)
    assert list(holders) == [name]
    assert holders[name].every == 6.0  # it heartbeats every 6 s
    assert holders[name].slots == (f"{name}.0",)
    assert store.holder_marks(holders) == {name: holders[name].mark}  # no sign of life yet
    log.start(0, attempt=1, log="")  # a task started: a sign of life
    started = store.holder_marks(holders)[name]
    assert started != holders[name].mark
    os.utime(store.farmers / name)  # a heartbeat: another
    assert store.holder_marks(holders)[name] != started
    beat = time.time() - 70  # past its lease: still its tasks until recovered
    os.utime(store.farmers / name, (beat, beat))
    assert list(store.remote_holders(me=farmer.name)) == [name]
    assert len(store.recover_dead(me=farmer.name)) == 1
    assert store.remote_holders(me=farmer.name) == {}
    assert store.holder_marks(holders) == {name: (None, 0)}  # its files are gone
    assert store.remote_holders(me=slot.farmer) == {}


def test_a_tasklist_seen_changed_at_one_claim_and_restored_by_the_next_is_no_error(tmp_path: Path) -> None:
    # A list rewritten in place (gen.py > tasks.txt) can be caught empty by a claim.
    store, _, slot = _store(tmp_path, count=3)
    tasklist = tmp_path / "tasks.txt"
    whole = tasklist.read_bytes()
    log, tasks = _claim(store, slot, want=3)  # the queue is empty: the next claim looks at the tasklist
    for index in range(len(tasks)):
        _run(log, slot, index)
    tasklist.write_bytes(b"")
    assert store.exchange(log, slot, want=1, tasklist=tasklist) == []
    assert "shorter" in store.tasklist_error
    tasklist.write_bytes(whole + b"echo appended\n")
    assert [task.command for task in store.exchange(log, slot, want=1, tasklist=tasklist)] == ["echo appended"]
    assert store.tasklist_error == ""


def test_lock_goes_to_scratch_when_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    lock = default_lock_path(tmp_path / "wd", None)
    assert lock.parent == tmp_path / "scratch"
    assert lock.name.startswith("taskfarmer-")
    monkeypatch.delenv("SCRATCH")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node-local"))
    assert default_lock_path(tmp_path / "wd", None) == tmp_path / "wd" / ".lock"
    assert default_lock_path(tmp_path / "wd", tmp_path / "locks").parent == tmp_path / "locks"


def test_a_zombie_holder_is_dead(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    child = subprocess.Popen(["sleep", "0.2"])
    started = process_ctime(child.pid)  # its true start time: only its being a zombie makes it dead
    assert started is not None
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    zombie = replace(slot.holder, pid=child.pid, ctime=started)
    assert _claim(store, replace(slot, worker=1, holder=zombie))[1]
    assert len(store.recover_dead(me=farmer.name)) == 1
    child.wait()


def test_a_batch_given_back_while_it_ran_is_only_accounted_when_it_ends(tmp_path: Path) -> None:
    store, farmer, _ = _store(tmp_path, count=2)
    remote = _remote(store, lease=60.0, age=5.0)
    log, _ = _claim(store, remote, want=1)
    log.start(0, attempt=1, log="logs/log_0")
    assert [t.taskid for t in store.forget_farmer(remote.farmer)] == [0]  # e.g. its lease expired
    _run(log, remote, 0)
    store.exchange(log, remote, want=0)
    assert store.finished.read_text() == ""
    assert _ids(store.toprocess) == ["1", "0@2:1"]
    statuses = [line.split("\t")[2] for line in store.accounting.read_text().splitlines()[1:]]
    assert statuses == ["lost", "ok"]  # the attempt as the recovery saw it, then as it really ended
    assert farmer.name != remote.farmer


@pytest.mark.parametrize("dies", [False, True])
def test_a_stopped_attempt_whose_log_was_forgotten_is_accounted_without_one(tmp_path: Path, dies: bool) -> None:
    # The worker writes the start again without the log, then gives the task back, then removes the empty file:
    # dead after the first step, its recovery names no file either.
    store, farmer, slot = _store(tmp_path, count=1)
    log, _ = _claim(store, slot)
    log.start(0, attempt=1, log="logs/log_0")
    log.record_log(0, "")
    if dies:
        log.close()
        store.forget_farmer(farmer.name)
    else:
        store.exchange(log, slot, want=0)
    rows = [line.split("\t") for line in store.accounting.read_text().splitlines()[1:]]
    assert [(row[2], row[-1]) for row in rows] == [("lost" if dies else "stopped", "")]
    assert _ids(store.toprocess) == ["0@2:1" if dies else "0@2"]


def test_another_local_farmer_leaves_a_live_farmers_dead_worker_to_it(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path)
    dead_worker = replace(slot, worker=1, holder=replace(slot.holder, pid=_dead_pid()))
    assert _claim(store, dead_worker)[1]
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
    assert _claim(store, remote_slot)[1]
    assert store.recover_dead(me=farmer.name) == []  # alive: its heartbeat is recent


def test_a_toprocess_older_than_recorded_is_a_stale_view_after_a_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, slot = _store(tmp_path)
    monkeypatch.setattr(store_module, "STALE_PATIENCE", 0.3)
    _claim(store, slot)
    before = store.toprocess.read_bytes()
    with store.toprocess.open("ab") as queue:
        queue.write(b"9 echo not recorded\n")  # what a cached view of another node's change looks like
    started = time.monotonic()
    with pytest.raises(StaleViewError, match=r"Stale view of .*toprocess .*filesystem"):
        _claim(store, replace(slot, worker=1))
    assert time.monotonic() - started >= 0.3
    assert store.toprocess.read_bytes() == before + b"9 echo not recorded\n"  # nothing changed


def test_a_journal_older_than_one_this_process_saw_is_a_stale_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, slot = _store(tmp_path)
    monkeypatch.setattr(store_module, "STALE_PATIENCE", 0.3)
    journal = store.path / ".journal"
    old = journal.read_bytes()
    _claim(store, slot)
    journal.write_bytes(old)  # a node whose cache still serves the journal as it was
    with pytest.raises(StaleViewError, match="generation"):
        _claim(store, replace(slot, worker=1))


def test_the_journal_records_the_sizes_farmers_append_at(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    log, _ = _claim(store, slot, want=2)
    _run(log, slot, 0)
    _run(log, slot, 1)
    store.exchange(log, slot, want=1)
    state = json.loads((store.path / ".journal").read_bytes())
    for name in ("toprocess", "finished", "failed", "accounting.tsv", "timeline.json"):
        assert state["sizes"][name] == (store.path / name).stat().st_size, name
    assert state["workers"] == 1


def _worker_lines(log: SlotLog, slot: SlotRecord) -> list[bytes]:
    """A batch of 3 run by a worker: finished, failed after a retry, and one started last; its slot file's lines."""
    _run(log, slot, 0)
    _run(log, slot, 1, 1, retry=True)
    _run(log, slot, 1, 2)
    log.start(2, attempt=1, log="logs/log_2")
    log.close()
    return log.path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("torn", [False, True])
@pytest.mark.parametrize("kept", range(8))
def test_a_worker_killed_after_any_line_of_its_slot_file_loses_nothing(tmp_path: Path, kept: int, torn: bool) -> None:
    """kill -9 after `kept` lines of the slot file (and in the middle of the next one): recovery puts every task
    in exactly one state, keeps what ended, accounts every attempt once.
    """
    store, farmer, slot = _store(tmp_path, count=4)
    dead = replace(slot, worker=1, holder=replace(slot.holder, pid=_dead_pid()))
    log, _ = _claim(store, dead, want=3)
    lines = _worker_lines(log, dead)
    assert len(lines) == 8  # the claim, then 7 appended lines
    content = b"".join(lines[: kept + 1])
    if torn and kept + 1 < len(lines):
        content += lines[kept + 1][:10]
    log.path.write_bytes(content)
    store.recover_dead(me=farmer.name)
    queued = _ids(store.toprocess)
    states = [line.split("@")[0] for line in queued] + _ids(store.finished) + _ids(store.failed)
    assert sorted(states) == ["0", "1", "2", "3"], states
    ended_lines = [json.loads(line) for line in lines[1 : kept + 1] if b'"end"' in line]
    rows = [tuple(line.split("\t")[:3]) for line in store.accounting.read_text().splitlines()[1:]]
    assert len(rows) == len(set(rows)), "an attempt accounted twice"
    assert len([r for r in rows if r[2] != "lost"]) == len(ended_lines)
    assert ("0" in _ids(store.finished)) is (kept >= 2)
    assert ("1" in _ids(store.failed)) is (kept >= 6)


def test_a_live_local_farmer_forgotten_by_hand_only_accounts_its_batch_afterwards(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path, count=3)
    log, _ = _claim(store, slot, want=2)
    _run(log, slot, 0)
    assert [t.taskid for t in store.forget_farmer(farmer.name)] == [1]  # 0 ended: it is kept as finished
    _run(log, slot, 1)
    store.exchange(log, slot, want=0)
    assert _ids(store.finished) == ["0"]
    assert sorted(_ids(store.toprocess)) == ["1", "2"]


def test_a_change_from_an_old_view_is_refused_by_the_marker_and_redone_once_the_view_is_fresh(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    journal = store.path / ".journal"
    old = journal.read_bytes()
    _, first = _claim(store, slot)  # node A claims task 0
    fresh = journal.read_bytes()
    journal.write_bytes(old)  # node B's client cache still serves the journal as it was...
    expiry = threading.Timer(0.4, journal.write_bytes, args=(fresh,))  # ... for a while
    expiry.start()
    node_b = WorkDir(store.path)
    started = time.monotonic()
    _, second = _claim(node_b, replace(slot, worker=1))
    expiry.join()
    assert time.monotonic() - started >= 0.4
    assert [t.taskid for t in first] == [0]
    assert [t.taskid for t in second] == [1]  # not task 0 again


def test_a_journal_read_empty_from_a_cache_never_sets_up_a_second_marker_chain(tmp_path: Path) -> None:
    # GlusterFS's client caches can serve a work directory's journal as it was when created: empty, unmarked.
    store, _, slot = _store(tmp_path)
    journal = store.path / ".journal"
    _, first = _claim(store, slot)  # node A claims task 0
    fresh = journal.read_bytes()
    generation = json.loads(fresh)["g"]
    journal.write_bytes(b"")  # node B's cache serves the journal empty...
    expiry = threading.Timer(0.4, journal.write_bytes, args=(fresh,))  # ... for a while
    expiry.start()
    started = time.monotonic()
    _, second = _claim(WorkDir(store.path), replace(slot, worker=1))
    expiry.join()
    assert time.monotonic() - started >= 0.4  # it waited for a fresh view instead of starting a chain of its own
    assert [t.taskid for t in first] == [0]
    assert [t.taskid for t in second] == [1]
    assert json.loads(journal.read_bytes())["g"] == generation + 1
    assert sorted(p.name for p in store.path.glob(".gen-*")) == [f".gen-{generation + 1}"]


def test_a_farmer_killed_between_marker_and_record_does_not_block_the_next(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path)
    generation = json.loads((store.path / ".journal").read_bytes())["g"]
    (store.path / f".gen-{generation}").rename(store.path / f".gen-{generation + 1}")  # and then kill -9
    _, tasks = _claim(store, slot)
    assert [t.taskid for t in tasks] == [0]
    assert json.loads((store.path / ".journal").read_bytes())["g"] == generation + 2


def test_a_task_running_each_time_its_farmer_dies_fails_as_lost_after_max_lost(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path, count=2)
    for deaths in (1, 2, 3):
        gone = FarmerRecord.new(workers=1, lease=60)
        gone = replace(gone, holder=replace(gone.holder, pid=_dead_pid()), name=f"{gone.name}{deaths}")
        store.register(gone)
        dead = replace(slot, farmer=gone.name, holder=gone.holder)
        log, tasks = _claim(store, dead, want=2)
        assert tasks[0].taskid == 0
        log.start(0, attempt=tasks[0].attempt, log="")  # task 0 runs; task 1, claimed with it, never starts
        log.close()
        store.recover_dead(me=farmer.name)
        if deaths < 3:
            assert store.toprocess.read_text().splitlines()[-1] == f"0@{deaths + 1}:{deaths} echo 0"
    assert store.failed.read_text() == "0 lost:3 echo 0\n"
    assert _ids(store.toprocess) == ["1"]  # never running when a farmer died: no count against it


def test_a_worker_dying_alone_does_not_count_against_its_task(tmp_path: Path) -> None:
    store, farmer, slot = _store(tmp_path, count=1)
    for worker in (1, 2, 3, 4):
        dead = replace(slot, worker=worker, holder=replace(slot.holder, pid=_dead_pid()))
        log, _ = _claim(store, dead)
        log.start(0, attempt=worker, log="")
        log.close()
        store.recover_dead(me=farmer.name)  # its farmer lives on, and stops after a few such deaths itself
    assert store.toprocess.read_text() == "0@5 echo 0\n"


def test_stops_do_not_count_as_deaths(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path, count=1)
    for attempt in (1, 2, 3, 4):
        log, tasks = _claim(store, slot)
        assert tasks == [Task(0, "echo 0", attempt)]
        log.start(0, attempt=attempt, log="")
        store.exchange(log, slot, want=0)  # a stop: the task goes back
    assert store.failed.read_text() == ""


def test_a_work_directory_of_this_version_is_never_taken_for_a_foreign_one(tmp_path: Path) -> None:
    """A second farmer may look while the first is taking the list in: state files there, tasklist.json not yet."""
    store = WorkDir(tmp_path / "wd")
    store.create()
    store.toprocess.write_text("0 echo a\n")
    store.check_not_foreign()  # no error: .lockfile says a farmer of this version made it
    (tmp_path / "wd" / ".lockfile").unlink()
    with pytest.raises(WorkDirError, match="made by another tool"):
        store.check_not_foreign()


def test_a_task_that_fails_while_requeue_reads_goes_back_as_its_next_attempt(tmp_path: Path) -> None:
    store, _, slot = _store(tmp_path, count=2)
    log, _ = _claim(store, slot, want=2)
    _run(log, slot, 0, returncode=1)
    store.exchange(log, slot, want=0)  # task 0 failed; task 1 went back
    log, _ = _claim(store, slot)
    _run(log, slot, 0, returncode=1, retry=True)
    _run(log, slot, 0, returncode=1)  # task 1: attempts 1 and 2, not in the shared files yet

    class Racing(WorkDir):
        """Another worker records task 1's failure after requeue read accounting.tsv, before it takes the lock."""

        def _transaction(self, operation: Callable[[], _Result]) -> _Result:
            store.exchange(log, slot, want=0)
            return super()._transaction(operation)

    assert sorted(Racing(store.path).requeue_failed(lambda _taskid, _status: True)) == [0, 1]
    assert sorted(store.toprocess.read_text().split("\n")[:-1]) == ["0@2 echo 0", "1@3 echo 1"]


def test_the_log_of_an_attempt_still_in_its_slot_file_is_found(tmp_path: Path) -> None:
    # An attempt that ended moments ago: its accounting line waits in its worker's slot file for the next claim.
    store, _, slot = _store(tmp_path, count=3)
    log, _ = _claim(store, slot, want=3)
    _run(log, slot, 0)  # printed nothing: no log
    out = io.BytesIO()
    print_log(store, 0, attempt=None, out=out)  # it said "it has not run yet"
    assert out.getvalue() == b""
    with pytest.raises(TaskFarmerError, match="it has not run yet"):
        print_log(store, 1, attempt=None, out=out)
    with pytest.raises(TaskFarmerError, match=r"No log of attempt 3 of task 0 in .*: it ran as attempt 1 so far"):
        print_log(store, 0, attempt=3, out=out)  # it said "it has not run yet"
