"""A farmer's own output is a report: when its reader goes away (``| head``, a closed ``tee``), the farm goes on.

A filter such as ``cat`` stops when nobody reads it any more. A farmer must not: its work is in the work directory,
its tasks write to their own logs, and a farm stopped by a closed pipe would leave tasks half run and an exit status
that says nothing of them. So, for ``run``, stdout and stderr are replaced by streams that drop what they cannot
write once the reader is gone, and the exit status stays the farm's. Commands that only print (``status``, ``log``)
keep Python's streams and stop quietly instead (exit status 141, see ``cli``).
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class _ReaderGone(io.RawIOBase):
    """A file descriptor written as is until a write finds no reader (``EPIPE``); then everything is dropped."""

    def __init__(self, fd: int) -> None:
        """:param fd: the descriptor to write to (never closed here: it is the process's own stdout or stderr)"""
        super().__init__()
        self._fd = fd
        self.gone = False

    def writable(self) -> bool:
        """:returns: ``True``"""
        return True

    def fileno(self) -> int:
        """:returns: the descriptor (``rich`` and ``isatty`` ask for it)"""
        return self._fd

    def isatty(self) -> bool:
        """:returns: whether the descriptor is a terminal"""
        return os.isatty(self._fd)

    def write(self, data: ReadableBuffer, /) -> int:
        """Write what the descriptor takes; once its reader is gone, pretend all was written.

        :returns: the number of bytes taken
        """
        if not self.gone:
            try:
                return os.write(self._fd, data)
            except OSError as exc:
                if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EIO:
                    raise
                self.gone = True  # a pipe without reader, or a terminal closed (EIO)
        return memoryview(data).nbytes


def outlive_reader() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` by streams that keep working after their reader went away.

    Call it before logging is configured: handlers keep the stream they were given.
    """
    sys.stdout = _forgiving(sys.stdout)
    sys.stderr = _forgiving(sys.stderr)


def _forgiving(stream: TextIO) -> TextIO:
    if stream not in {sys.__stdout__, sys.__stderr__}:
        return stream  # already replaced by the caller (a test harness capturing output): left to it
    stream.flush()
    raw = _ReaderGone(stream.fileno())
    return io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=stream.encoding,
        errors=stream.errors,
        line_buffering=True,
        write_through=True,
    )
