"""A one-record redo journal: how a change that touches several files stays atomic under ``kill -9``.

Every change of the work directory is a list of idempotent actions. Under the work directory lock, the list is
first written to ``.journal``, then applied, then removed from the journal. A farmer killed anywhere in between leaves
the record behind; whoever takes the lock next replays it before doing anything else (a record torn by a crash
during its own write is discarded: none of its actions had begun). Replaying an action that already happened
changes nothing, so the end state is the same as if the dead farmer had finished.

The journal's first line is the state every lock holder must see (:class:`StoreState`): the sizes of the shared
files after the last change, a generation number and who wrote it. The next holder reads it in the same request as
the pending record, appends at those sizes without asking the filesystem for them, and can tell when its view of
a file lags behind what the previous holder wrote (a filesystem whose clients cache: see ``StaleViewError``).

Before writing anything, a change renames the file ``.gen-G`` to ``.gen-G+1``, G being the generation it read. The
server does the rename or refuses it (the name is gone): a compare-and-swap no client cache can fake. A farmer
whose view of the journal is old, which a filesystem with client caches (GlusterFS's defaults) serves even under the
lock and to a fresh ``open``, fails it, changes nothing, and looks again once its cache has expired.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
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


TRACKED: Final = ("toprocess", "finished", "failed", "accounting.tsv", "timeline.json")
MARKED: Final = ".marked"  # exists once the generation markers are set up: they are never set up again


@dataclass
class StoreState:
    """What the last lock holder left: the shared files' sizes, and counters every farmer keeps in step."""

    generation: int = 0
    writer: str = ""  # a token of the process that wrote this generation
    sizes: dict[str, int] = field(default_factory=dict)  # of TRACKED files; a missing one is measured
    workers: int = 0  # the workers of the registered farmers (sizes claims so the tail spreads over all)
    recoveries: int = 0  # slots taken from farmers presumed dead on another host (theirs may still run)
    marked: bool = False  # the generation marker file exists (see Journal._advance)

    def to_json(self) -> bytes:
        """:returns: the journal's first line"""
        raw = {"g": self.generation, "w": self.writer, "sizes": self.sizes, "workers": self.workers}
        raw.update(recoveries=self.recoveries, marked=self.marked)
        return json.dumps(raw, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, line: bytes) -> StoreState:
        """:returns: the state of a journal's first line
        :raises ValueError: for a damaged one (``KeyError``/``TypeError`` too)
        """
        raw = json.loads(line)
        sizes = {str(name): int(size) for name, size in dict(raw["sizes"]).items()}
        marked = bool(raw.get("marked", False))
        return cls(int(raw["g"]), str(raw["w"]), sizes, int(raw["workers"]), int(raw["recoveries"]), marked)


class ConflictError(Exception):
    """Another farmer changed the work directory since the view this change was computed from: nothing was done."""


def _next_sizes(sizes: dict[str, int], actions: list[Action]) -> dict[str, int]:
    """:returns: the tracked files' sizes once *actions* are applied (a file some action rebuilds is dropped)"""
    after = dict(sizes)
    for action in actions:
        if isinstance(action, WriteAt) and action.path in TRACKED:
            after[action.path] = action.offset + len(action.data)
        elif isinstance(action, Truncate) and action.path in after:
            after[action.path] = min(after[action.path], action.length)
        elif isinstance(action, (CopyAt, Replace)):
            after.pop(action.path if isinstance(action, CopyAt) else action.target, None)
    return after


class Journal:
    """The ``.journal`` file of a work directory. Use only while holding the work directory lock, between
    :meth:`begin` and :meth:`end`.
    """

    def __init__(self, root: Path, *, sync: bool) -> None:
        """:param sync: flush the record to the server before applying it. On a network filesystem a killed client
        closes its files in descriptor order, releasing the lock before its record is written back: a waiting
        farmer could take the lock, see no record, and later see the old one replayed over newer changes.
        """
        self._root = root
        self._path = root / ".journal"
        self._sync = sync
        self._fd: int | None = None
        self._writer = os.urandom(6).hex()  # this process's mark on the generations it writes
        self._marked_here = False  # whether this process saw to it that MARKED exists
        self.state = StoreState()
        self.adopt_next = False  # see WorkDir._transaction: a holder died between its marker and its record

    def begin(self) -> str | bool:
        """Read the state the last holder left, and finish the change a dead farmer left half done.

        :returns: whether there was such a change; a description of the problem when the journal is older than
            what this process saw before (a stale view: nothing is changed then, close with :meth:`end`)
        """
        self._fd, created = _open_or_create(self._path)
        if created:  # a new work directory, or its journal removed by hand: the marker chain starts anew
            (self._root / MARKED).unlink(missing_ok=True)
        content = _files.read_all(self._fd)
        head, _, record = content.partition(b"\n") if not content.startswith(b"[") else (b"", b"", content)
        try:
            state = StoreState.from_json(head) if head else StoreState()
        except (ValueError, KeyError, TypeError):
            state = StoreState()
        if stale := _older(state, self.state):
            return stale
        self.state = state
        if not record.strip():
            if self.adopt_next:
                self.adopt_next = False
                self.state = replace(state, generation=state.generation + 1)
            return False
        self._replay(record)
        self._measure_missing(self.state.sizes, drop=TRACKED)
        self._write_state()
        return True

    def end(self) -> None:
        """Close the journal (before the lock is released: on NFS, a close is what sends the writes)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def sizes(self) -> dict[str, int]:
        """:returns: every tracked file's size, measured for those the state does not know"""
        self._measure_missing(self.state.sizes)
        return self.state.sizes

    def commit(self, actions: list[Action], **counters: int) -> None:
        """Apply *actions* atomically: after a crash at any point, :meth:`begin` completes them.

        :param counters: new values of :class:`StoreState`'s counters (``workers``, ``recoveries``)
        """
        if not actions and not counters:
            return
        if self._fd is None:
            msg = "journal used outside of a lock hold"
            raise RuntimeError(msg)
        sizes = _next_sizes(self.sizes(), actions)
        generation = self.state.generation + 1
        self._advance(generation)
        self.state = replace(
            self.state, generation=generation, writer=self._writer, sizes=sizes, marked=True, **counters
        )
        record = json.dumps([_encode(a) for a in actions]).encode()
        _files.pwrite_all(self._fd, self.state.to_json() + record, 0)
        if self._sync:
            os.fdatasync(self._fd)  # see __init__
        self._apply(actions)
        self._measure_missing(self.state.sizes)
        self._write_state()

    def _advance(self, generation: int) -> None:
        """Move the generation marker from ``generation - 1`` to *generation*, or fail if it is not there.

        :raises ConflictError: when the marker is elsewhere: this farmer's view of the journal is not the latest
        """
        previous = self._root / f".gen-{generation - 1}"
        if not self.state.marked:
            # A new work directory (or one of the previous version, or whose journal was removed by hand): the first
            # change sets the marker up, once. The server decides whether it is the first (O_EXCL): a journal read
            # empty or unmarked from a client cache must not set up a second chain beside the real one and write from
            # that old view.
            try:
                os.close(os.open(self._root / MARKED, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError as exc:
                raise ConflictError("the generation marker was set up before this view of the journal") from exc
            self._marked_here = True
            for stray in self._root.glob(".gen-*"):
                stray.unlink(missing_ok=True)
            try:
                os.close(os.open(previous, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError as exc:
                raise ConflictError(f"generation {generation - 1} set up by another farmer") from exc
        elif not self._marked_here:  # a work directory marked by a version without MARKED: add it, once per process
            os.close(os.open(self._root / MARKED, os.O_WRONLY | os.O_CREAT, 0o644))
            self._marked_here = True
        try:
            previous.rename(self._root / f".gen-{generation}")
        except FileNotFoundError as exc:
            raise ConflictError(f"generation {generation - 1} is not the latest") from exc

    def _write_state(self) -> None:
        assert self._fd is not None  # noqa: S101  # begin() opened it
        line = self.state.to_json()
        _files.pwrite_all(self._fd, line, 0)
        os.ftruncate(self._fd, len(line))

    def _measure_missing(self, sizes: dict[str, int], *, drop: tuple[str, ...] = ()) -> None:
        for name in drop:
            sizes.pop(name, None)
        for name in TRACKED:
            if name not in sizes:
                sizes[name] = _files.size(self._root / name)

    def _replay(self, record: bytes) -> None:
        try:
            actions = [_decode(item) for item in json.loads(record)]
        except (ValueError, KeyError, TypeError):
            # Only a crash of the whole node during the journal write itself can tear it; its actions had not begun.
            _LOGGER.warning("discarding a torn journal record in %s", self._path)
            return
        _LOGGER.info("completing a change interrupted by a dead farmer (%d actions)", len(actions))
        self._apply(actions)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            action.apply(self._root)


def _open_or_create(path: Path) -> tuple[int, bool]:
    """:returns: a descriptor of the journal at *path*, and whether this call created it (as the server says)"""
    try:
        return os.open(path, os.O_RDWR), False
    except FileNotFoundError:
        pass
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:  # another process created it meanwhile, or a client cache said it was not there
        return os.open(path, os.O_RDWR), False


def _older(read: StoreState, seen: StoreState) -> str:
    """:returns: why the state just *read* cannot be the latest, given the one this process *seen* last ("": it can)"""
    if read.generation < seen.generation:
        return f"generation {read.generation} after {seen.generation}"
    if read.generation == seen.generation and seen.writer and read.writer != seen.writer:
        return f"generation {read.generation} written by two farmers"
    return ""
