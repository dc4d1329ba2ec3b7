"""A one-record redo journal: how a change that touches several files stays atomic under ``kill -9``.

Every change of the work directory is a list of idempotent actions. Under the work directory lock, the list is
first written to ``.journal``, then applied, then the journal is emptied. A farmer killed anywhere in between leaves
the record behind; whoever takes the lock next replays it before doing anything else (a record torn by a crash
during its own write is discarded: none of its actions had begun). Replaying an action that already happened
changes nothing, so the end state is the same as if the dead farmer had finished.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from taskfarmer.store import _files

if TYPE_CHECKING:
    from pathlib import Path

_LOGGER: Final = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteAt:
    """Make the file end with *data* at *offset* (appending at a known end, or overwriting a small file)."""

    path: str
    offset: int
    data: bytes

    def apply(self, root: Path) -> None:
        """Perform the action below *root*."""
        _files.write_at(root / self.path, self.offset, self.data)


@dataclass(frozen=True)
class Truncate:
    """Cut the file to *length* bytes (popping lines off the ``toprocess`` stack)."""

    path: str
    length: int

    def apply(self, root: Path) -> None:
        """Perform the action below *root*."""
        _files.truncate(root / self.path, self.length)


@dataclass(frozen=True)
class CopyAt:
    """Make the file end with the content of *source* at *offset* (appending a file too big for a record)."""

    source: str
    path: str
    offset: int

    def apply(self, root: Path) -> None:
        """Perform the action below *root* (nothing when *source* is gone: a later action of the record removed
        it, so the copy was done already).
        """
        try:
            source = (root / self.source).open("rb")
        except FileNotFoundError:
            return
        with source:
            _files.truncate(root / self.path, self.offset)
            offset = self.offset
            while block := source.read(1 << 20):
                _files.write_at(root / self.path, offset, block)
                offset += len(block)


@dataclass(frozen=True)
class Replace:
    """Rename *source* over *target* if *source* still exists (installing a rebuilt file)."""

    source: str
    target: str

    def apply(self, root: Path) -> None:
        """Perform the action below *root*."""
        with contextlib.suppress(FileNotFoundError):  # already replaced before the crash
            (root / self.source).replace(root / self.target)


@dataclass(frozen=True)
class Unlink:
    """Remove the file if it exists."""

    path: str

    def apply(self, root: Path) -> None:
        """Perform the action below *root*."""
        (root / self.path).unlink(missing_ok=True)


Action = WriteAt | Truncate | CopyAt | Replace | Unlink


def _encode(action: Action) -> dict[str, object]:
    if isinstance(action, WriteAt):
        return {
            "op": "write",
            "path": action.path,
            "offset": action.offset,
            "data": base64.b64encode(action.data).decode(),
        }
    if isinstance(action, Truncate):
        return {"op": "truncate", "path": action.path, "length": action.length}
    if isinstance(action, CopyAt):
        return {"op": "copy", "source": action.source, "path": action.path, "offset": action.offset}
    if isinstance(action, Replace):
        return {"op": "replace", "source": action.source, "target": action.target}
    return {"op": "unlink", "path": action.path}


def _decode(item: dict[str, object]) -> Action:
    op = item["op"]
    if op == "write":
        return WriteAt(str(item["path"]), int(str(item["offset"])), base64.b64decode(str(item["data"])))
    if op == "truncate":
        return Truncate(str(item["path"]), int(str(item["length"])))
    if op == "copy":
        return CopyAt(str(item["source"]), str(item["path"]), int(str(item["offset"])))
    if op == "replace":
        return Replace(str(item["source"]), str(item["target"]))
    return Unlink(str(item["path"]))


class Journal:
    """The ``.journal`` file of a work directory. Use only while holding the work directory lock."""

    def __init__(self, root: Path, *, sync: bool) -> None:
        """:param sync: flush the record to the server before applying it. On a network filesystem a killed client
        closes its files in descriptor order, releasing the lock before its record is written back: a waiting
        farmer could take the lock, see no record, and later see the old one replayed over newer changes.
        """
        self._root = root
        self._path = root / ".journal"
        self._sync = sync

    def commit(self, actions: list[Action]) -> None:
        """Apply *actions* atomically: after a crash at any point, :meth:`recover` completes them."""
        if not actions:
            return
        record = json.dumps([_encode(a) for a in actions]).encode()
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            # The file is empty here (recover() ran when the lock was taken), so one pwrite leaves no stale tail.
            _files.pwrite_all(fd, record, 0)
            if self._sync:
                os.fdatasync(fd)  # see __init__
            self._apply(actions)
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def recover(self) -> bool:
        """Finish the change a dead farmer left half done.

        :returns: whether there was one
        """
        record = _files.read_small(self._path)
        if not record:
            return False
        try:
            actions = [_decode(item) for item in json.loads(record)]
        except (ValueError, KeyError, TypeError):
            # Only a crash of the whole node during the journal write itself can tear it; its actions had not begun.
            _LOGGER.warning("discarding a torn journal record in %s", self._path)
        else:
            _LOGGER.info("completing a change interrupted by a dead farmer (%d actions)", len(actions))
            self._apply(actions)
        _files.write_at(self._path, 0, b"")
        return True

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            action.apply(self._root)
