"""Shared fixtures: an isolated ~/.pytaskfarmer, and engine requirements.

A test marked with an engine (``@pytest.mark.docker``...) runs when the engine answers. When it does not, the test
is skipped on a developer's machine, but FAILS when ``TASKFARMER_REQUIRE_ENGINES`` names the engine (CI sets it),
so a missing engine in CI is never a silent skip.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.helpers import engine_available

if TYPE_CHECKING:
    from pathlib import Path

ENGINE_MARKERS = ("docker", "apptainer", "slurm", "htcondor", "glusterfs", "pytaskfarmer010", "chromium")


@pytest.fixture(autouse=True)
def taskfarmer_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty configuration directory, and no $SCRATCH from the caller's shell."""
    home = tmp_path / "tf-home"
    (home / "runners.d").mkdir(parents=True)
    (home / "tasklists.d").mkdir()
    monkeypatch.setenv("PYTASKFARMER_HOME", str(home))
    monkeypatch.delenv("SCRATCH", raising=False)
    return home


def pytest_runtest_setup(item: pytest.Item) -> None:
    required = set(os.environ.get("TASKFARMER_REQUIRE_ENGINES", "").replace(",", " ").split())
    for name in ENGINE_MARKERS:
        if item.get_closest_marker(name) is None:
            continue
        reason = engine_available(name)
        if reason is None:
            continue
        if name in required:
            pytest.fail(f"engine {name} is required here (TASKFARMER_REQUIRE_ENGINES) but unusable: {reason}")
        pytest.skip(f"engine {name} unusable: {reason}")
