"""Small file primitives the store builds on: each one is a handful of syscalls, none reads a whole file."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

_TAIL_BLOCK: Final = 4096


def size(path: Path) -> int:
    """:returns: the size of *path* in bytes, 0 when it does not exist.

    Through ``open`` and ``fstat``, not ``stat``: on NFS only an ``open`` is sure to see what another host just
    appended (close-to-open consistency), and an append at a stale size would overwrite it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of *data* at *offset* (a full disk or quota fails loudly, never leaves a short write behind).

    :raises OSError: when the filesystem refuses the write
    """
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, "no space left for a write")
        view, offset = view[written:], offset + written


def write_at(path: Path, offset: int, data: bytes) -> None:
    """Make *path* end with *data* at *offset* (a rewrite from 0, or an append at its recorded end): idempotent, so a
    journal can replay it.

    :param path: the file, created when missing
    :param offset: where *data* starts: 0 (whatever was beyond *data* is cut off), or the file's recorded end
    :param data: the bytes to write (empty at 0: empty the file)
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, data, offset)
        if offset == 0:
            # A rewrite. Past offset 0 a write is an append at a size the journal recorded, or its replay: nothing
            # can lie beyond it, and the cut would be one more request to a shared filesystem's server.
            os.ftruncate(fd, len(data))
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


def read_all(fd: int) -> bytes:
    """:returns: the content of the small file open at *fd*, from its start"""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, _TAIL_BLOCK, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_last_lines(path: Path, count: int) -> tuple[int, list[bytes], int] | None:
    """Read up to *count* last newline-terminated lines of *path* without reading the rest.

    :returns: ``(offset of the first line returned, the lines without newlines (last line last), file size)``, or
        ``None`` when the file is missing
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        end = os.fstat(fd).st_size
        block = _TAIL_BLOCK
        while True:
            start = max(end - block, 0)
            tail = os.pread(fd, end - start, start)
            lines = tail.split(b"\n")[:-1]  # a complete file ends with a newline
            if start == 0 or len(lines) > count:
                lines = lines[-count:] if count else []
                return end - sum(len(line) + 1 for line in lines), lines, end
            block *= 4
    finally:
        os.close(fd)


def mtime_ns(path: Path) -> int | None:
    """:returns: the modification time of *path* in nanoseconds, ``None`` when it does not exist"""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


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


# Filesystems whose clients write back lazily to a server other hosts also read (see Journal's sync).
NETWORK_FILESYSTEMS: Final = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "beegfs",
        "cifs",
        "smb3",
        "ceph",
        "fuse.ceph",
        "glusterfs",
        "fuse.glusterfs",
        "panfs",
        "wekafs",
        "9p",
        "fuse.sshfs",
        "afs",
    }
)


def filesystem_type(path: Path, *, mountinfo: str | None = None) -> str:
    """:returns: the type of the filesystem *path* is on (``ext4``, ``nfs4``, ``lustre``...), ``""`` if unknown"""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    target = str(path.resolve())
    best, fstype = "", ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fstype = mount_point, fields[fields.index("-") + 1]
    return fstype
