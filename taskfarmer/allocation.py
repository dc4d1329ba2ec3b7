"""What the batch system tells the farmer: when the allocation ends, and work to do once per node.

With a known end (``--end-time``, the Slurm job's end, or the farmer's ``--timeout``), workers claim no task that
could not finish by then: none after the end minus ``--task-duration``, nor one whose ``time=`` directive runs past
the end. It would only be killed and run again by the next job.

``--node-setup`` runs a command once per node (unpacking an environment, staging an input file) before any worker
starts, under a node-local lock: the first farmer on the node runs it, the others wait for it and then skip it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

import filelock

from taskfarmer import process
from taskfarmer.errors import TaskFarmerError
from taskfarmer.store import _leases

_LOGGER: Final = logging.getLogger(__name__)
_SCHEDULER_TIMEOUT: Final = 20.0


def slurm_end_time(*, ask: bool = True) -> float | None:
    """:param ask: ask ``squeue`` when Slurm did not put the end in the environment (one request to slurmctld per
        farmer: only when something needs it)
    :returns: when the current Slurm job ends (epoch seconds), ``None`` outside Slurm, without a time limit, or when
        the answer cannot be read
    """
    end = os.environ.get("SLURM_JOB_END_TIME", "")  # set by recent Slurm versions
    if end.isdigit():
        return float(end)
    job = os.environ.get("SLURM_JOB_ID")
    squeue = shutil.which("squeue")
    if not job or squeue is None or not ask:
        return None
    environment = {**os.environ, "SLURM_TIME_FORMAT": "standard"}  # not the user's own format: one we read
    try:
        result = process.run_tool([squeue, "-h", "-j", job, "-o", "%e"], timeout=_SCHEDULER_TIMEOUT, env=environment)
        lines = result.stdout.split()  # an array element may be listed twice (seen on Slurm 22.05): same end
        return parse_end_time(lines[0] if lines else "")
    except (OSError, subprocess.TimeoutExpired, TaskFarmerError) as exc:
        _LOGGER.warning("cannot tell when Slurm job %s ends: %s", job, exc)
        return None


def parse_end_time(text: str) -> float | None:
    """:returns: ``2026-11-21T08:00:00`` (local time, as Slurm prints it) or epoch seconds as epoch seconds"""
    if not text or text in {"N/A", "Unknown", "NONE"}:
        return None
    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        msg = f"Cannot read the end time {text!r}: give seconds since the epoch or 2026-11-21T08:00:00."
        raise TaskFarmerError(msg) from None


def work_end(*, end_time: float | None, timeout: float | None, task_duration: float | None) -> float | None:
    """:param end_time: ``--end-time``, if given (else the Slurm job's end is asked for)
    :param timeout: ``--timeout``, counted from now
    :returns: when this farmer's work must be over (epoch seconds): the allocation's end, or its ``--timeout`` if
        sooner; ``None`` when neither is known. A task that could not finish by then is not claimed.
    """
    allocation_end = end_time if end_time is not None else slurm_end_time(ask=task_duration is not None)
    ends = [end for end in (allocation_end, time.time() + timeout if timeout else None) if end is not None]
    end = min(ends, default=None)
    if task_duration is not None and end is None:
        _LOGGER.warning("--task-duration given, but the allocation's end is unknown (no --end-time, no Slurm job)")
    elif task_duration is not None and end is not None:
        _LOGGER.info("claiming tasks until %s (the work ends %s)", time.ctime(end - task_duration), time.ctime(end))
    return end


def run_node_setup(command: str, *, workdir: Path, log_dir: Path) -> None:
    """Run *command* once on this node for this work directory (and again after a reboot).

    :raises TaskFarmerError: when it fails (its output is in ``log_dir``)
    """
    key = hashlib.sha256(f"{workdir.resolve()}\n{command}".encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / f"pytaskfarmer-{os.getuid()}"
    local.mkdir(mode=0o700, exist_ok=True)
    done = local / f"node-setup-{key}.done"
    with filelock.FileLock(local / f"node-setup-{key}.lock", fallback_to_soft=False):
        if done.exists() and done.read_text() == _leases.boot_id():
            _LOGGER.info("node setup already done on this node")
            return
        log = log_dir / f"node-setup.{_leases.host_name()}.log"
        _LOGGER.info("running the node setup on %s (output: %s)", _leases.host_name(), log)
        with log.open("w") as output:
            proc = process.start(["bash", "-c", command], cwd=None, env=os.environ, output=output)
            returncode = proc.wait()
        if returncode != 0:
            msg = f"The node setup {command!r} failed on {_leases.host_name()} (exit status {returncode}): see {log}."
            raise TaskFarmerError(msg)
        done.write_text(_leases.boot_id())
