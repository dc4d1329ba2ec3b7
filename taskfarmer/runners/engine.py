"""Finding a container or environment engine's executable, once, before any task runs.

Every command-line engine (shifter, apptainer/singularity, pixi) is found the same way: the first of its names on
PATH, which must answer a probe (``--version``, ``--help``) within a deadline. A hanging or failing engine is one
clear error in the farmer's main process, not a failure of every task.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from taskfarmer import process
from taskfarmer.errors import EngineNotFoundError

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_PROBE_TIMEOUT: Final = 10.0
ADVICE: Final = "Load the module that provides it, or pick another runner with --runner."


@dataclass(frozen=True)
class Engine:
    """An engine executable that answered its probe."""

    path: str
    answer: str  # the first line the probe printed on stdout (a version line), empty when it printed none


def runner_label(kind: str, name: str) -> str:
    """:returns: the runner as messages name it: ``shifter runner [mcc]``, or ``shifter runner`` without a name"""
    return f"{kind} runner [{name}]" if name else f"{kind} runner"


def require_engine(names: Sequence[str], *, runner: str, probe: Sequence[str], timeout: float) -> Engine:
    """Find the first of *names* on PATH and check that ``NAME *probe`` exits 0 within *timeout* seconds.

    A name that exists but does not answer is an error, not a reason to try the next name: a broken module is
    better reported than silently replaced by another engine.

    :param runner: the runner, as messages name it (see :func:`runner_label`)
    :raises EngineNotFoundError: none on PATH, or the first found hangs, fails or cannot start
    """
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        answer, problem = _probe(path, tuple(probe), timeout)
        if problem is not None:
            shown = " ".join([name, *probe])
            msg = f"The {runner} needs the '{name}' executable, but {path} does not work ('{shown}' {problem})."
            raise EngineNotFoundError(f"{msg} {ADVICE}")
        return Engine(path, answer)
    wanted = "' or '".join(names)
    msg = f"The {runner} needs the '{wanted}' executable, but it is not on PATH. {ADVICE}"
    raise EngineNotFoundError(msg)


@functools.lru_cache(maxsize=32)
def _probe(path: str, probe: tuple[str, ...], timeout: float) -> tuple[str, str | None]:
    """Run ``path *probe`` (once per process and arguments).

    :returns: (the first stdout line, ``None``) when it exits 0 in time, else ("", what went wrong)
    """
    try:
        result = process.run_tool([path, *probe], timeout=timeout)
    except subprocess.TimeoutExpired:
        return "", f"did not answer within {timeout:g} s"
    except OSError as exc:
        return "", f"cannot be run: {exc.strerror or exc}"
    if result.returncode != 0:
        return "", f"exited with status {result.returncode}: {result.tail()}"
    return (result.stdout.strip().splitlines() or [""])[0].strip(), None
