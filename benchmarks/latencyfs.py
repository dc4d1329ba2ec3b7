"""A filesystem that answers every request late, and counts them: a shared filesystem's metadata server on one
machine.

It mirrors a backing directory onto a mount point through FUSE (``mfusepy``: a maintained fork of fusepy, pure
ctypes over libfuse 3, so it needs no compiler; pyfuse3 would need trio and a build). Every request it serves
(lookup and attributes included, file locks too) first sleeps ``--delay-ms``, as a round trip to a Lustre or NFS
server does, and is counted by its kind. The kernel caches names for a second and attributes not at all, and drops
a file's cached pages at every open: what NFS's close-to-open consistency gives a client. A close is no request
(FUSE's FLUSH is declined once, as NFS sends nothing to close a file without dirty data). ``flock`` goes through
the filesystem (a request, delayed and counted; a granted exclusive lock is a "lock acquisition"), so that
processes locking one file through it exclude each other as on a shared filesystem.

    python benchmarks/latencyfs.py BACKING MOUNTPOINT --delay-ms 0.5 --stats stats.json

It runs in the foreground until unmounted (``fusermount3 -u MOUNTPOINT``) or sent SIGINT/SIGTERM, and writes its
counts to ``--stats`` as JSON at exit, and whenever it gets SIGUSR1.
"""

from __future__ import annotations

import argparse
import collections
import errno
import fcntl
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import mfusepy

_UTIME_NOW: Final = (1 << 30) - 1  # the kernel's "now" and "leave it" for a time a utimensat sets
_UTIME_OMIT: Final = (1 << 30) - 2


class LatencyFS(mfusepy.Operations):  # type: ignore[misc]  # mfusepy has no type hints
    """A passthrough to *root* that sleeps *delay* seconds before serving each request, and counts them."""

    use_ns = True  # times in nanoseconds: a heartbeat's utime(path) arrives as "now", not as a float of it

    def __init__(self, root: str, *, delay: float) -> None:
        self.root = os.path.realpath(root)
        self.delay = delay
        self.counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    def _serve(self, kind: str) -> None:
        with self._count_lock:
            self.counts[kind] += 1
        if self.delay:
            time.sleep(self.delay)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))  # noqa: PTH118  # str paths all through: FUSE's own

    # -- names and attributes ---------------------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self._serve("getattr")
        st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
        attributes = {key: getattr(st, key) for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")}
        return attributes | {key: getattr(st, f"{key}_ns") for key in ("st_atime", "st_mtime", "st_ctime")}

    def access(self, path: str, amode: int) -> int:
        self._serve("access")
        if not os.access(self._full(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:  # FUSE's signature
        self._serve("readdir")
        return [".", "..", *os.listdir(self._full(path))]  # noqa: PTH208  # names, as FUSE wants them

    def mkdir(self, path: str, mode: int) -> int:
        self._serve("mkdir")
        os.mkdir(self._full(path), mode)  # noqa: PTH102
        return 0

    def rmdir(self, path: str) -> int:
        self._serve("rmdir")
        os.rmdir(self._full(path))  # noqa: PTH106
        return 0

    def unlink(self, path: str) -> int:
        self._serve("unlink")
        os.unlink(self._full(path))  # noqa: PTH108
        return 0

    def rename(self, old: str, new: str) -> int:
        self._serve("rename")
        os.rename(self._full(old), self._full(new))  # noqa: PTH104
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._serve("chmod")
        os.chmod(self._full(path), mode)  # noqa: PTH101
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._serve("utimens")
        full = self._full(path)
        if times is None:
            os.utime(full)
            return 0
        current = os.stat(full)  # noqa: PTH116  # str paths all through
        now = time.time_ns()
        chosen = [
            now if t == _UTIME_NOW else old if t == _UTIME_OMIT else t
            for t, old in zip(times, (current.st_atime_ns, current.st_mtime_ns), strict=True)
        ]
        os.utime(full, ns=(chosen[0], chosen[1]))
        return 0

    def statfs(self, path: str) -> dict[str, Any]:
        self._serve("statfs")
        st = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_frsize")
        return {key: getattr(st, key) for key in keys} | {"f_namemax": st.f_namemax}

    # -- files ------------------------------------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        self._serve("open")
        return os.open(self._full(path), flags)

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
        self._serve("create")
        return os.open(self._full(path), flags | os.O_CREAT, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._serve("read")
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._serve("write")
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._serve("truncate")
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._full(path), length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        # FUSE asks at every close() of a descriptor (a task's inherited stdout too); NFS sends nothing on closing a
        # file without dirty data, and its dirty data arrive here as writes. Answered "not implemented" once, after
        # which the kernel sends no more.
        raise mfusepy.FuseOSError(errno.ENOSYS)

    def release(self, path: str, fh: int) -> int:
        self._serve("release")
        os.close(fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._serve("fsync")
        (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    def flock(self, path: str, fh: int, op: int) -> int:
        self._serve("flock")
        fcntl.flock(fh, op)  # BlockingIOError (EWOULDBLOCK) goes back to the caller as such
        if op & fcntl.LOCK_EX:
            with self._count_lock:
                self.counts["lock acquisitions"] += 1
        return 0


def _write_stats(operations: LatencyFS, path: Path | None) -> None:
    if path is None:
        return
    with operations._count_lock:  # noqa: SLF001  # the same module
        counts = dict(operations.counts)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts, indent=1, sort_keys=True))
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--delay-ms", type=float, default=0.5, help="added to every request (default: 0.5)")
    parser.add_argument("--stats", type=Path, help="where to write the request counts (JSON)")
    args = parser.parse_args()
    operations = LatencyFS(str(args.backing), delay=args.delay_ms / 1000)
    stats = args.stats.resolve() if args.stats else None  # libfuse changes the working directory
    signal.signal(signal.SIGUSR1, lambda *_: _write_stats(operations, stats))
    try:
        mfusepy.FUSE(
            operations,
            str(args.mountpoint.resolve()),
            foreground=True,
            nothreads=False,
            entry_timeout=1.0,  # names cached for a second, as NFS's lookup cache
            attr_timeout=0.0,  # attributes asked for every time
            negative_timeout=0.0,
        )
    finally:
        _write_stats(operations, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
