"""The cores and GPUs of one farmer, shared by its workers: which task holds which.

``--proc N`` gives the farmer N worker processes and N core slots. A plain task takes one slot; a task whose
directive says ``cores=4`` takes four, and the workers that would run more tasks meanwhile wait, so that the tasks
running on the node never use more than N cores together. GPUs given with ``--gpus`` are shared the same way by the
tasks whose directive asks for ``gpus=G``.

Each slot records which worker holds it, in memory shared by the farmer's processes. Changes happen under a
``flock`` on a node-local file: the kernel releases it when its holder dies, even by ``kill -9``, and the farmer
frees the slots of a worker that died. A worker that cannot start its task now waits; workers that started waiting
before it are served first, so a large task is not starved by a stream of small ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from taskfarmer import process

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext

_POLL: Final = 0.02


@dataclass(frozen=True)
class Allocation:
    """What one task holds: core slots (indices) and GPUs (their IDs as given to ``--gpus``)."""

    cores: tuple[int, ...]
    gpus: tuple[str, ...]


class ResourcePool:
    """The core slots and GPUs of a farmer (picklable: it crosses to spawned workers)."""

    def __init__(self, context: BaseContext, *, slots: int, gpus: tuple[str, ...], workers: int, lock: Path) -> None:
        self.slots = slots
        self.gpus = gpus
        self._lock = lock
        self._owners: Any = context.RawArray("i", slots + len(gpus))  # worker + 1 holding it, 0: free
        self._waiting: Any = context.RawArray("d", workers)  # since when a worker waits (0: it does not)
        self._needs: Any = context.RawArray("i", 2 * workers)  # cores and GPUs a waiting worker needs

    def fits(self, *, cores: int, gpus: int) -> bool:
        """:returns: whether a task needing this much can ever run here"""
        return cores <= self.slots and gpus <= len(self.gpus)

    def acquire(self, worker: int, *, cores: int, gpus: int, stopping: Callable[[], bool]) -> Allocation | None:
        """Wait until *cores* slots and *gpus* GPUs are free for *worker*, and take them.

        :returns: what was taken, ``None`` when *stopping* said stop first
        """
        since = time.monotonic()
        while not stopping():
            with _Locked(self._lock):
                taken = self._try_take(worker, cores=cores, gpus=gpus, since=since)
            if taken is not None:
                return taken
            time.sleep(_POLL)
        self._waiting[worker] = 0.0
        return None

    def release(self, worker: int) -> None:
        """Free what *worker* holds (its task ended, or it died: then the farmer calls this)."""
        for index in range(len(self._owners)):
            if self._owners[index] == worker + 1:
                self._owners[index] = 0
        self._waiting[worker] = 0.0

    def _try_take(self, worker: int, *, cores: int, gpus: int, since: float) -> Allocation | None:
        free_cores = [i for i in range(self.slots) if self._owners[i] == 0]
        free_gpus = [i for i in range(len(self.gpus)) if self._owners[self.slots + i] == 0]
        ahead_cores, ahead_gpus = self._reserved_ahead(worker, since)
        if len(free_cores) - ahead_cores < cores or len(free_gpus) - ahead_gpus < gpus:
            self._waiting[worker], self._needs[2 * worker], self._needs[2 * worker + 1] = since, cores, gpus
            return None
        chosen_cores, chosen_gpus = free_cores[:cores], free_gpus[:gpus]
        for index in chosen_cores:
            self._owners[index] = worker + 1
        for index in chosen_gpus:
            self._owners[self.slots + index] = worker + 1
        self._waiting[worker] = 0.0
        return Allocation(tuple(chosen_cores), tuple(self.gpus[i] for i in chosen_gpus))

    def _reserved_ahead(self, worker: int, since: float) -> tuple[int, int]:
        """:returns: the cores and GPUs that workers waiting since before *since* need first"""
        cores = gpus = 0
        for other in range(len(self._waiting)):
            started = self._waiting[other]
            if other != worker and started and started < since:
                cores += self._needs[2 * other]
                gpus += self._needs[2 * other + 1]
        return cores, gpus


def pool_lock_path(farmer: str, *, host: str) -> Path:
    """:param farmer: the farmer's name, ``HOST.PID.TOKEN``
    :returns: the node-local file whose ``flock`` guards the pool of *farmer*. The farmer removes it when it ends;
        one that was killed leaves it, so those of this host's dead farmers are removed here.
    """
    directory = Path(tempfile.gettempdir())
    for path in directory.glob(f"taskfarmer-{glob.escape(host)}.*.slots"):
        pid, _, _ = path.name.removeprefix(f"taskfarmer-{host}.").partition(".")
        if pid.isdigit() and not process.pid_alive(int(pid)):
            with contextlib.suppress(OSError):  # removed meanwhile, or another user's
                path.unlink()
    return directory / f"taskfarmer-{farmer}.slots"


class _Locked:
    """An exclusive ``flock`` on a node-local file, released by the kernel if its holder dies."""

    _descriptors: ClassVar[dict[Path, int]] = {}  # one per file and process: opened once

    def __init__(self, path: Path) -> None:
        self._fd = self._descriptors.get(path, -1)
        if self._fd < 0:
            self._fd = self._descriptors[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @classmethod
    def forget(cls) -> None:
        """Open the files again in a forked process: a descriptor shared with the parent shares its flock too."""
        cls._descriptors.clear()

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def cpu_set(cores: tuple[int, ...], cpus: list[int]) -> set[int]:
    """:returns: the CPUs (of those the farmer may use) that core slots *cores* stand for"""
    return {cpus[index % len(cpus)] for index in cores}


os.register_at_fork(after_in_child=_Locked.forget)
