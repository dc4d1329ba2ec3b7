"""How a worker prepares one task: its directive read, its runner found, its cores and GPUs bound, its outputs.

A task's line may end with a ``#taskfarmer`` directive (see :mod:`taskfarmer.directives`). The worker builds each
runner a directive names once, when a task first needs it; binds the task to the cores and GPUs it got from the
farmer's :class:`~taskfarmer.packing.ResourcePool` (CPU affinity, ``OMP_NUM_THREADS``, ``CUDA_VISIBLE_DEVICES``...);
and afterwards checks that the outputs it declared exist.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from taskfarmer import config
from taskfarmer.directives import Directive, split
from taskfarmer.packing import Allocation, cpu_set

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from taskfarmer.runners import Runner
    from taskfarmer.store import Task

MISSING: Final = "missing:outputs"  # a task that exited 0 without making what it declared
GPU_VARIABLES: Final = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "TASKFARMER_GPU")


@dataclass(frozen=True)
class TaskPlan:
    """One task, ready to run."""

    line: str  # the tasklist line without its directive: what the tasklist handler gets
    directive: Directive
    runner: Runner
    variables: Mapping[str, str]  # the runner's ``variables``
    outputs: tuple[str, ...]  # the declared outputs, placeholders replaced


class Planner:
    """Prepares the tasks of one worker.

    :param runner: the farm's runner (``-r``) and its variables, for tasks whose directive names none
    :param grace: the farmer's ``--grace``, for the runners that directives name
    """

    def __init__(self, runner: tuple[Runner, Mapping[str, str]], *, default_name: str, grace: float) -> None:
        self._runners: dict[str, tuple[Runner, Mapping[str, str]]] = {default_name: runner}
        self._default = default_name
        self._grace = grace

    def plan(self, task: Task) -> TaskPlan:
        """:returns: how to run *task*
        :raises TaskFarmerError: for a directive that cannot be understood or names an unknown runner
        """
        line, directive = split(task.command)
        runner, variables = self._runner(directive.runner or self._default)
        outputs = tuple(directive.output_paths(line, taskid=task.taskid))
        return TaskPlan(line, directive, runner, variables, outputs)

    def runners(self) -> list[Runner]:
        """:returns: every runner built so far (their ``cleanup`` runs when the worker stops)"""
        return [runner for runner, _ in self._runners.values()]

    def _runner(self, name: str) -> tuple[Runner, Mapping[str, str]]:
        if name not in self._runners:
            self._runners[name] = config.build_runner(config.runner_catalog().get(name), grace=self._grace)
        return self._runners[name]


def missing_outputs(outputs: tuple[str, ...]) -> list[str]:
    """:returns: the declared outputs that do not exist or are empty"""
    missing = []
    for output in outputs:
        try:
            empty = Path(output).stat().st_size == 0
        except OSError:
            empty = True
        if empty:
            missing.append(output)
    return missing


@contextlib.contextmanager
def bound(plan: TaskPlan, allocation: Allocation) -> Iterator[None]:
    """Give the task its runner's variables and, when its directive asks for them, its cores and GPUs.

    The worker runs one task at a time, and its children inherit its environment and CPU affinity: both are set
    here for the task, and put back afterwards (only what was changed: most tasks change nothing).
    """
    changes = dict(plan.variables)
    affinity: set[int] = set()
    if "cores" in plan.directive.given:
        cores = str(len(allocation.cores))
        slots = ",".join(str(core) for core in allocation.cores)
        changes.update(OMP_NUM_THREADS=cores, TASKFARMER_CORES=cores, TASKFARMER_CORE_SLOTS=slots)
        affinity = _affinity()
    if allocation.gpus:
        changes.update(dict.fromkeys(GPU_VARIABLES, ",".join(allocation.gpus)))
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    if affinity:
        os.sched_setaffinity(0, cpu_set(allocation.cores, sorted(affinity)))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if affinity:
            os.sched_setaffinity(0, affinity)


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux: no binding to cores
        return set()
