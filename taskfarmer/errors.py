"""The errors a user can cause: each one prints as one clear line and changes nothing."""

from __future__ import annotations


class TaskFarmerError(Exception):
    """Base of every error caused by user input; ``cli.main`` prints it as one line and exits 2."""

    def __reduce__(self) -> tuple[type[TaskFarmerError], tuple[str]]:
        # Errors raised in worker processes cross a pipe: keep them picklable with their message.
        return (type(self), (str(self),))


class ConfigError(TaskFarmerError):
    """A runner or tasklist-handler definition (INI file) is wrong."""


class UnknownDefinitionError(ConfigError):
    """A runner or tasklist handler name that no INI file defines."""


class TaskListError(TaskFarmerError):
    """The tasklist cannot be read, or no longer matches the work directory."""


class WorkDirError(TaskFarmerError):
    """The work directory or the lock directory cannot be used."""


class EngineNotFoundError(TaskFarmerError):
    """An executable a runner needs is not on PATH or does not run."""


class MissingDependencyError(TaskFarmerError):
    """An optional package a command needs (an extra such as ``report``) is not installed."""
