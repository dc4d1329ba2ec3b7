from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskfarmer.store import _files
from taskfarmer.store._journal import Action, CopyAt, Journal, Replace, StoreState, Truncate, Unlink, WriteAt, _encode


def test_read_last_line_of_a_stack(tmp_path: Path) -> None:
    stack = tmp_path / "toprocess"
    stack.write_bytes(b"2 c\n1 b\n0 a\n")
    assert _files.read_last_line(stack) == (8, b"0 a")
    _files.truncate(stack, 8)
    assert _files.read_last_line(stack) == (4, b"1 b")
    _files.truncate(stack, 4)
    assert _files.read_last_line(stack) == (0, b"2 c")
    _files.truncate(stack, 0)
    assert _files.read_last_line(stack) is None


def test_read_last_line_longer_than_a_block(tmp_path: Path) -> None:
    stack = tmp_path / "toprocess"
    long_command = "x" * 10_000
    stack.write_bytes(b"1 short\n0 " + long_command.encode() + b"\n")
    offset, line = _files.read_last_line(stack) or (0, b"")
    assert offset == len(b"1 short\n")
    assert line == b"0 " + long_command.encode()


def test_write_at_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "finished"
    target.write_bytes(b"0 a\n")
    for _ in range(3):
        _files.write_at(target, 4, b"1 b\n")
    assert target.read_bytes() == b"0 a\n1 b\n"


def test_truncate_never_extends(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"abc")
    _files.truncate(target, 10)
    assert target.read_bytes() == b"abc"


def _journal(root: Path) -> Journal:
    journal = Journal(root, sync=False)
    assert journal.begin() is False
    return journal


def test_journal_commit_applies_every_action_and_keeps_only_the_state(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"0 x\n1 y\n")
    (tmp_path / "tmp").write_bytes(b"new")
    (tmp_path / "gone").write_bytes(b"")
    actions: list[Action] = [Truncate("a", 4), WriteAt("b", 0, b"hello"), Replace("tmp", "c"), Unlink("gone")]
    journal = _journal(tmp_path)
    journal.commit(actions)
    journal.end()
    assert (tmp_path / "a").read_bytes() == b"0 x\n"
    assert (tmp_path / "b").read_bytes() == b"hello"
    assert (tmp_path / "c").read_bytes() == b"new"
    assert not (tmp_path / "gone").exists()
    state = StoreState.from_json((tmp_path / ".journal").read_bytes())
    assert (tmp_path / ".journal").read_bytes().count(b"\n") == 1  # the state line, no record left
    assert state.generation == 1


def test_journal_tracks_the_sizes_of_the_shared_files(tmp_path: Path) -> None:
    (tmp_path / "toprocess").write_bytes(b"1 b\n0 a\n")
    journal = _journal(tmp_path)
    journal.commit([WriteAt("finished", 0, b"7 done\n"), Truncate("toprocess", 4)], workers=3)
    journal.end()
    reread = _journal(tmp_path)
    assert reread.state.sizes["finished"] == 7
    assert reread.state.sizes["toprocess"] == 4
    assert reread.state.workers == 3
    reread.end()


@pytest.mark.parametrize("applied", [0, 1, 2, 3])
def test_journal_begin_completes_a_change_interrupted_after_any_action(tmp_path: Path, applied: int) -> None:
    """A farmer killed after `applied` of the actions: the next lock holder finishes the change exactly."""
    (tmp_path / "toprocess").write_bytes(b"1 b\n0 a\n")
    (tmp_path / "finished").write_bytes(b"")
    actions: list[Action] = [
        WriteAt("finished", 0, b"7 done\n"),
        WriteAt("running.0", 0, b'{"task": 0}'),
        Truncate("toprocess", 4),
    ]
    # What commit() does, cut short: the state and the record, then only some of the actions.
    record = json.dumps([_encoded(a) for a in actions]).encode()
    (tmp_path / ".journal").write_bytes(StoreState(generation=5).to_json() + record)
    for action in actions[:applied]:
        action.apply(tmp_path)
    journal = Journal(tmp_path, sync=False)
    assert journal.begin() is True
    journal.end()
    assert (tmp_path / "finished").read_bytes() == b"7 done\n"
    assert (tmp_path / "running.0").read_bytes() == b'{"task": 0}'
    assert (tmp_path / "toprocess").read_bytes() == b"1 b\n"
    again = Journal(tmp_path, sync=False)
    assert again.begin() is False
    assert again.state.sizes["toprocess"] == 4  # measured after the replay
    again.end()


def test_journal_of_the_previous_version_is_replayed(tmp_path: Path) -> None:
    (tmp_path / "toprocess").write_bytes(b"1 b\n0 a\n")
    (tmp_path / ".journal").write_bytes(json.dumps([_encoded(Truncate("toprocess", 4))]).encode())
    journal = Journal(tmp_path, sync=False)
    assert journal.begin() is True
    journal.end()
    assert (tmp_path / "toprocess").read_bytes() == b"1 b\n"


def test_journal_discards_a_torn_record(tmp_path: Path) -> None:
    (tmp_path / ".journal").write_bytes(StoreState().to_json() + b'[{"op": "wri')
    journal = Journal(tmp_path, sync=False)
    assert journal.begin() is True
    journal.end()
    assert (tmp_path / ".journal").read_bytes().count(b"\n") == 1


def test_read_last_lines_reads_only_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "toprocess"
    path.write_bytes(b"".join(b"%d x\n" % i for i in range(3000, -1, -1)))
    seen = _files.read_last_lines(path, 3)
    assert seen is not None
    offset, lines, size = seen
    assert lines == [b"2 x", b"1 x", b"0 x"]
    assert size == path.stat().st_size
    assert offset == size - len(b"2 x\n1 x\n0 x\n")
    assert _files.read_last_lines(path, 10_000) == (0, path.read_bytes().splitlines(), size)
    assert _files.read_last_lines(tmp_path / "missing", 1) is None


def _encoded(action: Action) -> dict[str, object]:
    return _encode(action)


def test_filesystem_type_of_a_path() -> None:
    mountinfo = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "40 27 0:50 / /global/cscratch1 rw - lustre 10.0.0.1@o2ib:/scratch rw,flock\n"
        "41 27 0:51 / /home/my\\040docs rw - nfs4 server:/home rw\n"
    )
    assert _files.filesystem_type(Path("/global/cscratch1/sd/me/wd"), mountinfo=mountinfo) == "lustre"
    assert _files.filesystem_type(Path("/home/my docs/wd"), mountinfo=mountinfo) == "nfs4"
    assert _files.filesystem_type(Path("/global/cscratch10"), mountinfo=mountinfo) == "ext4"
    assert "lustre" in _files.NETWORK_FILESYSTEMS
    assert "ext4" not in _files.NETWORK_FILESYSTEMS


def test_copy_at_is_idempotent_and_a_noop_once_its_source_is_gone(tmp_path: Path) -> None:
    (tmp_path / "failed").write_bytes(b"1 exit:1 x\n")
    (tmp_path / "rejects").write_bytes(b"7 invalid:nul-byte y\n")
    copy = CopyAt("rejects", "failed", 11)
    for _ in range(2):
        copy.apply(tmp_path)
    assert (tmp_path / "failed").read_bytes() == b"1 exit:1 x\n7 invalid:nul-byte y\n"
    Unlink("rejects").apply(tmp_path)
    copy.apply(tmp_path)  # a replay after the whole record was applied
    assert (tmp_path / "failed").read_bytes() == b"1 exit:1 x\n7 invalid:nul-byte y\n"
