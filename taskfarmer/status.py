"""``taskfarmer status WORKDIR``: the state of a work directory, readable while farmers run on other nodes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, TextIO

if TYPE_CHECKING:
    from taskfarmer.store import WorkDir

_FAILED_SHOWN: Final = 20


def print_status(store: WorkDir, out: TextIO) -> None:
    """Print counts, failed tasks, running tasks and farmers of *store* (no lock taken: a snapshot)."""
    counts = store.counts()
    out.write(
        f"{store.path}: {counts.total} tasks: {counts.finished} finished, {counts.failed} failed,"
        f" {counts.running} running, {counts.toprocess} to process\n"
    )
    _print_failed(store, out)
    now = time.time()
    for path in sorted(store.running.iterdir()):
        slot = store.read_slot(path)
        if slot is not None:
            out.write(
                f"  running  task {slot.task} on {slot.holder.host} worker {slot.worker}"
                f" for {now - slot.started:.0f} s: {slot.command[:80]}\n"
            )
    farmers = sorted(store.read_farmers().items())
    out.writelines(
        f"  farmer   {name}: {rec.workers} workers, last heartbeat {age:.0f} s ago\n" for name, (rec, age) in farmers
    )


def _print_failed(store: WorkDir, out: TextIO) -> None:
    with store.failed.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines):
            if number >= _FAILED_SHOWN:
                out.write(f"  ... see {store.failed}\n")
                return
            taskid, status, command = [*line.rstrip("\n").split(" ", 2), "", ""][:3]
            out.write(f"  failed   task {taskid} ({status}): {command[:60]}  log: {store.logs}/log_{taskid}*\n")
