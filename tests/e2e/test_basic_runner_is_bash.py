"""The default runner runs every line as ``bash -c LINE`` would: same output, same exit status (issue 9).

Plain lines are executed without bash, for speed: these lines are those where a shortcut could differ.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.helpers import lines, run_farmer, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

LINES = [
    "./noshebang.sh 5",  # executable, no #!: bash runs it as a script
    "./notexec.sh",  # not executable: 126
    "/etc",  # a directory: 126
    "nosuchcommand --flag",  # 127, in bash's words
    ". ./sourced.sh",
    ": nothing",
    "source ./sourced.sh",
    "true",
    "false",
    "exit 3",
    "echo plain words 1 2",
    "printf %s-%s a b",
    "type true",
    "command -v ls",
    "cd /",
    "test -d /",
    "printenv SHLVL",
    "printenv _",
    "ls /nonexistent",
    "echo *.sh",
    "A=1 printenv A",
    "echo héllo",
    "echo 'quoted  spaces'",
    "echo a\\ b",
    "echo ~ | grep -c /",
    "yes | head -1; echo ${PIPESTATUS[@]}",  # yes dies of SIGPIPE (141), as SIGPIPE is not ignored
]


@pytest.mark.timeout(120)
def test_every_line_runs_as_bash_c_would(tmp_path: Path) -> None:
    (tmp_path / "noshebang.sh").write_text('echo "script ran with $1"\n')
    (tmp_path / "noshebang.sh").chmod(0o755)
    (tmp_path / "notexec.sh").write_text("echo never\n")
    (tmp_path / "sourced.sh").write_text("echo sourced\n")
    tasklist = write_tasklist(tmp_path / "t.txt", LINES)
    result = run_farmer(tasklist, "-n", "1", "-q", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    codes = {int(row.split("\t")[0]): int(row.split("\t")[3]) for row in lines(workdir / "accounting.tsv")[1:]}
    for taskid, line in enumerate(LINES):
        expected = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=30
        )
        log = workdir / "logs" / f"log_{taskid}"
        assert codes[taskid] == expected.returncode, line
        assert (log.read_text() if log.exists() else "") == expected.stdout + expected.stderr, line
        assert log.exists() == bool(expected.stdout + expected.stderr), line  # a silent task leaves no file
