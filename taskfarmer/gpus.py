"""GPU ids for ``--gpus auto``: the ones the batch system granted, else the ones the driver lists."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import Final

_LOGGER: Final = logging.getLogger(__name__)
_PROBE_TIMEOUT: Final = 10.0


def detect() -> tuple[str, ...]:
    """:returns: ``$CUDA_VISIBLE_DEVICES`` (what Slurm grants), else the GPUs ``nvidia-smi -L`` lists, else none"""
    granted = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if granted:
        return tuple(gpu for gpu in granted.split(",") if gpu)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        listing = subprocess.run(  # noqa: S603  # a fixed probe of the driver
            [smi, "-L"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        _LOGGER.warning("nvidia-smi -L failed (%s): no GPU binding", exc)
        return ()
    return tuple(re.findall(r"^GPU (\d+):", listing, flags=re.MULTILINE))
