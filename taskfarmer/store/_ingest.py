"""Turning tasklist lines into entries of the ``toprocess`` stack, in bounded memory.

``toprocess`` holds one ``ID COMMAND`` line per task left, the next task LAST: a claim reads the last line and cuts
the file there, O(1) whatever the list's length, and ``wc -l toprocess`` stays exact. New tasklist lines (the first
run, or lines appended since) go to the bottom of the stack, so tasks are claimed in file order and tasks given back
by a stopped farmer (pushed on top) come first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from typing import IO, TYPE_CHECKING, Final

from taskfarmer.errors import TaskListError
from taskfarmer.words import printable

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# bash -c gets the task as one argv string; Linux refuses any single argument of 128 KiB or more (MAX_ARG_STRLEN).
MAX_TASK_BYTES: Final = 128 * 1024 - 4096
# Small on purpose: a chunk of short lines becomes ~40 Python objects per line while it is processed, and the
# farmer's memory must not depend on the tasklist's length (a 1 MiB chunk of `true` lines costs ~20 MiB).
_CHUNK: Final = 64 * 1024
_PREVIEW: Final = 200
INVALID_KEPT: Final = 20
LINES: Final = "lines"
TASKS: Final = "tasks"
NUMBERINGS: Final = (LINES, TASKS)


@dataclass(frozen=True)
class TaskListState:
    """How much of the tasklist the work directory has taken in, and a digest to notice later edits."""

    size: int
    lines: int
    sha256: str
    mtime_ns: int
    ends_with_newline: bool
    numbering: str = LINES  # task IDs: LINES (0-based line numbers) or TASKS (PyTaskFarmer's: tasks counted)
    tasks: int = 0  # task lines (runnable or invalid) taken in: the next ID when numbering is TASKS

    def to_json(self) -> bytes:
        """:returns: the state as written to ``tasklist.json``"""
        return json.dumps(asdict(self), indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> TaskListState | None:
        """:returns: the state read from ``tasklist.json``, or ``None`` when there is none yet"""
        if not data:
            return None
        known = {field.name for field in fields(cls)}  # a later version's keys are left to it
        return cls(**{key: value for key, value in json.loads(data).items() if key in known})


@dataclass(frozen=True)
class Invalid:
    """A tasklist line that cannot run: recorded in ``failed`` with the reason instead."""

    taskid: int
    reason: str
    preview: str
    line: int = -1  # 0-based line number in the tasklist (the task ID, unless IDs count task lines)


@dataclass(frozen=True)
class IngestFiles:
    """Where one ingest writes: the new stack (entries reversed), a scratch file (entries in file order), and
    the lines that cannot run (as lines of ``failed``).
    """

    stack: IO[bytes]
    scratch: IO[bytes]
    rejects: IO[bytes]


@dataclass
class IngestResult:
    """What one pass over new tasklist lines produced."""

    state: TaskListState
    tasks: int
    invalid: list[Invalid]  # the first few only, for a message (all of them are in the rejects file)
    invalid_count: int


def open_tasklist(path: Path) -> IO[bytes]:
    """Open the tasklist for reading, with the errors a user can cause turned into one clear line.

    :raises TaskListError: when it is missing, a directory or unreadable
    """
    try:
        return path.open("rb")
    except FileNotFoundError:
        msg = f"Tasklist {path} does not exist. Give the path of a text file with one command per line."
    except IsADirectoryError:
        msg = f"Tasklist {path} is a directory. Give the path of a text file with one command per line."
    except PermissionError:
        msg = f"Tasklist {path} is not readable: permission denied. Fix its permissions or copy it somewhere readable."
    except OSError as exc:
        msg = f"Tasklist {path} cannot be opened: {exc.strerror}."
    raise TaskListError(msg)


def started_for(tasklist: Path, first: str) -> str:
    """:param first: the path of the tasklist a work directory was started for ("": unknown)
    :returns: that it was started for another tasklist than *tasklist*, in a sentence ("" when not, or unknown)
    """
    if not first:
        return ""
    with contextlib.suppress(OSError):
        if tasklist.samefile(first):
            return ""
    return f" (This work directory was started for {first}.)"


def check_unchanged(tasklist: Path, state: TaskListState, source: IO[bytes]) -> hashlib._Hash | None:
    """Compare the tasklist with what the work directory took in before.

    :returns: ``None`` when nothing was appended, else a hash primed with the checked prefix
    :raises TaskListError: when the tasklist was truncated or lines already taken in were changed
    """
    stat = os.fstat(source.fileno())
    if stat.st_size == state.size and stat.st_mtime_ns == state.mtime_ns:
        return None
    if stat.st_size < state.size:
        msg = (
            f"Tasklist {tasklist} is shorter than when this work directory started it ({stat.st_size} < {state.size}"
            " bytes): it was truncated or replaced. Restore it, or use a new --workdir for a new list."
        )
        raise TaskListError(msg)
    digest = hashlib.sha256()
    remaining = state.size
    while remaining:
        block = source.read(min(_CHUNK, remaining))
        if not block:
            break
        digest.update(block)
        remaining -= len(block)
    if digest.hexdigest() != state.sha256:
        msg = (
            f"Tasklist {tasklist} was changed since this work directory started it (its first {state.lines} lines"
            " differ): task IDs would no longer match. Restore it, or use a new --workdir. Appending lines is fine."
        )
        raise TaskListError(msg)
    if stat.st_size > state.size and not state.ends_with_newline:
        # Its last line had no newline: what follows must start with one (the line ends, new lines may follow).
        if source.read(1) != b"\n":
            msg = (
                f"Tasklist {tasklist}: line {state.lines} (its last line, with no newline) was extended. Restore it"
                " and append new tasks on lines of their own."
            )
            raise TaskListError(msg)
        digest.update(b"\n")
    return digest


def ingest(
    source: IO[bytes],
    *,
    start: TaskListState | None,
    digest: hashlib._Hash,
    files: IngestFiles,
    numbering: str = LINES,
) -> IngestResult:
    """Read the tasklist from *source*'s position to its end and write the new tasks to *stack*, first task last.

    :param start: what was taken in before (``None``: nothing)
    :param digest: a hash of everything before *source*'s position
    :param files: where the entries and the rejected lines go
    :param numbering: how a new list numbers its tasks (one taken in before keeps its own)
    :returns: the new state and what was taken in
    """
    first_line = start.lines if start else 0
    numbering = start.numbering if start else numbering
    # Lines appended later may still be being written: take complete lines only (a first tasklist's last line may
    # lack its newline: that one counts).
    end = os.fstat(source.fileno()).st_size if start is None else _complete_end(source)
    first_id = (start.tasks if start else 0) if numbering == TASKS else None
    result = _forward(source, first=(first_line, first_id), digest=digest, files=files, end=end)
    _reverse_into(files.scratch, result.boundaries, files.stack)
    stat = os.fstat(source.fileno())
    state = TaskListState(
        size=result.size,
        lines=result.next_line,
        sha256=digest.hexdigest(),
        mtime_ns=stat.st_mtime_ns,
        ends_with_newline=result.ends_with_newline,
        numbering=numbering,
        tasks=(start.tasks if start else 0) + result.tasks + result.invalid_count,
    )
    return IngestResult(state=state, tasks=result.tasks, invalid=result.invalid, invalid_count=result.invalid_count)


@dataclass
class _ForwardResult:
    size: int
    next_line: int
    tasks: int
    ends_with_newline: bool
    boundaries: list[int]
    invalid: list[Invalid]
    invalid_count: int = 0


def _complete_end(source: IO[bytes]) -> int:
    """:returns: the offset just after the file's last newline (at least the current position)"""
    start = source.tell()
    end = os.fstat(source.fileno()).st_size
    while end > start:
        block_start = max(end - _CHUNK, start)
        block = os.pread(source.fileno(), end - block_start, block_start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return block_start + newline + 1
        end = block_start
    return start


def _lines(source: IO[bytes], digest: hashlib._Hash, *, end: int) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line, too_long)`` for each line up to *end*, holding at most one chunk plus one capped line."""
    carry = b""
    carry_too_long = False
    while (left := end - source.tell()) > 0 and (chunk := source.read(min(_CHUNK, left))):
        digest.update(chunk)
        parts = chunk.split(b"\n")
        parts[0] = carry + parts[0]
        carry = parts.pop()
        for part in parts:
            yield part, carry_too_long or len(part) > MAX_TASK_BYTES
            carry_too_long = False
        if len(carry) > MAX_TASK_BYTES:
            carry, carry_too_long = carry[: MAX_TASK_BYTES + 1], True
    if carry or carry_too_long:
        yield carry, carry_too_long


TOO_LONG: Final = "invalid:too-long"
NOT_UTF8: Final = "invalid:not-utf8"
NUL_BYTE: Final = "invalid:nul-byte"
UNREADABLE: Final = (TOO_LONG, NOT_UTF8, NUL_BYTE)  # lines never run, of which ``failed`` keeps only a preview


def _check(line: bytes, *, too_long: bool) -> tuple[str | None, str]:
    """:returns: ``(command or None when the line is no task, reason when it is invalid)``"""
    if too_long:
        return None, TOO_LONG
    stripped = line.strip()
    if not stripped or stripped.startswith(b"#"):
        return None, ""
    try:
        command = stripped.decode()
    except UnicodeDecodeError:
        return None, NOT_UTF8
    if "\0" in command:
        return None, NUL_BYTE
    return command, ""


def _forward(
    source: IO[bytes], *, first: tuple[int, int | None], digest: hashlib._Hash, files: IngestFiles, end: int
) -> _ForwardResult:
    """Read lines to *end*. *first*: the number of the first line, and the first task ID when IDs count task lines
    (``None``: a task's ID is its line number).
    """
    first_line, first_id = first
    out = _ForwardResult(size=0, next_line=first_line, tasks=0, ends_with_newline=True, boundaries=[0], invalid=[])
    buffered: list[bytes] = []
    pending = 0
    for line, too_long in _lines(source, digest, end=end):
        command, reason = _check(line, too_long=too_long)
        taskid = out.next_line if first_id is None else first_id + out.tasks + out.invalid_count
        if command is not None:
            entry = b"%d %s" % (taskid, command.encode())
            buffered.append(entry)
            pending += len(entry) + 1
            out.tasks += 1
        elif reason:
            preview = printable(line[:_PREVIEW].decode(errors="backslashreplace").strip())
            files.rejects.write(b"%d %s %s\n" % (taskid, reason.encode(), preview.encode()))
            if len(out.invalid) < INVALID_KEPT:  # memory must not grow with a list of bad lines
                out.invalid.append(Invalid(taskid, reason, preview, out.next_line))
            out.invalid_count += 1
        out.next_line += 1
        if pending >= _CHUNK:
            _flush(buffered, files.scratch, out.boundaries)
            pending = 0
    _flush(buffered, files.scratch, out.boundaries)
    out.size = source.tell()  # absolute: the source was positioned after what was taken in before
    out.ends_with_newline = _ends_with_newline(source)
    return out


def _ends_with_newline(source: IO[bytes]) -> bool:
    end = source.tell()
    if end == 0:
        return True
    return os.pread(source.fileno(), 1, end - 1) == b"\n"


def _flush(buffered: list[bytes], scratch: IO[bytes], boundaries: list[int]) -> None:
    if buffered:
        scratch.write(b"\n".join(buffered) + b"\n")
        boundaries.append(scratch.tell())
        buffered.clear()


def _reverse_into(scratch: IO[bytes], boundaries: list[int], stack: IO[bytes]) -> None:
    """Copy the entries of *scratch* to *stack* in reverse order, one chunk at a time."""
    scratch.flush()
    for index in range(len(boundaries) - 1, 0, -1):
        begin, end = boundaries[index - 1], boundaries[index]
        block = os.pread(scratch.fileno(), end - begin, begin)
        entries = block[:-1].split(b"\n")
        entries.reverse()
        stack.write(b"\n".join(entries) + b"\n")
