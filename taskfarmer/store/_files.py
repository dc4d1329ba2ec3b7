"""Small file primitives the store builds on: each one is a handful of syscalls, none reads a whole file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

_TAIL_BLOCK: Final = 4096


def size(path: Path) -> int:
    """:returns: the size of *path* in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def write_at(path: Path, offset: int, data: bytes) -> None:
    """Make *path* end with *data* at *offset*: idempotent, so a journal can replay it.

    :param path: the file, created when missing
    :param offset: where *data* starts; whatever was beyond it is cut off
    :param data: the bytes to write (empty: just cut the file at *offset*)
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if data:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, offset + len(data))
    finally:
        os.close(fd)


def truncate(path: Path, length: int) -> None:
    """Cut *path* to *length* bytes when it is longer (never extends it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size > length:
            os.ftruncate(fd, length)
    finally:
        os.close(fd)


def read_last_line(path: Path) -> tuple[int, bytes] | None:
    """Read the last newline-terminated line of *path* without reading the rest.

    :returns: ``(offset of the line, line without its newline)``, or ``None`` when the file is empty or missing
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        end = os.fstat(fd).st_size
        if end == 0:
            return None
        tail = b""
        start = end
        while start > 0:
            step = min(_TAIL_BLOCK, start)
            start -= step
            tail = os.pread(fd, step, start) + tail
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0:
                return start + cut + 1, tail[cut + 1 : -1]
        return 0, tail[:-1]
    finally:
        os.close(fd)


def read_small(path: Path) -> bytes:
    """:returns: the content of a small file, empty when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, _TAIL_BLOCK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
