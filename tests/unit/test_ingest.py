from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

import pytest

from taskfarmer.errors import TaskListError
from taskfarmer.store import MAX_TASK_BYTES, WorkDir
from taskfarmer.store._ingest import INVALID_KEPT, IngestFiles, TaskListState, check_unchanged, ingest

if TYPE_CHECKING:
    from pathlib import Path


def _ingest_bytes(data: bytes, tmp_path: Path) -> tuple[bytes, object]:
    source = tmp_path / "list"
    source.write_bytes(data)
    stack = io.BytesIO()
    with source.open("rb") as handle, (tmp_path / "scratch").open("w+b") as scratch:
        files = IngestFiles(stack=stack, scratch=scratch, rejects=io.BytesIO())
        result = ingest(handle, start=None, digest=hashlib.sha256(), files=files)
    return stack.getvalue(), result


def test_ids_are_line_numbers_and_the_first_task_is_last(tmp_path: Path) -> None:
    stack, result = _ingest_bytes(b"echo a\n\n# comment\n  \necho b\r\necho 'c d'\n", tmp_path)
    assert stack == b"5 echo 'c d'\n4 echo b\n0 echo a\n"
    assert result.tasks == 3  # type: ignore[attr-defined]
    assert result.state.lines == 6  # type: ignore[attr-defined]


def test_last_line_without_newline_is_a_task(tmp_path: Path) -> None:
    stack, result = _ingest_bytes(b"a\nb", tmp_path)
    assert stack == b"1 b\n0 a\n"
    assert result.state.ends_with_newline is False  # type: ignore[attr-defined]


def test_invalid_lines_are_reported_not_queued(tmp_path: Path) -> None:
    long_line = b"echo " + b"x" * (MAX_TASK_BYTES + 10)
    stack, result = _ingest_bytes(b"ok 1\n\xff\xfe bad\n" + long_line + b"\nwith\0nul\nok 2\n", tmp_path)
    assert stack == b"4 ok 2\n0 ok 1\n"
    reasons = {i.taskid: i.reason for i in result.invalid}  # type: ignore[attr-defined]
    assert reasons[1] == "invalid:not-utf8"
    assert reasons[2].startswith("invalid:too-long")
    assert reasons[3] == "invalid:nul-byte"


def test_a_huge_line_does_not_need_huge_memory(tmp_path: Path) -> None:
    # 8 MiB without a newline: read in chunks, capped, reported as too long.
    stack, result = _ingest_bytes(b"a\n" + b"y" * (8 << 20) + b"\nb\n", tmp_path)
    assert stack == b"2 b\n0 a\n"
    assert [i.taskid for i in result.invalid] == [1]  # type: ignore[attr-defined]


def test_stack_order_survives_many_chunks(tmp_path: Path) -> None:
    count = 300_000  # more than one 1 MiB chunk of entries
    stack, _ = _ingest_bytes(b"".join(b"cmd %d\n" % i for i in range(count)), tmp_path)
    entries = stack.splitlines()
    assert len(entries) == count
    assert entries[-1] == b"0 cmd 0"
    assert entries[0] == b"%d cmd %d" % (count - 1, count - 1)
    assert [int(e.split()[0]) for e in entries] == list(range(count - 1, -1, -1))


def _store(tmp_path: Path, text: str) -> tuple[WorkDir, Path]:
    tasklist = tmp_path / "tasks.txt"
    tasklist.write_text(text)
    store = WorkDir(tmp_path / "wd")
    store.create()
    store.sync_tasklist(tasklist)
    return store, tasklist


def test_appended_lines_go_under_the_queued_ones(tmp_path: Path) -> None:
    store, tasklist = _store(tmp_path, "a\nb\n")
    with tasklist.open("a") as handle:
        handle.write("c\n\nd\n")
    result = store.sync_tasklist(tasklist)
    assert result is not None
    assert result.tasks == 2
    assert store.toprocess.read_text() == "4 d\n2 c\n1 b\n0 a\n"
    assert store.sync_tasklist(tasklist) is None  # nothing new


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text[:-2], "shorter"),
        (lambda text: "A" + text[1:], "was changed"),
    ],
)
def test_a_changed_or_truncated_tasklist_is_refused_and_nothing_changes(
    tmp_path: Path, edit: object, message: str
) -> None:
    store, tasklist = _store(tmp_path, "a\nb\n")
    before = {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()}
    tasklist.write_text(edit("a\nb\n"))  # type: ignore[operator]
    with pytest.raises(TaskListError, match=message):
        store.sync_tasklist(tasklist)
    after = {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()}
    assert after == before


def test_extending_a_last_line_without_newline_is_refused(tmp_path: Path) -> None:
    store, tasklist = _store(tmp_path, "a\nb")
    tasklist.write_text("a\nbc\n")
    with pytest.raises(TaskListError, match="extended"):
        store.sync_tasklist(tasklist)


def test_a_last_line_without_newline_can_get_its_newline_then_new_lines(tmp_path: Path) -> None:
    store, tasklist = _store(tmp_path, "a\nb")
    tasklist.write_text("a\nb\n")  # its newline, alone
    assert store.sync_tasklist(tasklist) is not None
    assert store.toprocess.read_text() == "1 b\n0 a\n"
    tasklist.write_text("a\nb\nc\nd\n")  # then lines
    store.sync_tasklist(tasklist)
    assert store.toprocess.read_text() == "3 d\n2 c\n1 b\n0 a\n"


def test_a_newline_and_lines_appended_at_once_to_a_last_line_without_newline(tmp_path: Path) -> None:
    store, tasklist = _store(tmp_path, "a\nb")
    tasklist.write_text("a\nb\nc\n")
    store.sync_tasklist(tasklist)
    assert store.toprocess.read_text() == "2 c\n1 b\n0 a\n"


def test_state_round_trips() -> None:
    state = TaskListState(size=3, lines=2, sha256="ab", mtime_ns=5, ends_with_newline=True)
    assert TaskListState.from_json(state.to_json()) == state
    assert TaskListState.from_json(b"") is None


def test_an_untouched_tasklist_is_not_even_read(tmp_path: Path) -> None:
    store, tasklist = _store(tmp_path, "a\nb\n")
    state = TaskListState.from_json((store.path / "tasklist.json").read_bytes())
    assert state is not None
    with tasklist.open("rb") as handle:
        assert check_unchanged(tasklist, state, handle) is None
        assert handle.tell() == 0


def test_many_invalid_lines_all_reach_failed_but_memory_keeps_a_few(tmp_path: Path) -> None:
    tasklist = tmp_path / "tasks.txt"
    tasklist.write_bytes(b"".join(b"caf\xe9 %d\n" % i for i in range(500)) + b"echo ok\n")
    store = WorkDir(tmp_path / "wd")
    store.create()
    result = store.sync_tasklist(tasklist)
    assert result is not None
    assert result.invalid_count == 500
    assert len(result.invalid) == INVALID_KEPT
    failed = store.failed.read_text().splitlines()
    assert len(failed) == 500
    assert failed[499] == "499 invalid:not-utf8 caf\\xe9 499"
    assert store.toprocess.read_text() == "500 echo ok\n"
    assert not (store.path / ".rejects.new").exists()


def test_a_state_written_by_a_later_version_is_read_with_the_keys_this_one_knows() -> None:
    written = b'{"size": 4, "lines": 1, "sha256": "x", "mtime_ns": 5, "ends_with_newline": true, "later": [1]}'
    state = TaskListState.from_json(written)
    assert state is not None
    assert (state.size, state.lines, state.tasks) == (4, 1, 0)
