"""Runners execute one task in a software environment; ``-r NAME`` picks one defined in an INI file.

``SHIPPED`` lists the classes an INI file may name by their short name (``Runner = BasicRunner``).
"""

from __future__ import annotations

from typing import Final

from taskfarmer.runners.base import CommandRunner, Runner
from taskfarmer.runners.basic import BasicRunner

SHIPPED: Final[dict[str, str]] = {
    "BasicRunner": "taskfarmer.runners.basic.BasicRunner",
}

__all__ = ["SHIPPED", "BasicRunner", "CommandRunner", "Runner"]
