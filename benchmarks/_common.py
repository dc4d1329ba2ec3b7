"""Pieces the benchmark scripts share: tasklists of ``true``, counting a state file's lines, the machine's cores."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def write_tasklist(directory: Path, tasks: int, command: str = "true") -> Path:
    """Write a tasklist of *tasks* lines of *command* in one go. :returns: its path"""
    path = directory / f"tasks_{tasks}.txt"
    path.write_bytes(f"{command}\n".encode() * tasks)
    return path


def count_lines(path: Path) -> int:
    """:returns: the number of lines of *path*, 0 when it does not exist"""
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def nproc() -> int:
    """:returns: the cores this process may run on"""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
