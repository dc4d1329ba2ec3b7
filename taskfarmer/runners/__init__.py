"""Runners execute one task in a software environment; ``-r NAME`` picks one defined in an INI file.

``SHIPPED`` lists the classes an INI file may name by their short name (``Runner = DockerRunner``); each engine's
module is imported only when a definition uses it, so a basic run never loads the docker SDK or spython.
"""

from __future__ import annotations

import importlib
from typing import Final

from taskfarmer.runners.base import CommandRunner, Runner
from taskfarmer.runners.basic import BasicRunner

SHIPPED: Final[dict[str, str]] = {
    "ApptainerRunner": "taskfarmer.runners.apptainer.ApptainerRunner",
    "BasicRunner": "taskfarmer.runners.basic.BasicRunner",
    "DockerRunner": "taskfarmer.runners.docker.DockerRunner",
    "PixiRunner": "taskfarmer.runners.pixi.PixiRunner",
    "ShifterRunner": "taskfarmer.runners.shifter.ShifterRunner",
    "SingularityRunner": "taskfarmer.runners.apptainer.SingularityRunner",
}

__all__ = ["SHIPPED", "BasicRunner", "CommandRunner", "Runner"]


def __getattr__(name: str) -> type:
    """Import a shipped runner on first use, so that ``taskfarmer.runners.ShifterRunner`` (PyTaskFarmer's spelling
    in INI files) works without importing every engine's module up front.
    """
    target = SHIPPED.get(name)
    if target is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    module_name, _, class_name = target.rpartition(".")
    cls: type = getattr(importlib.import_module(module_name), class_name)
    return cls
