"""Runners execute one task in a software environment; ``-r NAME`` picks one defined in an INI file.

``SHIPPED`` lists the classes an INI file may name by their short name (``Runner = DockerRunner``); each engine's
module is imported only when a definition uses it, so a basic run never loads the docker SDK or spython.
"""

from __future__ import annotations

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
