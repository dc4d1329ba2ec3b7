"""``taskfarmer status WORKDIR``: the state of a work directory, readable while farmers run on other nodes.

It takes no lock. It counts the lines of the state files (a few megabytes for a million tasks) and reads only the
tail of ``accounting.tsv``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Final, TextIO

from taskfarmer import jobs
from taskfarmer.campaign import Campaign, CampaignError
from taskfarmer.store import ACCOUNTING_HEADER, GAVE_BACK, UNREADABLE, heartbeat_late
from taskfarmer.words import format_duration, plural, printable

if TYPE_CHECKING:
    from taskfarmer.store import SlotView, WorkDir

FAILED_SHOWN: Final = 20
RATE_WINDOW: Final = 600.0  # seconds of recent completions the rate is computed over
_TAIL_BYTES: Final = 256 * 1024
_ENDED_JOBS_SHOWN: Final = 5
_LIVE_JOBS_SHOWN: Final = 20


@dataclass
class StatusReport:
    """Everything ``taskfarmer status`` shows; also its JSON form."""

    workdir: str
    tasks: dict[str, int]
    rate_per_s: float | None
    eta_s: float | None
    failed: list[dict[str, object]] = field(default_factory=list)
    failed_not_shown: int = 0
    running: list[dict[str, object]] = field(default_factory=list)
    farmers: list[dict[str, object]] = field(default_factory=list)
    campaign: dict[str, object] | None = None  # from `taskfarmer submit`: its scheduler and how many jobs
    jobs: list[dict[str, object]] = field(default_factory=list)


def collect(store: WorkDir) -> StatusReport:
    """Read the state of *store* into a report."""
    views = store.slot_views()  # read once: on a shared filesystem each read of a slot file is a round trip
    counts = store.counts(views)
    tail = _read_tail(store, views)
    farmers = farmer_states(store)
    alive = _any_alive(farmers)
    rate = tail.rate(working=alive)
    report = StatusReport(
        workdir=str(store.path),
        tasks={
            "total": counts.total,
            "toprocess": counts.toprocess,
            "claimed": counts.claimed,
            "running": counts.running,
            "finished": counts.finished,
            "failed": counts.failed,
        },
        rate_per_s=rate,
        eta_s=(counts.left + counts.running) / rate if rate and alive else None,  # nobody works on it: no ETA
        farmers=farmers,
    )
    report.failed, report.failed_not_shown = _failed(store, tail)
    report.running = _running(views)
    report.campaign, report.jobs = campaign_summary(store)
    return report


def campaign_summary(store: WorkDir) -> tuple[dict[str, object] | None, list[dict[str, object]]]:
    """:returns: the campaign's summary and its jobs (the scheduler asked at most every 30 s, by anyone)"""
    campaign = Campaign(store.path.resolve())
    if not campaign.exists():
        return None, []
    try:
        state = campaign.load()
    except CampaignError as exc:
        return {"error": str(exc)}, []
    queue, rows = jobs.current_rows(campaign, state)
    summary: dict[str, object] = {
        "scheduler": state.settings.scheduler,
        "jobs": len(rows),
        "live": jobs.live_jobs(rows),
        "successors": state.successors,
        "resubmits": state.settings.resubmits,
        "cancelled": state.cancelled,
        "stopped": state.stopped,
        "queue_age_s": round(time.time() - queue.at, 1) if queue else None,
    }
    return summary, [asdict(row) for row in rows]


class AccountingTail:
    """What the last lines of ``accounting.tsv`` tell (and those still in the workers' slot files): the recent
    completions, and the logs of the attempts that failed. Fed line by line; its memory is bounded by the rate window
    and by the failed attempts.
    """

    def __init__(self) -> None:
        self.ends: collections.deque[tuple[float, int, int]] = collections.deque()  # (end, task, attempt), in order
        self._counted: set[tuple[int, int]] = set()  # (task, attempt) of the ends: a line read twice counts once
        self.logs: dict[int, str] = {}  # task ID -> the log of its latest failed attempt ("": no output)
        self.stream = False  # an attempt of the tail wrote to a stream log

    def add(self, line: bytes) -> None:
        """Take in one accounting line (the header, or a line cut by a seek, are left out)."""
        fields = line.rstrip(b"\n").split(b"\t")
        if len(fields) < _ACCOUNTING_FIELDS or not fields[0].isdigit() or not fields[1].isdigit():
            return
        taskid, attempt, state, log = int(fields[0]), int(fields[1]), fields[2].decode(errors="replace"), fields[-1]
        self.stream = self.stream or b"@" in log
        if state != "ok":
            empty = b"@" in log and log.endswith(b"+0")  # a stream span of nothing
            self.logs[taskid] = "" if empty else log.decode(errors="replace")
        with contextlib.suppress(ValueError):
            if state not in GAVE_BACK and (taskid, attempt) not in self._counted:  # a stop or a death ended no task
                self.ends.append((float(fields[5]), taskid, attempt))
                self._counted.add((taskid, attempt))

    def rate(self, *, working: bool = True) -> float | None:
        """:param working: whether a farmer works on the list now; if not, the rate is the one it had when it last
            ran (it would only fall with time since)
        :returns: tasks per second over the last completions, ``None`` when fewer than two are recent
        """
        now = time.time()
        while self.ends and now - self.ends[0][0] > RATE_WINDOW:
            self._counted.discard(self.ends.popleft()[1:])
        if len(self.ends) < 2:  # a rate needs two ends
            return None
        ends = [end for end, _, _ in self.ends]
        return len(ends) / max((now if working else max(ends)) - min(ends), 1.0)

    def log_of(self, store: WorkDir, taskid: int, state: str) -> str | None:
        """:param state: the task's status in ``failed``
        :returns: the log of the latest attempt of failed task *taskid*: a path (a stream log's with
            ``@OFFSET+LENGTH``), ``""`` when it printed nothing or never ran, ``None`` when this cannot tell (an
            attempt older than the tail, in stream mode)
        """
        if taskid in self.logs:
            return str(store.path / self.logs[taskid]) if self.logs[taskid] else ""
        if state in UNREADABLE:  # a line that was never run
            return ""
        found = latest_log_file(store, taskid)
        return None if not found and self.stream else found


_ACCOUNTING_FIELDS: Final = len(ACCOUNTING_HEADER.split(b"\t"))


def _read_tail(store: WorkDir, views: list[SlotView]) -> AccountingTail:
    """:param views: the slot files, read before ``accounting.tsv``: what a claim merges meanwhile is then in it"""
    tail = AccountingTail()
    pending = [end.account for view in views for end in view.ended]
    with contextlib.suppress(FileNotFoundError), store.accounting.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        source.seek(max(size - _TAIL_BYTES, 0))
        for line in source.read().splitlines()[1 if size > _TAIL_BYTES else 0 :]:  # the first line may be cut
            tail.add(line)
    for line in pending:
        tail.add(line)
    return tail


def latest_log_file(store: WorkDir, taskid: int) -> str:
    """:returns: the newest log file of task *taskid* (files mode), ``""`` when it has none

    An attempt that printed nothing has no file: the attempts are probed until two in a row have none.
    """
    found, attempt, misses = "", 1, 0
    while misses < _PROBED_MISSES:
        path = store.logs / (f"log_{taskid}" if attempt == 1 else f"log_{taskid}.{attempt}")
        if path.exists():
            found, misses = str(path), 0
        else:
            misses += 1
        attempt += 1
    return found


def log_words(log: object, workdir: object, taskid: object) -> str:
    """:returns: how the log that :meth:`AccountingTail.log_of` found is named to a user"""
    if log is None:
        return f"see taskfarmer log {workdir} {taskid}"
    return str(log) or "no output"


_PROBED_MISSES: Final = 2


def _failed(store: WorkDir, tail: AccountingTail) -> tuple[list[dict[str, object]], int]:
    shown: list[dict[str, object]] = []
    hidden = 0
    with store.failed.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if len(shown) >= FAILED_SHOWN:
                hidden += 1
                continue
            taskid, status, command = [*line.rstrip("\n").split(" ", 2), "", ""][:3]
            if taskid.isdigit():
                entry = {"task": int(taskid), "status": status, "command": command}
                entry["log"] = tail.log_of(store, int(taskid), status)
                shown.append(entry)
    return shown, hidden


def _running(views: list[SlotView]) -> list[dict[str, object]]:
    now = time.time()
    return [
        {
            "task": slot.task,
            "command": slot.command,
            "host": slot.holder.host,
            "worker": slot.worker,
            "pid": slot.holder.pid,
            "farmer": slot.farmer,
            "age_s": round(now - slot.started, 1),
        }
        for view in views
        for slot in view.running()
    ]


def _any_alive(farmers: list[dict[str, object]]) -> bool:
    return any(str(farmer["state"]).startswith("alive") for farmer in farmers)


def farmer_states(store: WorkDir) -> list[dict[str, object]]:
    """:returns: every registered farmer with its host, workers and state (alive, late, presumed dead...)"""
    farmers: list[dict[str, object]] = []
    for name, (record, age) in sorted(store.read_farmers().items()):
        if record.holder.is_local():
            state = "alive" if record.holder.is_alive_locally() else "dead (process gone)"
        elif age > record.lease:
            state = f"presumed dead (no heartbeat for {age:.0f} s, lease {record.lease:.0f} s)"
        elif heartbeat_late(age, record.lease):
            state = f"late (no heartbeat for {age:.0f} s, lease {record.lease:.0f} s)"
        else:
            state = "alive"
        if record.draining:
            state += ", draining"
        farmers.append(
            {
                "name": name,
                "host": record.holder.host,
                "pid": record.holder.pid,
                "workers": record.workers,
                "heartbeat_age_s": round(age, 1),
                "state": state,
            }
        )
    return farmers


def print_status(store: WorkDir, out: TextIO, *, as_json: bool = False) -> None:
    """Print the state of *store*, as text or JSON."""
    report = collect(store)
    if as_json:
        json.dump(asdict(report), out, indent=1)
        out.write("\n")
        return
    out.write(format_text(report))


def format_text(report: StatusReport) -> str:
    """:returns: *report* as the lines ``taskfarmer status`` prints"""
    tasks = report.tasks
    lines = [
        (
            f"{report.workdir}: {plural(tasks['total'], 'task')}: {tasks['finished']} finished,"
            f" {tasks['failed']} failed, {tasks['running']} running, {tasks['toprocess'] + tasks['claimed']} to process"
        ),
    ]
    if report.rate_per_s:
        eta = f", ETA {format_duration(report.eta_s)}" if report.eta_s else ""
        when = f"over the last {RATE_WINDOW / 60:.0f} minutes" if _any_alive(report.farmers) else "when it last ran"
        lines.append(f"  rate     {report.rate_per_s:.2f} tasks/s {when}{eta}")
    lines += [
        f"  failed   task {f['task']} ({f['status']}): {cut(f['command'])}"
        f"  log: {log_words(f['log'], report.workdir, f['task'])}"
        for f in report.failed
    ]
    if report.failed_not_shown:
        lines.append(f"  ... and {plural(report.failed_not_shown, 'more failed task')}: see {report.workdir}/failed")
    lines += [
        (
            f"  running  task {r['task']} on {r['host']} ({r['farmer']} worker {r['worker']})"
            f" for {format_duration(float(str(r['age_s'])))}: {cut(r['command'])}"
        )
        for r in report.running
    ]
    lines += [
        f"  farmer   {f['name']}: {plural(int(str(f['workers'])), 'worker')}, {f['state']}" for f in report.farmers
    ]
    if report.campaign is not None:
        lines += campaign_lines(report.campaign, report.jobs)
    return "\n".join(lines) + "\n"


def cut(command: object, width: int = 60) -> str:
    """:returns: *command* on at most *width* characters, an ellipsis saying when it was cut"""
    text = printable(str(command))
    return text if len(text) <= width else text[: width - 1] + "…"


def campaign_lines(campaign: dict[str, object], rows: list[dict[str, object]]) -> list[str]:
    """:returns: the lines of ``status`` about the campaign and its jobs"""
    if "error" in campaign:
        return [f"  campaign {campaign['error']}"]
    age = campaign["queue_age_s"]
    asked = f"queue as of {format_duration(float(str(age)))} ago" if age is not None else "queue unknown from here"
    if campaign["live"] == 0:
        asked = "none queued or running"
    states = collections.Counter(str(row["state"]) for row in rows)
    state = "cancelled" if campaign["cancelled"] else f"stopped ({campaign['stopped']})" if campaign["stopped"] else ""
    if not rows:  # `submit --dry-run` wrote the job files, or the submission failed
        return [f"  campaign {campaign['scheduler']}, no job submitted" + (f", {state}" if state else "")]
    lines = [
        f"  campaign {campaign['scheduler']}, {plural(len(rows), 'job')}"
        f" ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}),"
        f" {campaign['successors']} of {campaign['resubmits']} successors used, {asked}"
        + (f", {state}" if state else "")
    ]
    live = [row for row in rows if row["state"] in ("queued", "running", "held")]
    ended = [row for row in rows if row not in live][-_ENDED_JOBS_SHOWN:]
    for row in [*ended, *live[:_LIVE_JOBS_SHOWN]]:
        since = row["since"]
        when = f" for {format_duration(time.time() - float(str(since)))}" if since and row in live else ""
        where = f" on {row['host']}" if row["host"] else ""
        detail = f": {row['detail']}" if row["detail"] else ""
        lines.append(f"  job      {row['id']} {row['state']}{where}{when}{detail}")
    if len(live) > _LIVE_JOBS_SHOWN:
        lines.append(f"  ... and {len(live) - _LIVE_JOBS_SHOWN} more queued or running jobs")
    return lines
