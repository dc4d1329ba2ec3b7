"""pytaskfarmer: run every line of a tasklist once, on many cores and nodes, surviving crashes and preemption."""

from __future__ import annotations

from taskfarmer.errors import ConfigError, TaskFarmerError, TaskListError, WorkDirError
from taskfarmer.runners import BasicRunner, CommandRunner, Runner
from taskfarmer.tasklist import TaskList, TemplateTaskList

__all__ = [
    "BasicRunner",
    "CommandRunner",
    "ConfigError",
    "Runner",
    "TaskFarmerError",
    "TaskList",
    "TaskListError",
    "TemplateTaskList",
    "WorkDirError",
]
