"""``taskfarmer report``: a real farm on two hosts, its figures against accounting.tsv, the page in a browser."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from taskfarmer import report_data
from taskfarmer.cli import main
from taskfarmer.store import WorkDir
from tests.helpers import LONG, cleanup, ids, lines, start_farmer, wait_for, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)

PLOTS = 4  # finished over time, running per host, durations, peak memory
C0_BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's first colour: the curves and histograms
TASKS = [
    "sleep 2",  # 0 and 1: the first farmer's two workers are busy while the second one starts
    "sleep 2",
    "exit 3",
    "echo dying; kill -9 $$",
    "sleep 30",  # killed by --task-timeout: timeout
    *["sleep 0.3"] * 8,
    "exit 3",
    f"{sys.executable} -c 'import time; b = bytearray(80 << 20); time.sleep(0.3)'",  # a larger peak memory
    "echo hello",
]
EXPECTED_FAILURES = {"exit:3": 2, "signal:SIGKILL": 1, "timeout": 1}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory two farmers (hosts nodeA and nodeB, two workers each) ran to its end. :returns: it"""
    root = tmp_path_factory.mktemp("report")
    (root / "home").mkdir()
    tasklist = write_tasklist(root / "tasks.txt", TASKS)
    workdir = root / "tasks.txt_workdir"
    args = ("-n", "2", "--task-timeout", "3", "--quiet")
    env = {"PYTASKFARMER_HOME": str(root / "home"), "SCRATCH": ""}
    first = start_farmer(tasklist, *args, env={**env, "SLURMD_NODENAME": "nodeA"})
    with cleanup(first):
        wait_for(lambda: (workdir / "running").is_dir() and len(list((workdir / "running").iterdir())) == 2)
        second = start_farmer(tasklist, *args, env={**env, "SLURMD_NODENAME": "nodeB"})
        with cleanup(second):
            for farmer in (first, second):
                farmer.wait(timeout=LONG)
                assert farmer.returncode in {0, 1}, farmer.communicate()
    assert len(ids(workdir / "finished")) + len(ids(workdir / "failed")) == len(TASKS)
    return workdir


def _rows(workdir: Path) -> list[dict[str, str]]:
    """The independent reading of accounting.tsv the report is checked against."""
    with (workdir / "accounting.tsv").open(newline="") as source:
        return list(csv.DictReader(source, delimiter="\t"))


def _max_running(rows: list[dict[str, str]], host: str) -> int:
    spans = [(float(r["start"]), float(r["end"])) for r in rows if r["host"] == host]
    return max(sum(start <= instant < end for start, end in spans) for instant, _ in spans)


def test_figures_match_the_accounting(farm: Path) -> None:
    data = report_data.collect(WorkDir(farm))
    rows = _rows(farm)
    ok = [r for r in rows if r["status"] in {"ok", "skipped:outputs"}]
    assert data.finished == len(ok) == len(ids(farm / "finished")) == len(TASKS) - sum(EXPECTED_FAILURES.values())
    assert (data.total, data.failed, data.left) == (len(TASKS), sum(EXPECTED_FAILURES.values()), 0)
    assert report_data.finished_over_time(data.accounting)[1][-1] == len(ok)
    failed = Counter(line.split(" ")[1] for line in lines(farm / "failed"))
    assert data.failures_by_status == failed == EXPECTED_FAILURES
    assert {t.task: t.log for t in data.failed_tasks} == {int(r["task"]): r["log"] for r in rows if r["status"] != "ok"}
    slowest = sorted(rows, key=lambda r: -float(r["seconds"]))[: report_data.SLOWEST_SHOWN]
    assert [a.task for a in data.accounting.slowest] == [int(r["task"]) for r in slowest]
    assert data.accounting.slowest[0].command == "sleep 30"
    assert data.accounting.slowest[0].status == "timeout"
    hosts = {r["host"] for r in rows}
    assert hosts == {"nodeA", "nodeB"}
    assert report_data.max_running(data.accounting) == {host: _max_running(rows, host) for host in hosts}
    assert report_data.max_running(data.accounting)["nodeA"] == 2
    ran = [r for r in rows if r["status"] not in {"stopped", "lost", "skipped:outputs"}]
    assert sum(report_data.histogram(report_data.durations(data.accounting))[1]) == len(ran)
    memory = report_data.histogram(report_data.peak_memory_mb(data.accounting))[1]
    assert sum(memory) == sum(int(r["peak_rss_kb"]) > 0 for r in ran)
    assert data.cpu_hours == pytest.approx(sum(float(r["cpu_user_s"]) + float(r["cpu_system_s"]) for r in rows) / 3600)


def test_the_page_is_self_contained(farm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.html"
    assert main(["report", str(farm), "-o", str(output)]) == 0
    assert capsys.readouterr().out == f"{output}\n"
    page = output.read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == len(re.findall(r"<img ", page)) == PLOTS
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page
    assert "href=" not in page
    assert f"{farm.resolve()}/logs/log_3" in page  # the SIGKILL task's log, as a path to open
    assert "nodeA" in page
    assert "nodeB" in page


def test_the_default_output_is_in_the_workdir(farm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(farm.parent / "tasks.txt")]) == 0  # the tasklist names its work directory
    assert capsys.readouterr().out == f"{farm / 'report.html'}\n"
    assert (farm / "report.html").read_text().count("<img ") == PLOTS


def test_a_workdir_where_no_task_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = WorkDir(tmp_path / "wd")
    store.create()
    store.sync_tasklist(write_tasklist(tmp_path / "t.txt", ["true"]))
    assert main(["report", str(store.path)]) == 0
    page = (store.path / "report.html").read_text()
    assert "No task has run yet" in page
    assert "<img " not in page
    assert f"{store.path}/report.html" in capsys.readouterr().out


def test_not_a_workdir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not a pytaskfarmer work directory" in err


def _failing_matplotlib(directory: Path) -> dict[str, str]:
    """A matplotlib that cannot be imported, first on the path: as in an environment without the report extra.

    :returns: the environment that puts it first
    """
    (directory / "matplotlib").mkdir()
    (directory / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    return {"PYTHONPATH": str(directory), "PATH": "/usr/bin:/bin"}


def _report_process(
    *args: str, env: dict[str, str] | None = None, file_blocks: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run ``taskfarmer report ARGS`` in a process of its own; *file_blocks*: the ``ulimit -f`` of its files."""
    argv = [sys.executable, "-m", "taskfarmer", "report", *args]
    limit = f"ulimit -f {file_blocks}" if file_blocks else ":"
    return subprocess.run(
        ["sh", "-c", f'{limit} && exec "$@"', "sh", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=LONG,
        check=False,
    )


def test_without_matplotlib_one_line_and_exit_2(farm: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.html"
    result = _report_process(str(farm), "-o", str(output), env=_failing_matplotlib(tmp_path))
    expected = "pytaskfarmer: error: the report needs matplotlib (>= 3.7): pip install matplotlib\n"
    assert (result.returncode, result.stderr, result.stdout) == (2, expected, "")
    assert not output.exists()


def test_an_output_in_no_directory_is_one_line(farm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "nonexistent" / "dir" / "r.html"
    assert main(["report", str(farm), "-o", str(output)]) == 2
    captured = capsys.readouterr()
    expected = f"cannot write the report to {output}: {output.parent} is no existing directory"
    assert (captured.err, captured.out) == (f"pytaskfarmer: error: {expected}\n", "")
    assert not (tmp_path / "nonexistent").exists()


def test_an_output_directory_is_one_line_and_leaves_nothing(
    farm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out / "reports").mkdir(parents=True)
    assert main(["report", str(farm), "-o", str(out / "reports")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"pytaskfarmer: error: cannot write the report to {out / 'reports'}: it is a directory")
    assert [path.name for path in out.iterdir()] == ["reports"]  # no partial .reports.PID beside it
    assert list((out / "reports").iterdir()) == []


def test_the_output_is_checked_before_any_work(farm: Path, tmp_path: Path) -> None:
    # Without matplotlib, the report fails as soon as it starts its work: the output must be refused before.
    output = tmp_path / "nonexistent" / "r.html"
    result = _report_process(str(farm), "-o", str(output), env=_failing_matplotlib(tmp_path))
    expected = f"pytaskfarmer: error: cannot write the report to {output}: {output.parent} is no existing directory\n"
    assert (result.returncode, result.stderr, result.stdout) == (2, expected, "")


def test_a_failed_write_is_one_line_and_leaves_no_partial_file(farm: Path, tmp_path: Path) -> None:
    # A file size limit (ulimit -f, in blocks of 512 or 1024 bytes) far below the page's: a real write that fails.
    out = tmp_path / "out"
    out.mkdir()
    result = _report_process(str(farm), "-o", str(out / "r.html"), file_blocks=16)
    expected = f"pytaskfarmer: error: cannot write the report to {out / 'r.html'}: File too large\n"
    assert (result.returncode, result.stderr, result.stdout) == (2, expected, "")
    assert list(out.iterdir()) == []


def _slowest_commands(page: str) -> list[str]:
    """:returns: the command column of the report's "Slowest attempts" table"""
    table = page.split("<h2>Slowest attempts</h2>", 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    return [re.sub(r"</?code>", "", cells[5]) for cells in rows if cells]


def test_the_slowest_attempts_of_a_queued_or_running_task_name_its_command(tmp_path: Path) -> None:
    # Its stopped attempt is in accounting.tsv while the task is in no finished or failed line.
    tasklist = write_tasklist(tmp_path / "tasks.txt", ["sleep 30"])
    workdir, page = tmp_path / "tasks.txt_workdir", tmp_path / "report.html"
    store = WorkDir(workdir)
    farmer = start_farmer(tasklist, "-n", "1", "--quiet")
    with cleanup(farmer):
        wait_for(lambda: (workdir / "running").is_dir() and bool(store.running_tasks()), what="the task to start")
        os.killpg(farmer.pid, signal.SIGTERM)  # a stop: the task goes back to the queue
        farmer.wait(timeout=LONG)
    assert ids(workdir / "toprocess") == [0]
    assert main(["report", str(workdir), "-o", str(page)]) == 0
    assert _slowest_commands(page.read_text()) == ["sleep 30"]
    farmer = start_farmer(tasklist, "-n", "1", "--quiet")
    with cleanup(farmer):
        wait_for(lambda: bool(store.running_tasks()), what="the task to run again")
        assert (ids(workdir / "toprocess"), ids(workdir / "finished"), ids(workdir / "failed")) == ([], [], [])
        assert main(["report", str(workdir), "-o", str(page)]) == 0
        assert _slowest_commands(page.read_text()) == ["sleep 30"]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=LONG, check=False)


@pytest.mark.chromium
def test_a_browser_shows_the_plots(farm: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert main(["report", str(farm), "-o", str(page)]) == 0
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    assert dom.stdout.count("<img ") == PLOTS
    assert "Slowest attempts" in dom.stdout
    shot = tmp_path / "shot.png"
    screenshot = _chromium(f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    assert screenshot.returncode == 0, screenshot.stderr
    console = [line for line in screenshot.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    import matplotlib.image  # noqa: PLC0415  # the test group installs it; only this test reads a PNG

    pixels = (matplotlib.image.imread(shot)[:, :, :3] * 255).round()
    assert pixels.shape[:2] == (3000, 1200)
    not_white = (pixels < 245).any(axis=2).mean()
    assert not_white > 0.05, f"only {not_white:.1%} of the page is drawn"
    blue = (abs(pixels - C0_BLUE) <= 8).all(axis=2).sum()
    assert blue > 2000, f"{blue} pixels of the plots' blue: the plots are not shown"
