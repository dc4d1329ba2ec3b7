"""A log file per attempt: created at the attempt's start; the empty file of a silent attempt becomes the next one's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from taskfarmer import logs
from taskfarmer.logs import FILES, TaskLogs

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """:returns: an empty ``logs`` directory"""
    path = tmp_path / "logs"
    path.mkdir()
    return path


def _logs(directory: Path) -> TaskLogs:
    return TaskLogs(directory, mode=FILES, stream_name="stream.f.0")


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_silent_attempt_gives_its_file_to_the_next_one_without_creating_another(directory: Path) -> None:
    task_logs = _logs(directory)
    silent = task_logs.open(5, 1)
    assert _names(directory) == ["log_5"]  # there from the start: tail -f follows it
    inode = (directory / "log_5").stat().st_ino
    assert task_logs.close(silent) == ""  # nothing to point at
    chatty = task_logs.open(6, 1)
    assert _names(directory) == ["log_6"]
    assert (directory / "log_6").stat().st_ino == inode  # renamed, not created
    chatty.handle.write("hello\n")
    assert task_logs.close(chatty) == "logs/log_6"
    assert (directory / "log_6").read_text() == "hello\n"
    task_logs.finish()
    assert _names(directory) == ["log_6"]


def test_an_existing_log_of_an_earlier_attempt_is_never_replaced(directory: Path) -> None:
    (directory / "log_6").write_text("from a farmer that died\n")
    task_logs = _logs(directory)
    assert task_logs.close(task_logs.open(5, 1)) == ""
    second = task_logs.open(6, 1)
    assert second.attempt == 2
    assert second.path == directory / "log_6.2"
    second.handle.write("attempt 2\n")
    assert task_logs.close(second) == "logs/log_6.2"
    assert (directory / "log_6").read_text() == "from a farmer that died\n"
    assert _names(directory) == ["log_6", "log_6.2"]


def test_the_last_silent_attempt_leaves_no_file_when_the_worker_stops(directory: Path) -> None:
    task_logs = _logs(directory)
    for taskid in range(3):
        assert task_logs.close(task_logs.open(taskid, 1)) == ""
    task_logs.finish()
    assert _names(directory) == []


def test_a_last_silent_file_written_to_late_is_kept_when_the_worker_stops(directory: Path) -> None:
    task_logs = _logs(directory)
    assert task_logs.close(task_logs.open(1, 1)) == ""
    with (directory / "log_1").open("a") as late:  # a process the task left, still writing
        late.write("late\n")
    task_logs.finish()
    assert _names(directory) == ["log_1"]


def test_an_attempt_cut_short_keeps_its_file_when_it_printed(directory: Path) -> None:
    task_logs = _logs(directory)
    stopped = task_logs.open(1, 1)
    stopped.handle.write("half done\n")
    assert task_logs.close(stopped) == "logs/log_1"
    task_logs.finish()
    assert _names(directory) == ["log_1"]


def test_output_written_after_the_attempt_was_recorded_stays_in_its_file(directory: Path) -> None:
    task_logs = _logs(directory)
    assert task_logs.close(task_logs.open(1, 1)) == ""
    with (directory / "log_1").open("a") as late:  # a process the task left, still writing
        late.write("late\n")
    nxt = task_logs.open(2, 1)
    assert nxt.path == directory / "log_2"
    assert (directory / "log_1").read_text() == "late\n"
    assert task_logs.close(nxt) == ""
    task_logs.finish()
    assert _names(directory) == ["log_1"]


def test_where_the_filesystem_cannot_rename_without_replacing_the_name_is_checked_first(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NFS and CephFS refuse RENAME_NOREPLACE (EINVAL), as does a C library without renameat2.
    monkeypatch.setattr(logs, "_renameat2_noreplace", lambda _source, _target: False)
    (directory / "log_2").write_text("from a farmer that died\n")
    task_logs = _logs(directory)
    assert task_logs.close(task_logs.open(1, 1)) == ""
    second = task_logs.open(2, 1)
    assert second.path == directory / "log_2.2"
    assert task_logs.close(second) == ""
    third = task_logs.open(3, 1)
    third.handle.write("three\n")
    assert task_logs.close(third) == "logs/log_3"
    task_logs.finish()
    assert _names(directory) == ["log_2", "log_3"]
    assert (directory / "log_2").read_text() == "from a farmer that died\n"


def test_a_spare_that_cannot_be_renamed_gives_way_to_a_new_file(directory: Path) -> None:
    task_logs = _logs(directory)
    assert task_logs.close(task_logs.open(1, 1)) == ""
    (directory / "log_1").unlink()  # removed by hand while the worker kept it
    log = task_logs.open(2, 1)
    assert log.path == directory / "log_2"
    log.handle.write("two\n")
    assert task_logs.close(log) == "logs/log_2"
    assert (directory / "log_2").read_text() == "two\n"


@pytest.mark.parametrize("one_step", [True, False])
def test_renaming_never_replaces_an_existing_file(
    directory: Path, monkeypatch: pytest.MonkeyPatch, *, one_step: bool
) -> None:
    if not one_step:
        monkeypatch.setattr(logs, "_renameat2_noreplace", lambda _source, _target: False)
    (directory / "a").write_text("a")
    (directory / "b").write_text("b")
    with pytest.raises(FileExistsError):
        logs._rename_unless_taken(directory / "a", directory / "b")
    logs._rename_unless_taken(directory / "a", directory / "c")
    assert _names(directory) == ["b", "c"]
    assert (directory / "c").read_text() == "a"


def test_this_machine_renames_without_replacing_in_one_step(directory: Path) -> None:
    # The local filesystems (ext4, xfs, tmpfs, btrfs) and glibc >= 2.28 do: the check-first path is the exception.
    (directory / "a").write_text("a")
    assert logs._renameat2_noreplace(directory / "a", directory / "b")
    (directory / "c").write_text("c")
    with pytest.raises(FileExistsError):
        logs._renameat2_noreplace(directory / "b", directory / "c")
