"""Promise 4: bad input gets one clear line on stderr, exit status 2, no traceback, and changes nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from taskfarmer.errors import WorkDirError
from taskfarmer.store import WorkDir
from tests.helpers import ids, lines, pytaskfarmer010, run_farmer, write_tasklist

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.timeout(60)


def _snapshot(directory: Path) -> dict[str, str]:
    if not directory.exists():
        return {}
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _assert_one_clear_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, stderr
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]


def _tasks(tmp: Path) -> str:
    return str(write_tasklist(tmp / "t.txt", ["true"]))


def _with_runner_ini(text: str, *args: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, home: Path) -> list[str]:
        (home / "runners.d" / "bad.ini").write_text(text)
        return [*args, _tasks(tmp)]

    return make


def _with_file(name: str, text: str, *args: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, _home: Path) -> list[str]:
        (tmp / name).write_text(text)
        return [*(arg.replace("{tmp}", str(tmp)) for arg in args), _tasks(tmp)]

    return make


def _ptf_workdir(tmp: Path) -> list[str]:
    """What PyTaskFarmer 0.1.0 leaves in TASKLIST_workdir: its state files (``ID TASK``, IDs counted without
    comments and blank lines) and a lock file; no tasklist.json.
    """
    tasklist = write_tasklist(tmp / "t.txt", ["# a comment", "echo a", "echo b", "exit 2", "echo c"])
    workdir = tmp / "t.txt_workdir"
    workdir.mkdir()
    (workdir / "toprocess").write_text("3 echo c\n")
    (workdir / "finished").write_text("0 echo a\n1 echo b\n")
    (workdir / "failed").write_text("2 exit 2\n")
    (workdir / "lock").write_text("")
    return [str(tasklist)]


def _just(*args: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, _home: Path) -> list[str]:
        return [*args, _tasks(tmp)]

    return make


def _tasklist_path(make_path: Callable[[Path], Path]) -> Callable[[Path, Path], list[str]]:
    return lambda tmp, _home: [str(make_path(tmp))]


CASES: dict[str, tuple[Callable[[Path, Path], list[str]], tuple[str, ...]]] = {
    "missing tasklist": (_tasklist_path(lambda tmp: tmp / "nope.txt"), ("nope.txt", "does not exist")),
    "directory as tasklist": (_tasklist_path(lambda tmp: tmp), ("is a directory",)),
    "empty tasklist": (_tasklist_path(lambda tmp: write_tasklist(tmp / "e.txt", [])), ("has no tasks",)),
    "only comments": (_tasklist_path(lambda tmp: write_tasklist(tmp / "c.txt", ["# x", "", "  "])), ("has no tasks",)),
    "misspelt Runner key": (
        _with_runner_ini("[mcc]\nRuner = ShifterRunner\nimage = docker:x\n", "-r", "mcc"),
        ("[mcc]", "bad.ini", "keys: Runer, image", "no 'Runner =' key"),
    ),
    "bad option value": (
        _with_runner_ini("[default]\nRunner = BasicRunner\ntempdir = yes please\n"),
        ("[default]", "bad.ini", "tempdir must be true, false or an existing directory", "'yes please'"),
    ),
    "runner option grace below 0": (
        _with_runner_ini("[mcc]\nRunner = BasicRunner\ngrace = -3\n", "-r", "mcc"),
        ("[mcc]", "bad.ini", "option 'grace' = -3.0: must be 0 or more seconds"),
    ),
    "runner shell that does not exist": (
        _with_runner_ini("[mcc]\nRunner = BasicRunner\nshell = /nonexistent/bash\n", "-r", "mcc"),
        ("[mcc]", "shell = /nonexistent/bash", "no such executable"),
    ),
    "unknown runner": (
        _with_runner_ini("[gpu]\nRunner = BasicRunner\n", "-r", "mcc"),
        ("Unknown runner 'mcc'", "Defined: default, gpu"),
    ),
    "malformed ini": (
        _with_runner_ini("[mcc\nRunner = BasicRunner\n", "-r", "mcc"),
        ("Unknown runner 'mcc'", "bad.ini"),
    ),
    "runner class that does not import": (
        _with_runner_ini("[mcc]\nRunner = taskfarmer.runners.DokcerRunner\n", "-r", "mcc"),
        ("[mcc]", "bad.ini", "DokcerRunner", "not found"),
    ),
    "unknown runner option": (
        _with_runner_ini("[mcc]\nRunner = BasicRunner\nimage = x\n", "-r", "mcc"),
        ("[mcc]", "bad.ini", "unknown option 'image'", "Valid options:"),
    ),
    "class that is no runner": (
        _with_runner_ini("[mcc]\nRunner = taskfarmer.tasklist.TemplateTaskList\n", "-r", "mcc"),
        ("[mcc]", "not a taskfarmer.runners.base.Runner"),
    ),
    "missing template option": (
        _with_file("h.ini", "[files]\nTaskList = TemplateTaskList\n", "-t", "files"),
        ("[files]", "h.ini", "missing option 'command'"),
    ),
    "unknown tasklist handler": (_just("-t", "nope"), ("Unknown tasklist handler 'nope'",)),
    "workdir cannot be created": (
        _with_file("file", "x", "-w", "{tmp}/file/wd"),
        ("Cannot use work directory", "--workdir"),
    ),
    "lock directory that is a file": (_with_file("f", "", "--lockdir", "{tmp}/f"), ("Cannot lock", "--lockdir")),
    "proc 0": (_just("--proc", "0"), ("--proc", "at least 1")),
    "non-numeric timeout": (_just("--timeout", "soon"), ("--timeout", "'soon'")),
    "misspelt option before its value": (_just("--proces", "2"), ("unknown option --proces (did you mean --proc?)",)),
    "negative grace": (_just("--grace", "-5"), ("--grace", "must be 0 seconds or more", "not -5")),
    "non-numeric grace": (_just("--grace", "abc"), ("--grace", "'abc' is not a number of seconds")),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line_and_changes_nothing(case: str, tmp_path: Path, taskfarmer_home: Path) -> None:
    make_args, needles = CASES[case]
    args = make_args(tmp_path, taskfarmer_home)
    before = _snapshot(tmp_path)
    result = run_farmer(Path(args[-1]), *args[:-1], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    _assert_one_clear_line(result.stderr, *needles)
    assert _snapshot(tmp_path) == before, "bad input changed files"
    assert not any(p.name.endswith("_workdir") for p in tmp_path.iterdir())


def test_a_pytaskfarmer_work_directory_is_refused_untouched(tmp_path: Path) -> None:
    args = _ptf_workdir(tmp_path)
    before = _snapshot(tmp_path)
    result = run_farmer(Path(args[-1]), "-n", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    _assert_one_clear_line(result.stderr, "t.txt_workdir", "no tasklist.json", "PyTaskFarmer")
    assert _snapshot(tmp_path) == before, "bad input changed files"


@pytest.mark.parametrize(
    "verb", [["status"], ["status", "--json"], ["failed"], ["log", "0"], ["requeue"], ["requeue", "--dead"], ["drain"]]
)
def test_commands_on_a_pytaskfarmer_work_directory_refuse_it_untouched(tmp_path: Path, verb: list[str]) -> None:
    tasklist = _ptf_workdir(tmp_path)[-1]
    before = _snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "taskfarmer", verb[0], tasklist, *verb[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    _assert_one_clear_line(result.stderr, "t.txt_workdir", "PyTaskFarmer")
    assert result.stdout == ""
    assert _snapshot(tmp_path) == before, "a command on a PyTaskFarmer work directory changed files"


def _real_ptf_workdir(tmp: Path) -> str:
    """Run the real PyTaskFarmer 0.1.0 on a list with a comment, a blank line and a failing task.

    :returns: the tasklist, whose ``TASKLIST_workdir`` PyTaskFarmer made
    """
    tasklist = write_tasklist(tmp / "t.txt", ["# a comment", "echo a", "", "echo b", "false", "echo c"])
    env = {key: value for key, value in os.environ.items() if key not in {"SCRATCH", "TMP", "TMPDIR"}}
    result = subprocess.run(
        [str(pytaskfarmer010()), "--proc", "2", str(tasklist)],
        cwd=tmp,
        env={**env, "HOME": str(tmp)},  # its lock file in the work directory, no runners.d of the user's
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    workdir = tmp / "t.txt_workdir"
    assert sorted(ids(workdir / "finished")) == [0, 1, 3]  # its numbering: task lines only
    assert lines(workdir / "failed") == ["2 false"]  # and no status column
    return str(tasklist)


@pytest.mark.pytaskfarmer010
@pytest.mark.timeout(120)
@pytest.mark.parametrize("verb", [["run", "-n", "1"], ["status"], ["failed"], ["requeue"]])
def test_a_work_directory_of_the_real_pytaskfarmer_010_is_refused_untouched(tmp_path: Path, verb: list[str]) -> None:
    tasklist = _real_ptf_workdir(tmp_path)
    before = _snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "taskfarmer", verb[0], tasklist, *verb[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    _assert_one_clear_line(result.stderr, "t.txt_workdir", "PyTaskFarmer")
    assert _snapshot(tmp_path) == before, "a PyTaskFarmer work directory was changed"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: an unreadable tasklist cannot be made")
def test_unreadable_tasklist(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    tasklist.chmod(0)
    result = run_farmer(tasklist)
    assert result.returncode == 2
    _assert_one_clear_line(result.stderr, "not readable")


def test_changed_or_truncated_tasklist_is_refused_and_the_workdir_is_untouched(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true", "true", "exit 1"])
    assert run_farmer(tasklist).returncode == 1
    workdir = tmp_path / "t.txt_workdir"
    before = _snapshot(workdir)
    write_tasklist(tasklist, ["true", "echo changed", "exit 1"])
    changed = run_farmer(tasklist)
    assert changed.returncode == 2
    _assert_one_clear_line(changed.stderr, "was changed", "--workdir")
    write_tasklist(tasklist, ["true"])
    truncated = run_farmer(tasklist)
    assert truncated.returncode == 2
    _assert_one_clear_line(truncated.stderr, "shorter")
    assert "started for" not in truncated.stderr  # the same list, edited: no other list to name
    assert _snapshot(workdir) == before


def test_the_work_directory_of_another_tasklist_is_refused_naming_that_list(tmp_path: Path) -> None:
    first = write_tasklist(tmp_path / "first.txt", ["true", "true"])
    assert run_farmer(first).returncode == 0
    workdir = tmp_path / "first.txt_workdir"
    before = _snapshot(workdir)
    for other in (["echo other"], ["echo another", "echo line", "echo of a longer list"]):
        result = run_farmer(write_tasklist(tmp_path / "other.txt", other), "-w", str(workdir))
        assert result.returncode == 2
        _assert_one_clear_line(result.stderr, f"(This work directory was started for {first}.)")
    assert _snapshot(workdir) == before


def test_non_utf8_and_megabyte_lines_do_not_stop_the_other_tasks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tasklist = tmp_path / "t.txt"
    tasklist.write_bytes(
        f"echo a >> {out}\n".encode()
        + b"echo \xff\xfe latin1 caf\xe9\n"
        + b"echo "
        + b"y" * (1 << 20)
        + b"\n"
        + f"echo b >> {out}\n".encode()
    )
    result = run_farmer(tasklist, "-n", "2")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "line 2 (task 1) will not run: invalid:not-utf8" in result.stderr
    assert "line 3 (task 2) will not run: invalid:too-long" in result.stderr
    assert sorted(lines(out)) == ["a", "b"]
    workdir = tmp_path / "t.txt_workdir"
    assert sorted(ids(workdir / "finished")) == [0, 3]
    failed = lines(workdir / "failed")
    assert [line.split(" ", 2)[:2] for line in failed] == [["1", "invalid:not-utf8"], ["2", "invalid:too-long"]]
    assert all(len(line) < 1000 for line in failed)
    assert run_farmer(tasklist).returncode == 1  # a rerun neither reruns nor re-reports them


def test_control_characters_of_a_line_are_shown_escaped_and_failed_stays_text(tmp_path: Path) -> None:
    tasklist = tmp_path / "t.txt"
    tasklist.write_bytes(b"echo nul\0here\nexit 3 # \x1b[2J cleared\n")
    assert run_farmer(tasklist).returncode == 1
    workdir = tmp_path / "t.txt_workdir"
    failed = (workdir / "failed").read_bytes()
    assert b"0 invalid:nul-byte echo nul\\x00here\n" in failed  # its preview: grep reads failed as text
    assert b"1 exit:3 exit 3 # \x1b[2J cleared\n" in failed  # a command that ran is kept as it is (to run again)
    status = subprocess.run(
        [sys.executable, "-m", "taskfarmer", "status", str(workdir)], capture_output=True, text=True, check=True
    )
    assert "exit 3 # \\x1b[2J cleared" in status.stdout
    assert "\x1b" not in status.stdout  # a terminal is not cleared by status
    assert "\0" not in status.stdout


def test_farmers_that_would_lock_different_files_are_refused(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["true"])
    assert run_farmer(tasklist).returncode == 0  # no $SCRATCH: the lock is in the work directory
    workdir = tmp_path / "t.txt_workdir"
    before = _snapshot(workdir)
    result = run_farmer(tasklist, env={"SCRATCH": str(tmp_path / "scratch")})
    assert result.returncode == 2
    _assert_one_clear_line(result.stderr, "locked through the work directory", "--lockdir")
    assert _snapshot(workdir) == before
    assert run_farmer(tasklist, "--lockdir", str(workdir)).returncode == 0  # the same file, named explicitly


def test_maintenance_commands_use_the_farmers_lock_whatever_scratch_says(tmp_path: Path) -> None:
    tasklist = write_tasklist(tmp_path / "t.txt", ["exit 3"])
    assert run_farmer(tasklist).returncode == 1  # lock in the work directory, recorded there
    workdir = tmp_path / "t.txt_workdir"
    result = subprocess.run(
        [sys.executable, "-m", "taskfarmer", "requeue", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SCRATCH": str(tmp_path / "scratch")},
    )
    assert result.returncode == 0, result.stderr
    assert ids(workdir / "toprocess") == [0]
    assert not (tmp_path / "scratch").exists()  # no second lock file was made
    elsewhere = WorkDir(workdir, lock_path=tmp_path / "elsewhere.lock")
    with pytest.raises(WorkDirError, match="locked through the work directory"), elsewhere.locked():
        pass
