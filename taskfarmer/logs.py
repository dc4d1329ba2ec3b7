"""Where task output goes: one file per task attempt (default), or one stream per worker (``--logs stream``).

Files: ``logs/log_ID`` for the first attempt, ``logs/log_ID.N`` for attempt N; a rerun never overwrites a log.
The file exists from the attempt's start (``tail -f`` follows it). An attempt that printed nothing leaves no file:
its empty file is renamed to the next attempt's name, so that a farm of silent tasks does not pay a file creation
(an inode: slow on a busy local disk, a metadata request and a unit of inode quota on Lustre) per task, and leaves
no empty files.

Stream: every task of a worker appends to ``logs/stream.FARMER.WORKER``, after a header line
``==> task ID attempt N <==``; the accounting records where its output starts and how long it is
(``logs/stream.FARMER.WORKER@OFFSET+LENGTH``), so ``taskfarmer log`` reads it back exactly. A farm then creates
O(workers) files instead of O(tasks).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, BinaryIO, Final

from taskfarmer.errors import TaskFarmerError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from taskfarmer.store import WorkDir

FILES: Final = "files"
STREAM: Final = "stream"
MODES: Final = (FILES, STREAM)
_COPY_BLOCK: Final = 1 << 20
_BUFFER: Final = 1 << 16


@dataclass
class TaskLog:
    """The log of one running attempt."""

    attempt: int
    handle: IO[str]
    path: Path  # the file the task writes to (for TASKFARMER_LOG)
    offset: int = -1  # in a stream: where the task's output starts
    stream_fd: int = -1  # in a stream: the worker's descriptor of it, still open after the task's handle closed
    fd: int = -1  # in a file of its own: the worker's descriptor of it (closing the handle does not close it)

    def location(self) -> str:
        """:returns: what the accounting records: ``logs/NAME``, or ``logs/NAME@OFFSET+LENGTH`` in a stream"""
        if self.offset < 0:
            return f"logs/{self.path.name}"
        return f"logs/{self.path.name}@{self.offset}+{os.fstat(self.stream_fd).st_size - self.offset}"


class TaskLogs:
    """The logs of one worker.

    :param directory: the work directory's ``logs``
    :param mode: :data:`FILES` or :data:`STREAM`
    :param stream_name: the worker's stream file name (``stream.FARMER.WORKER``)
    """

    def __init__(self, directory: Path, *, mode: str, stream_name: str) -> None:
        self._directory = directory
        self._mode = mode
        self._stream = directory / stream_name
        self._stream_fd: int | None = None  # opened once: only this worker writes its stream
        self._spare: tuple[Path, int] | None = None  # the empty log of the last attempt: the next one's, renamed

    def open(self, taskid: int, attempt: int) -> TaskLog:
        """Open the log of an attempt (a later attempt number when that one already has a log file)."""
        if self._mode == STREAM:
            return self._open_in_stream(taskid, attempt)
        while True:
            path = self._directory / (f"log_{taskid}" if attempt == 1 else f"log_{taskid}.{attempt}")
            with contextlib.suppress(FileExistsError):
                fd = self._take_spare(path)
                if fd < 0:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                # A buffer size given: no isatty() probe of a file that cannot be one.
                handle = open(  # noqa: SIM115
                    fd, "w", buffering=_BUFFER, encoding="utf-8", errors="replace", closefd=False
                )
                return TaskLog(attempt, handle, path, fd=fd)
            attempt += 1

    def close(self, log: TaskLog) -> str:
        """Close the log of an attempt (ended, or cut short by a stop).

        :returns: where its output is, as the accounting records it (:meth:`TaskLog.location`), or ``""`` when it
            printed nothing: then its empty file becomes the next attempt's, or is removed by :meth:`finish`
        """
        log.handle.close()
        if log.fd < 0:
            return log.location()
        if self._spare is None and os.fstat(log.fd).st_size == 0:
            self._spare = (log.path, log.fd)
            return ""
        os.close(log.fd)
        return log.location()

    def finish(self) -> None:
        """Remove the empty file kept for a next attempt (the worker stops); close the stream."""
        if self._spare is not None:
            path, fd = self._spare
            self._spare = None
            with contextlib.suppress(OSError):  # an empty file left behind is harmless; a stopping worker's traceback
                late = os.fstat(fd).st_size > 0  # output of something the task left, written after it ended
                os.close(fd)
                if not late:
                    path.unlink()
        if self._stream_fd is not None:
            os.close(self._stream_fd)
            self._stream_fd = None

    def _take_spare(self, path: Path) -> int:
        """:returns: the descriptor of the kept empty file, now renamed to *path*; -1 when there is none
        :raises FileExistsError: when *path* exists (the spare stays for the next name tried)
        """
        if self._spare is None:
            return -1
        spare, fd = self._spare
        if os.fstat(fd).st_size != 0:  # a process the task left wrote to it late: that output stays where it is
            self._spare = None
            os.close(fd)
            return -1
        try:
            _rename_unless_taken(spare, path)
        except FileExistsError:
            raise
        except OSError:  # the spare is gone or cannot move (removed by hand, a filesystem error): a new file, then
            self._spare = None
            os.close(fd)
            return -1
        self._spare = None
        return fd

    def _open_in_stream(self, taskid: int, attempt: int) -> TaskLog:
        if self._stream_fd is None:
            self._stream_fd = os.open(self._stream, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._stream_fd, f"==> task {taskid} attempt {attempt} <==\n".encode())
        # A duplicate for the task (closed after it), with the stream's O_APPEND: no open, no metadata operation.
        handle = os.fdopen(os.dup(self._stream_fd), "a", encoding="utf-8", errors="replace")
        offset = os.fstat(self._stream_fd).st_size
        return TaskLog(attempt, handle, self._stream, offset=offset, stream_fd=self._stream_fd)


def _rename_unless_taken(source: Path, target: Path) -> None:
    """Rename *source* to *target*, never replacing a file there: a log of an earlier attempt is never overwritten.

    :raises FileExistsError: when *target* exists
    """
    if _renameat2_noreplace(source, target):
        return
    # The filesystem cannot do it in one step (NFS, CephFS): look first. Only two farmers running the same attempt at
    # once (one whose lease was taken over while it still ran) could both find the name free.
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    source.rename(target)


def _renameat2_noreplace(source: Path, target: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)``, which Python's ``os`` does not offer: one step that fails if *target* exists.

    :returns: ``False`` when the C library or the filesystem cannot
    :raises FileExistsError: when *target* exists
    """
    rename = getattr(_LIBC, "renameat2", None)
    if rename is None:
        return False
    if rename(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), str(target))
    return False


_LIBC: Final = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1


def print_log(store: WorkDir, taskid: int, *, attempt: int | None, out: BinaryIO) -> None:
    """Copy the log of a task's attempt (default: the last) to *out*, whichever mode wrote it (nothing for an
    attempt that printed nothing).

    :raises TaskFarmerError: when the task has no such log
    """
    location = _find(store, taskid, attempt)
    if not location:
        return
    name, _, span = location.removeprefix("logs/").partition("@")
    with (store.logs / name).open("rb") as source:
        if not span:
            while block := source.read(_COPY_BLOCK):
                out.write(block)
            return
        offset, _, length = span.partition("+")
        source.seek(int(offset))
        out.write(source.read(int(length)))


def _find(store: WorkDir, taskid: int, attempt: int | None) -> str:
    # An attempt that ended moments ago has its accounting line in its worker's slot file until the next claim.
    found = _from_slot_files(store, taskid, attempt)
    if found is None:
        found = _from_accounting(store, taskid, attempt)
    if found is None:  # not finished yet (running, or a farmer died): a per-task file may still exist
        number = attempt or 1
        path = store.logs / (f"log_{taskid}" if number == 1 else f"log_{taskid}.{number}")
        if path.exists():
            found = f"logs/{path.name}"
    if found is None:
        which = f"attempt {attempt} of task {taskid}" if attempt else f"task {taskid}"
        if not _is_a_task(store, taskid):
            msg = (
                f"No log of {which} in {store.path}: there is no task {taskid} (line {taskid + 1} of the tasklist"
                " is blank or a comment, or beyond its end)."
            )
        elif attempt and (ran := _attempts(store, taskid)):
            runs = f"attempt {ran[0]}" if len(ran) == 1 else f"attempts {', '.join(map(str, ran))}"
            now = ", or runs now in stream mode" if attempt == ran[-1] + 1 else ""
            msg = f"No log of {which} in {store.path}: it ran as {runs} so far{now}."
        else:
            msg = f"No log of {which} in {store.path}: it has not run yet, or runs now in stream mode."
        raise TaskFarmerError(msg)
    return found


def _attempts(store: WorkDir, taskid: int) -> list[int]:
    """:returns: the attempts of *taskid* that ``accounting.tsv`` and the slot files record, in order"""
    prefix = f"{taskid}\t".encode()
    recorded: list[bytes] = []
    with contextlib.suppress(FileNotFoundError), store.accounting.open("rb") as lines:
        recorded = [line for line in lines if line.startswith(prefix)]
    recorded += [end.account for view in store.slot_views() for end in view.ended if end.account.startswith(prefix)]
    return sorted({int(line.split(b"\t")[1]) for line in recorded})


def _is_a_task(store: WorkDir, taskid: int) -> bool:
    """:returns: whether *taskid* is in any state of the work directory (a blank or comment line is in none)"""
    prefix = str(taskid).encode()
    for path in (store.toprocess, store.finished, store.failed):
        with contextlib.suppress(FileNotFoundError), path.open("rb") as lines:
            if any(line.split(b" ", 1)[0].split(b"@")[0] == prefix for line in lines):
                return True
    return any(task.taskid == taskid for task in store.claimed_tasks())


def _from_accounting(store: WorkDir, taskid: int, attempt: int | None) -> str | None:
    with contextlib.suppress(FileNotFoundError), store.accounting.open("rb") as lines:
        return _log_column(lines, taskid, attempt)
    return None


def _from_slot_files(store: WorkDir, taskid: int, attempt: int | None) -> str | None:
    return _log_column((end.account for view in store.slot_views() for end in view.ended), taskid, attempt)


def _log_column(lines: Iterable[bytes], taskid: int, attempt: int | None) -> str | None:
    """:returns: the log column of the last accounting line of *taskid* (and *attempt*) among *lines*"""
    prefix = f"{taskid}\t".encode()
    found = None
    for line in lines:
        if not line.startswith(prefix):
            continue
        fields = line.rstrip(b"\n").split(b"\t")
        if attempt is None or fields[1] == str(attempt).encode():
            found = fields[-1].decode()
    return found
