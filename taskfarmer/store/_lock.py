"""The work directory lock: one ``flock`` on a lock file whose descriptor stays open.

Taking the lock is the only thing a farmer does on every claim that does not need a fresh look at a file, so the
lock file is opened once per process (``filelock.lock_descriptor``) instead of once per claim: on a shared
filesystem every open is a metadata operation, and HPC centres count them.
"""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING, Final

import filelock

if TYPE_CHECKING:
    from pathlib import Path

POLL_FIRST: Final = 0.0005
# Each try is a lock request to the server on a shared filesystem: back off, and jitter, so that dozens of workers
# waiting on one lock do not poll in step (their batches make a longer wait cheap: a worker waits once per batch).
POLL_MAX: Final = 0.1


class LockTimeoutError(TimeoutError):
    """The lock was not free within the deadline."""


class DescriptorLock:
    """An exclusive lock on *path*, contending with every other process (and host) that locks the same file.

    Not reentrant, and for one thread at a time (a worker's main thread, or a farmer's).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, timeout: float) -> None:
        """Wait for the lock, at most *timeout* seconds.

        :raises LockTimeoutError: when another process held it all that time
        :raises OSError: when the lock file cannot be opened or its filesystem cannot lock (ENOSYS, ENOLCK...)
        """
        deadline = time.monotonic() + timeout
        poll = POLL_FIRST
        while True:
            fd = self._descriptor()
            if filelock.lock_descriptor(fd, blocking=False):
                if os.fstat(fd).st_nlink > 0:
                    return
                # Someone removed the lock file (a scratch purge): a lock on it excludes nobody. Use the new one.
                filelock.unlock_descriptor(fd)
                os.close(fd)
                self._fd = None
                continue
            if time.monotonic() > deadline:
                msg = f"{self.path} stayed locked for {timeout:.0f} s"
                raise LockTimeoutError(msg)
            time.sleep(poll * random.uniform(0.5, 1.5))  # noqa: S311  # jitter, not cryptography
            poll = min(poll * 2, POLL_MAX)

    def release(self) -> None:
        """Let the next process in."""
        if self._fd is not None:
            filelock.unlock_descriptor(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd
