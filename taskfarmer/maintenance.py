"""Operations on a work directory besides running it: put failed tasks back, recover dead farmers, drain."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from taskfarmer.errors import TaskFarmerError
from taskfarmer.store import UNREADABLE, heartbeat_interval, heartbeat_late
from taskfarmer.words import plural

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import BinaryIO

    from taskfarmer.store import WorkDir


def failed_selector(*, statuses: list[str], ids: list[int]) -> Callable[[int, str], bool]:
    """Choose failed tasks by status (shell patterns: ``exit:*``, ``timeout``, ``signal:SIGKILL``) and/or ID.

    :returns: a predicate over (task ID, status); with neither statuses nor IDs, every failed task
    """
    wanted_ids = set(ids)

    def select(taskid: int, status: str) -> bool:
        by_status = not statuses or any(fnmatch.fnmatchcase(status, pattern) for pattern in statuses)
        by_id = not wanted_ids or taskid in wanted_ids
        return by_status and by_id

    return select


def requeue(store: WorkDir, *, statuses: list[str], ids: list[int], dead: bool, farmers: list[str]) -> str:
    """Put tasks back in the queue (of *farmers*: see :func:`check_farmers_gone` first).

    :returns: what was done, as one line
    """
    _check_farmers_known(store, farmers)
    parts = []
    total = 0
    if dead:
        returned = store.recover_dead()
        total += len(returned)
        parts.append(f"{plural(len(returned), 'task')} of dead farmers")
    for name in farmers:
        returned = store.forget_farmer(name)
        total += len(returned)
        parts.append(f"{plural(len(returned), 'task')} of farmer {name}")
    if statuses or ids or not (dead or farmers):
        back = store.requeue_failed(failed_selector(statuses=statuses, ids=ids))
        total += len(back)
        parts.append(f"{plural(len(back), 'failed task')}{_not_failed(store, set(ids) - set(back))}")
    then = " Run the farmer again to run them." if total else ""
    return "back in the queue: " + ", ".join(parts) + "." + then


def _check_farmers_known(store: WorkDir, names: list[str]) -> None:
    """:raises TaskFarmerError: for a farmer name that neither a farmer file nor a slot file bears (a typo)"""
    if not names:
        return
    known = set(store.read_farmers()) | {view.farmer for view in store.slot_views()}
    if unknown := [name for name in names if name not in known]:
        listed = ", ".join(sorted(known)) or "none"
        msg = f"No farmer {unknown[0]} in {store.path} (its farmers: {listed}; `taskfarmer status` lists them)."
        raise TaskFarmerError(msg)


def check_farmers_gone(store: WorkDir, names: list[str], *, force: bool) -> None:
    """:param force: let pass a farmer of another host whose heartbeat is fresh (the user knows its node is gone)
    :raises TaskFarmerError: for a farmer that is alive: its tasks would run twice
    """
    records = store.read_farmers()
    for name in names:
        if name not in records:
            continue  # its file is gone already: only slot files are left
        record, age = records[name]
        if record.holder.is_local() and record.holder.is_alive_locally():
            msg = (
                f"Farmer {name} is alive on this host (PID {record.holder.pid}): stop it (kill -TERM"
                f" {record.holder.pid}), and its running tasks go back to the queue by themselves."
            )
            raise TaskFarmerError(msg)
        if not record.holder.is_local() and not heartbeat_late(age, record.lease) and not force:
            msg = (
                f"Farmer {name} on {record.holder.host} heartbeat {age:.0f} s ago (it does every"
                f" {heartbeat_interval(record.lease):.0f} s): it looks alive, and its tasks would run twice. If its"
                " node is gone, wait until it misses its heartbeats, or give --force."
            )
            raise TaskFarmerError(msg)


def _not_failed(store: WorkDir, ids: set[int]) -> str:
    """:returns: why tasks asked for by ID were not put back (not in ``failed``, or a line that cannot run)"""
    if not ids:
        return ""
    finished = {int(word) for word, _ in _first_words(store.finished) if word.isdigit()}
    invalid = {int(word): status for word, status in _first_words(store.failed) if word.isdigit()}
    reasons = []
    for taskid in sorted(ids):
        if taskid in finished:
            reasons.append(f"task {taskid} finished: only failed tasks are requeued")
        elif invalid.get(taskid, "").startswith("invalid:"):
            reasons.append(f"task {taskid} cannot run as written ({invalid[taskid]}): mend its line in a new list")
        else:
            reasons.append(f"task {taskid} is not in failed: only failed tasks are requeued")
    return f" ({'; '.join(reasons)})"


def _first_words(path: Path) -> list[tuple[str, str]]:
    """:returns: the first two words (task ID, status) of each line of a state file"""
    pairs = []
    with path.open("rb") as lines:
        for line in lines:
            words = line.decode(errors="replace").rstrip("\n").split(" ", 2)
            pairs.append((words[0], words[1] if len(words) > 1 else ""))
    return pairs


def drain(store: WorkDir, *, cancel: bool) -> str:
    """Ask every farmer of the work directory to finish its running tasks and claim nothing more (or stop asking).

    :returns: what was done, as one line
    """
    if cancel:
        try:
            store.drain_file.unlink()
        except FileNotFoundError:
            return f"no drain to cancel: {store.drain_file} does not exist"
        return f"removed {store.drain_file}: farmers started from now on claim tasks again"
    if store.drain_file.exists():
        return f"already draining: {store.drain_file} exists; remove it with --cancel"
    store.drain_file.write_text("Farmers finish their running tasks and claim no more while this file exists.\n")
    return f"created {store.drain_file}: running farmers finish their tasks and exit; remove it with --cancel"


def print_failed(store: WorkDir, *, commands: bool, out: BinaryIO) -> int:
    """Print the failed tasks (``ID STATUS COMMAND``), or only their commands (``> retry.txt``).

    :returns: how many failed lines were left out of the commands: those whose recorded command is only a preview
        of an unreadable line (not UTF-8, too long, a NUL byte)
    """
    left_out = 0
    with store.failed.open("rb") as lines:
        for line in lines:
            taskid, status, command = [*line.rstrip(b"\n").split(b" ", 2), b"", b""][:3]
            if not commands:
                out.write(line)
            elif not taskid.isdigit() or status.decode(errors="replace") in UNREADABLE:
                left_out += 1
            else:
                out.write(command + b"\n")  # an invalid directive too: the user mends it in the new list
    return left_out
