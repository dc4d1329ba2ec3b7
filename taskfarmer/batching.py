"""How many tasks a worker claims at once.

Every claim is one hold of the lock all farmers of a work directory share; on a shared filesystem a hold costs a few
dozen metadata requests, a few milliseconds. A worker therefore claims as many tasks as it runs in a moment (the
longer the lock is contended, the longer that moment), but never more than its share of what is left, so that the
tail of a list still spreads over every worker. Long tasks are claimed one at a time: their order in the file (the
longest first, as users sort them) is kept.
"""

from __future__ import annotations

from typing import Final

MAX_BATCH: Final = 256
_MIN_TARGET: Final = 0.2  # seconds of work a batch holds, at least (when there is that much left)
_MAX_TARGET: Final = 5.0
_LOCK_SHARE: Final = 40  # a batch lasts this many lock holds: the lock is then busy ~1/40 of a worker's time
_SMOOTHING: Final = 0.2


class BatchSizer:
    """Sizes one worker's claims from the duration of its tasks, the lock's cost and what is left to do."""

    def __init__(self) -> None:
        self._seconds_per_task: float | None = None

    def ran(self, seconds: float) -> None:
        """Learn from one task that took *seconds* (start to start: the worker's own cost included)."""
        if self._seconds_per_task is None:
            self._seconds_per_task = seconds
        else:
            self._seconds_per_task += _SMOOTHING * (seconds - self._seconds_per_task)

    def size(self, *, lock_seconds: float, queue_left: int, workers: int) -> int:
        """:param lock_seconds: how long the last lock hold took, waiting included
        :param queue_left: about how many tasks are left in the queue
        :param workers: how many workers share the queue (all farmers)
        :returns: how many tasks to claim next
        """
        if self._seconds_per_task is None:
            return 1  # nothing known yet: the first task tells how long tasks take
        target = min(max(_LOCK_SHARE * lock_seconds, _MIN_TARGET), _MAX_TARGET)
        by_time = target / max(self._seconds_per_task, 1e-4)
        by_share = queue_left / (2 * max(workers, 1))
        return int(max(1, min(by_time, by_share, MAX_BATCH)))
