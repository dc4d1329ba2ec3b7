"""PyTaskFarmer's ATLAS tasklist handlers, from its own INI example, with stand-ins for the ATLAS executables."""

from __future__ import annotations

import os
import textwrap
from typing import TYPE_CHECKING

import pytest

from tests.helpers import lines, run_farmer, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

# Prints each argument on a line of its own, then writes the file named after --output*File (transforms) or the
# one the job options name (athena), as the real programs would: they cannot run here.
_STAND_IN = """#!/bin/bash
printf '<%s>\\n' "$@"
out=
while [ $# -gt 0 ]; do case $1 in --output*File) out=$2; shift;; esac; shift; done
echo "made by $(basename "$0")" > "${out:-M_output.root}"
"""

# PyTaskFarmer 0.1.0's own TransformTaskList example, preExec's ' ' trick included (it passes two values).
_DIGI = """
[digi]
TaskList = taskfarmer.atlas.TransformTaskList
transform = Reco_tf.py
input = HITS
output = RDO
conditionsTag = default:OFLCOND-MC16-SDR-RUN2-06
preExec = all:from A import B; B.set(False);' 'HITtoRDO:from C import D; D.x = 42
"""


def _stand_ins(tmp: Path) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name in ("Reco_tf.py", "athena.py"):
        (bin_dir / name).write_text(_STAND_IN)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_transform_tasklist_runs_the_transform_and_copies_its_output(tmp_path: Path) -> None:
    (tmp_path / "digi.ini").write_text(_DIGI)
    tasklist = write_tasklist(tmp_path / "files.txt", ["# inputs", "/data/HITS.1.pool.root", "/data/HITS.2.pool.root"])
    env = _stand_ins(tmp_path)
    result = run_farmer(tasklist, "-n", "2", "-t", "digi", "--numbering", "tasks", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    workdir = tmp_path / "files.txt_workdir"
    assert lines(workdir / "logs" / "log_1") == [
        "<--conditionsTag>",
        "<default:OFLCOND-MC16-SDR-RUN2-06>",
        "<--preExec>",
        "<all:from A import B; B.set(False);>",
        "<HITtoRDO:from C import D; D.x = 42>",
        "<--inputHITSFile>",
        "</data/HITS.2.pool.root>",
        "<--outputRDOFile>",
        "<RDO.1.root>",
    ]
    assert sorted(path.name for path in (workdir / "output").iterdir()) == ["RDO.0.root", "RDO.1.root"]
    assert (workdir / "output" / "RDO.0.root").read_text() == "made by Reco_tf.py\n"


def test_athena_tasklist_runs_athena_and_copies_its_output_under_the_task_id(tmp_path: Path) -> None:
    (tmp_path / "valid.ini").write_text(
        textwrap.dedent(
            """
            [valid]
            TaskList = taskfarmer.atlas.AthenaTaskList
            jobOptions = InDetPhysValMonitoring_topOptions.py
            output = M_output.root
            nprocs = 2
            """
        )
    )
    tasklist = write_tasklist(tmp_path / "files.txt", ["/data/AOD.1.pool.root"])
    result = run_farmer(tasklist, "-n", "1", "-t", "valid", cwd=tmp_path, env=_stand_ins(tmp_path))
    assert result.returncode == 0, result.stderr
    workdir = tmp_path / "files.txt_workdir"
    assert lines(workdir / "logs" / "log_0") == [
        "<--nprocs>",
        "<2>",
        "<--filesInput>",
        "</data/AOD.1.pool.root>",
        "<InDetPhysValMonitoring_topOptions.py>",
    ]
    assert (workdir / "output" / "M_output.root.0").read_text() == "made by athena.py\n"


def test_splitting_an_input_file_into_several_tasks_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "digi.ini").write_text(_DIGI + "maxEventsPerJob = 100\n")
    tasklist = write_tasklist(tmp_path / "files.txt", ["/data/HITS.1.pool.root"])
    result = run_farmer(tasklist, "-t", "digi", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "[digi]" in result.stderr
    assert "maxEventsPerJob = 100: one input file cannot become several tasks here" in result.stderr
    assert not (tmp_path / "files.txt_workdir").exists()
