"""Per-task directives: what a task needs and makes, in a trailing comment of its tasklist line.

A plain line stays plain; a line may end with ``#taskfarmer`` and ``key=value`` words::

    root -b -q fit.C       #taskfarmer cores=4 memory=8G time=2h
    python train.py --run 7 #taskfarmer gpus=1 runner=pytorch
    Marlin steer.xml --in=run{#}.slcio #taskfarmer outputs=out/run{#}.slcio,out/run{#}.root

bash reads the directive as a comment, so the line runs the same with or without a farmer that understands it. Keys:
``cores`` (the worker slots the task takes, and its CPU affinity and ``OMP_NUM_THREADS``), ``gpus``, ``memory``
(its limit, as ``--task-memory``), ``time`` (its expected duration, against the allocation's end), ``runner`` (the
runner it runs in) and ``outputs`` (the files it makes, comma-separated; placeholders as the template handler's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from taskfarmer.errors import TaskFarmerError

MARKER: Final = "#taskfarmer"
_DIRECTIVE: Final = re.compile(r"(?:^|\s)#taskfarmer(?:\s+(?P<words>.*?))?\s*$")
_PLACEHOLDER: Final = re.compile(r"\{(|\.|/|//|/\.|#)\}")
_SIZE_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TIME_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
KEYS: Final = ("cores", "gpus", "memory", "time", "runner", "outputs")


class DirectiveError(TaskFarmerError):
    """A ``#taskfarmer`` directive that cannot be understood."""


@dataclass(frozen=True)
class Directive:
    """What one task asks for (the defaults: what every task of a farm gets)."""

    cores: int = 1
    gpus: int = 0
    memory: int | None = None  # bytes
    duration: float | None = None  # seconds
    runner: str | None = None
    outputs: tuple[str, ...] = ()
    given: frozenset[str] = frozenset()  # the keys the line gave (cores=1 given binds the task to one core)

    def output_paths(self, line: str, *, taskid: int) -> list[str]:
        """:returns: the declared outputs with their placeholders replaced (from the line without its directive)"""
        return [_PLACEHOLDER.sub(lambda m: _part(m.group(1), line, taskid), output) for output in self.outputs]


PLAIN: Final = Directive()


def split(line: str) -> tuple[str, Directive]:
    """Separate a tasklist line from its directive.

    :returns: the line without its directive, and the directive (:data:`PLAIN` when it has none)
    :raises DirectiveError: for a directive with an unknown key or a bad value
    """
    if MARKER not in line:
        return line, PLAIN
    match = _DIRECTIVE.search(line)
    if match is None:
        return line, PLAIN
    values: dict[str, str] = {}
    for word in (match.group("words") or "").split():
        key, equals, value = word.partition("=")
        if not equals or key not in KEYS or not value:
            msg = f"{word!r} is not a directive: use key=value with a key among {', '.join(KEYS)}"
            raise DirectiveError(msg)
        values[key] = value
    return line[: match.start()].rstrip(), _directive(values)


def _directive(values: dict[str, str]) -> Directive:
    outputs = tuple(path for path in values.get("outputs", "").split(",") if path)
    return Directive(
        cores=_count(values, "cores", default=1, least=1),
        gpus=_count(values, "gpus", default=0, least=0),
        memory=_size(values["memory"]) if "memory" in values else None,
        duration=_seconds(values["time"]) if "time" in values else None,
        runner=values.get("runner"),
        outputs=outputs,
        given=frozenset(values),
    )


def _count(values: dict[str, str], key: str, *, default: int, least: int) -> int:
    text = values.get(key)
    if text is None:
        return default
    if not text.isdigit() or int(text) < least:
        msg = f"{key}={text}: give a whole number of at least {least}"
        raise DirectiveError(msg)
    return int(text)


def _size(text: str) -> int:
    cleaned = text.upper().removesuffix("B").removesuffix("I")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in _SIZE_UNITS else (cleaned, "")
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        value = 0
    if value <= 0:
        msg = f"memory={text}: give a size such as 4G or 512M"
        raise DirectiveError(msg)
    return int(value)


def _seconds(text: str) -> float:
    number, unit = (text[:-1], text[-1]) if text[-1:] in _TIME_UNITS else (text, "")
    try:
        value = float(number) * _TIME_UNITS[unit]
    except ValueError:
        value = 0
    if value <= 0:
        msg = f"time={text}: give a duration such as 90, 90s, 10m or 2h"
        raise DirectiveError(msg)
    return value


def _part(placeholder: str, line: str, taskid: int) -> str:
    path = PurePosixPath(line)
    without_suffix = line[: -len(path.suffix)] if path.suffix else line
    parts = {"": line, ".": without_suffix, "/": path.name, "//": str(path.parent), "/.": path.stem}
    return str(taskid) if placeholder == "#" else parts[placeholder]
