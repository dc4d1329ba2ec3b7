"""Third-party runners by entry point, and the dry run that shows what a task would get."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from tests.helpers import run_farmer, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)


def _install_plugin(site: Path) -> None:
    """A distribution 'tfplugin' that registers the runner 'echoing' in the entry point group taskfarmer.runners."""
    (site / "tfplugin").mkdir(parents=True)
    (site / "tfplugin" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from taskfarmer.runners import CommandRunner

            class EchoingRunner(CommandRunner):
                def __init__(self, *, banner: str = "plugin", **options):
                    super().__init__(**options)
                    self.banner = banner

                def command(self, script):
                    return ["bash", "-c", f"echo {self.banner}; {script}"]
            """
        )
    )
    dist = site / "tfplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tfplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[taskfarmer.runners]\nechoing = tfplugin:EchoingRunner\n")


def _taskfarmer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskfarmer", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_a_runner_registered_by_another_package(tmp_path: Path, taskfarmer_home: Path) -> None:
    site = tmp_path / "site"
    _install_plugin(site)
    (taskfarmer_home / "runners.d" / "plugin.ini").write_text("[loud]\nRunner = echoing\nbanner = HELLO\n")
    tasklist = write_tasklist(tmp_path / "t.txt", ["echo task $PROC_NUMBER"])
    result = run_farmer(tasklist, "-r", "loud", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.txt_workdir" / "logs" / "log_0").read_text() == "HELLO\ntask 0\n"
    listing = _taskfarmer("runners", env={"PYTHONPATH": str(site)})
    assert "loud" in listing.stdout
    assert "echoing" in listing.stdout


def test_dry_run_shows_the_exact_command_line(taskfarmer_home: Path) -> None:
    (taskfarmer_home / "runners.d" / "site.ini").write_text(
        "[site]\nRunner = BasicRunner\nsetup = source /opt/env.sh\nvariables = A=1\n"
    )
    result = _taskfarmer("runners", "site", "--command", "prog --seed $PROC_NUMBER | tee out")
    assert result.returncode == 0, result.stderr
    assert "[site] from " in result.stdout
    assert "setup = source /opt/env.sh" in result.stdout
    assert result.stdout.rstrip().endswith(
        "bash -c '{ source /opt/env.sh\n} || exit $?\nprog --seed $PROC_NUMBER | tee out'"
    )


def test_dry_run_of_a_container_runner_needs_no_engine(taskfarmer_home: Path) -> None:
    (taskfarmer_home / "runners.d" / "d.ini").write_text(
        "[reco]\nRunner = DockerRunner\nimage = local/bash\nvolumes = /data:/data:ro\nmemory = 2g\n"
    )
    result = _taskfarmer("runners", "reco", "--command", "reco.sh", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout.split("gets:\n", 1)[1])
    assert spec["image"] == "local/bash"
    assert spec["command"] == ["bash", "-c", "reco.sh"]
    assert spec["volumes"] == ["/data:/data:ro"]
    assert spec["mem_limit"] == "2g"
    assert spec["environment"]["PROC_NUMBER"] == "0"


def test_dry_run_of_an_unknown_runner_lists_the_known_ones(taskfarmer_home: Path) -> None:
    result = _taskfarmer("runners", "nope")
    assert result.returncode == 2
    assert "Unknown runner 'nope'. Defined: default." in result.stderr


def test_dry_run_refuses_a_shell_the_farmer_would_refuse(taskfarmer_home: Path) -> None:
    (taskfarmer_home / "runners.d" / "s.ini").write_text("[odd]\nRunner = BasicRunner\nshell = /bin/nosuchshell\n")
    result = _taskfarmer("runners", "odd")
    assert result.returncode == 2
    assert result.stdout.rstrip().endswith("/bin/nosuchshell -c 'echo hello $PROC_NUMBER'")  # what it would run
    assert result.stderr.splitlines() == [
        "pytaskfarmer: error: Runner [odd]: shell = /bin/nosuchshell: no such executable on PATH (option shell)."
    ]
