"""``taskfarmer check-fs DIR [--peer DIR2]``: whether farmers on many hosts can share a work directory there.

What the store needs from a shared filesystem, tested there before a big run:

- ``flock`` works and excludes across processes (and across mounts, with ``--peer``);
- close-to-open consistency: what one client wrote and closed under the lock, the next lock holder sees whole,
  at once, through a fresh ``open`` on another client (``--peer``: the same directory through another mount point);
- the round-trip time of a metadata request, which bounds how many tasks per second the lock can hand out.

Each check yields one :class:`Check`; the command line prints them and picks the exit status. Everything is done in
a fresh directory inside DIR, removed at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import psutil

from taskfarmer.errors import WorkDirError
from taskfarmer.store._files import filesystem_type, pwrite_all, read_small

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROUNDS: Final = 36  # visibility rounds: each writer side (2) x each operation (3), six times
SAMPLES: Final = 50  # timed metadata requests of each kind
PEER_WAIT: Final = 5.0  # seconds for a file made in DIR to appear in the peer directory (else: not the same one)
JOIN_WAIT: Final = 600.0  # seconds --peer-serve and --peer-wait wait for each other
LOCK_WAIT: Final = 5.0  # seconds for a released lock to become free to another process
_MAX_SIZE: Final = 64 * 1024  # the test file is rewritten when it would grow beyond this
_OPERATIONS: Final = ("rewrite", "append", "truncate")

# What to change, per filesystem, when a check fails (what the store relies on: see README "Before a big run").
_ADVICE: Final = {
    "glusterfs": (
        "turn the volume's client caches off (gluster volume set VOLUME performance.X off, for X in write-behind, "
        "open-behind, quick-read, stat-prefetch, read-ahead, io-cache, readdir-ahead, nl-cache) and mount with "
        "-o attribute-timeout=0,entry-timeout=0,direct-io-mode=enable"
    ),
    "nfs": (
        "mount with close-to-open consistency and working locks: no nocto, no nolock, no local_lock; "
        "lookupcache=positive (or none) and a short actimeo (or noac)"
    ),
    "lustre": "mount the clients with -o flock (not localflock, not noflock)",
}
_GENERIC_ADVICE: Final = (
    "put the work directory (or the lock, --lockdir) on a filesystem with flock across hosts and close-to-open "
    "consistency"
)
_GLUSTER_CLIENT_OPTIONS: Final = ("--attribute-timeout=0", "--entry-timeout=0", "--direct-io-mode=enable")
GLUSTER_EVENT_THREADS: Final = 16  # fewer, and signals to processes inside lock requests can hang the client


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``passed`` is ``None`` for a line that only informs (or a check not run)."""

    name: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        """:returns: the line ``check-fs`` prints for it"""
        status = {True: "ok: ", False: "FAILED: ", None: ""}[self.passed]
        return f"{self.name:<13} {status}{self.detail}"


@dataclass(frozen=True)
class Mount:
    """The mount a path is on, from ``/proc/self/mountinfo``."""

    point: str
    fstype: str
    source: str
    options: tuple[str, ...]


def mount_of(path: Path, *, mountinfo: str | None = None) -> Mount:
    """:returns: the mount *path* is on (its type as the store sees it: :func:`filesystem_type`)"""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
    target = str(path.resolve())
    best = Mount(point="", fstype="", source="", options=())
    for fields in (line.split() for line in mountinfo.splitlines()):
        if "-" not in fields or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best.point):
            dash = fields.index("-")
            options = fields[5].split(",") + (fields[dash + 3].split(",") if len(fields) > dash + 3 else [])
            source = fields[dash + 2] if len(fields) > dash + 2 else ""
            best = Mount(point=point, fstype="", source=source, options=tuple(dict.fromkeys(options)))
    fstype = filesystem_type(path, mountinfo=mountinfo)
    return Mount(point=best.point, fstype=fstype, source=best.source, options=best.options)


def advice(fstype: str) -> str:
    """:returns: what to change on a filesystem of type *fstype* so that farmers can share it"""
    for key, text in _ADVICE.items():
        if key in fstype:
            return text
    return _GENERIC_ADVICE


class Side(Protocol):
    """A client of the filesystem the checks go through: this process on a path, or a peer on another host."""

    @property
    def where(self) -> str:
        """:returns: the client, for messages (a path, or ``host:path``)"""

    def write(self, name: str, data: bytes, *, start: int) -> None:
        """Under the lock, make file *name* hold *data*, writing only what differs from offset *start* on."""

    def read(self, name: str) -> bytes:
        """:returns: the content of file *name*, read under the lock through a fresh ``open``"""

    def try_lock(self) -> bool:
        """:returns: whether the lock could be taken at once (released again at once)"""

    def close(self) -> None:
        """The checks are over."""


@dataclass(frozen=True)
class LocalSide:
    """The scratch directory through a path of this host: the lock is its file ``lock``, as the store's."""

    directory: Path

    @property
    def where(self) -> str:
        """:returns: the directory checked, as this side sees it"""
        return str(self.directory.parent)

    def write(self, name: str, data: bytes, *, start: int) -> None:
        """Under the lock, make file *name* hold *data*, writing only what differs from offset *start* on."""
        with _locked(self.directory / "lock"):
            _write(self.directory / name, data, start=start)

    def read(self, name: str) -> bytes:
        """:returns: the content of file *name*, read under the lock through a fresh ``open``"""
        with _locked(self.directory / "lock"):
            return read_small(self.directory / name)

    def try_lock(self) -> bool:
        """:returns: whether the lock could be taken at once (released again at once)"""
        return _try_lock(self.directory / "lock")

    def close(self) -> None:
        """Nothing to release."""


def run_checks(
    directory: Path,
    *,
    peer: Path | None = None,
    join: Callable[[Path, bytes], Side] | None = None,
    rounds: int = ROUNDS,
) -> Iterator[Check]:
    """Check *directory*, and, with *peer* or *join*, visibility from another client of the filesystem.

    :param directory: a directory on the filesystem to check; a scratch directory is made in it and removed
    :param peer: the same directory through another mount point of this host
    :param join: called with the scratch directory and the content of its file ``hello``, it waits for a peer on
        another host to join and returns it (``taskfarmer.checkfs_peer``)
    :param rounds: how many write-then-read rounds the visibility check makes
    :raises WorkDirError: when *directory* or *peer* cannot be used (not a writable directory, not the same one)
    :returns: the checks, each as soon as it is done
    """
    scratch = _make_scratch(directory)
    other: Side = LocalSide(scratch)
    try:
        token = _hello(scratch)
        if peer is not None:
            other = LocalSide(_find_in_peer(scratch, peer, token))
        elif join is not None:
            wait = f"up to {JOIN_WAIT / 60:.0f} minutes"
            yield Check("peer", None, f"waiting for `taskfarmer check-fs DIR --peer-wait` on another host ({wait})")
            other = join(scratch, token)
            yield Check("peer", None, f"{other.where} joined")
        yield from _checks(scratch, other if peer or join else None, checked=directory, rounds=rounds)
    finally:
        other.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _checks(scratch: Path, other: Side | None, *, checked: Path, rounds: int) -> Iterator[Check]:
    mount = mount_of(checked)
    yield Check("filesystem", None, _describe(mount, checked))
    yield _check_mount_options(mount)
    lock = _check_lock(scratch, other or LocalSide(scratch), fstype=mount.fstype)
    yield lock
    if lock.passed is False:
        yield Check("visibility", None, "not checked: it needs the lock")
    elif other is None:
        yield Check("visibility", None, "not checked: give --peer DIR2 (another mount) or use --peer-serve/--peer-wait")
    else:
        visibility = _check_visibility(LocalSide(scratch), other, rounds=rounds, fstype=mount.fstype)
        yield _note_one_mount(visibility, scratch, other)
    yield _check_latency(scratch)


def _note_one_mount(visibility: Check, scratch: Path, other: Side) -> Check:
    """:returns: *visibility*, saying so when both sides are one mount (one client cache: it proves nothing)"""
    if not isinstance(other, LocalSide) or other.directory.stat().st_dev != scratch.stat().st_dev:
        return visibility
    detail = f"{visibility.detail}; but DIR and --peer are one mount (one client): give another mount point of it"
    return replace(visibility, detail=detail)


def _make_scratch(directory: Path) -> Path:
    if not directory.is_dir():
        msg = f"{directory} is not a directory: give a directory on the filesystem to check."
        raise WorkDirError(msg)
    scratch = directory / f".taskfarmer-check-fs.{secrets.token_hex(6)}"
    try:
        scratch.mkdir()
    except OSError as exc:
        msg = f"Cannot make a scratch directory in {directory}: {exc.strerror}. Give a directory you can write to."
        raise WorkDirError(msg) from exc
    return scratch


def _hello(scratch: Path) -> bytes:
    """Write a random token in *scratch*, for a peer to read back (then it sees the same directory).

    :returns: the token
    """
    token = secrets.token_hex(8).encode()
    (scratch / "hello").write_bytes(token)
    return token


def shows_hello(directory: Path, token: bytes, *, within: float = PEER_WAIT) -> bool:
    """:returns: whether file ``hello`` of *directory* holds *token* (waiting up to *within* seconds for it)"""
    deadline = time.monotonic() + within
    while read_small(directory / "hello") != token:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _find_in_peer(scratch: Path, peer: Path, token: bytes) -> Path:
    """:returns: *scratch* as seen through *peer*, once its file ``hello`` shows there"""
    if not peer.is_dir():
        msg = f"--peer {peer} is not a directory: give the same directory as DIR through another mount point."
        raise WorkDirError(msg)
    if not shows_hello(peer / scratch.name, token):
        msg = (
            f"--peer {peer} does not show the same directory as {scratch.parent}: {scratch.name}/hello, made "
            f"there, did not appear in it within {PEER_WAIT:.0f} s."
        )
        raise WorkDirError(msg)
    return peer / scratch.name


def _describe(mount: Mount, directory: Path) -> str:
    fstype = mount.fstype or "unknown type"
    return f"{directory} is on {fstype} ({mount.source} on {mount.point}), options {','.join(mount.options)}"


def _check_mount_options(mount: Mount) -> Check:
    """Options known to break what the store needs (the other checks find what no option shows)."""
    problems = _bad_options(mount)
    if problems:
        return Check("mount options", False, "; ".join(problems))
    return Check("mount options", True, "none known to break locking or consistency")


def _bad_options(mount: Mount) -> list[str]:
    options = set(mount.options)
    problems = []
    if mount.fstype.startswith("nfs"):
        if options & {"nolock", "local_lock=flock", "local_lock=all"}:
            problems.append("nolock/local_lock: locks exclude only on this host; mount without them")
        if "nocto" in options:
            problems.append("nocto: another host's writes may stay unseen after open; mount without it")
    if mount.fstype == "lustre" and options & {"localflock", "noflock"}:
        problems.append("localflock/noflock: locks exclude only on this node, or not at all; mount with -o flock")
    if "glusterfs" in mount.fstype:
        problems.extend(_gluster_client_problems(mount.point))
    return problems


def _gluster_client_problems(point: str) -> list[str]:
    """:returns: what is wrong with the gluster FUSE client serving *point* (its options, its event threads)"""
    client = _gluster_client(point)
    if client is None:
        return []  # not found (another user's process hidden, or another client): the other checks decide
    problems = []
    missing = [option for option in _GLUSTER_CLIENT_OPTIONS if option not in client.cmdline()]
    if missing:
        problems.append(
            f"the FUSE client runs without {' '.join(missing)}: the kernel caches names and data; "
            f"to fix: {advice('glusterfs')}"
        )
    with contextlib.suppress(psutil.Error):
        threads = sum(1 for task in Path(f"/proc/{client.pid}/task").iterdir() if _is_event_thread(task))
        if 0 < threads < GLUSTER_EVENT_THREADS:
            problems.append(
                f"the FUSE client runs {threads} event threads: a job killed while its processes wait for the lock "
                f"can hang it for good (gluster/glusterfs#4371); to fix: gluster volume set VOLUME "
                f"client.event-threads {GLUSTER_EVENT_THREADS}"
            )
    return problems


def _gluster_client(point: str) -> psutil.Process | None:
    """:returns: the ``glusterfs`` FUSE client process whose mount point is *point*, if this user can see it"""
    for proc in psutil.process_iter(["name", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if proc.info["name"] == "glusterfs" and argv and argv[-1].rstrip("/") == point.rstrip("/"):
            return proc
    return None


def _is_event_thread(task: Path) -> bool:
    try:
        return (task / "comm").read_text().startswith("glfs_epoll")
    except OSError:
        return False


def _check_lock(first: Path, other: Side, *, fstype: str) -> Check:
    """A process holds ``flock`` on a file; another (through *other*) must not get it, then get it once released."""
    taken_while_held = _try_while_held(first / "lock", other)
    if isinstance(taken_while_held, str):
        return _lock_failed(taken_while_held, fstype)
    if taken_while_held:
        return _lock_failed("a second process took the lock while another held it (locks exclude nothing)", fstype)
    start = time.monotonic()
    while not other.try_lock():
        if time.monotonic() - start > LOCK_WAIT:
            return _lock_failed(f"the lock stayed taken {LOCK_WAIT:.0f} s after its holder released it", fstype)
        time.sleep(0.01)
    where = "" if other.where == str(first.parent) else f" (through {other.where})"
    return Check("lock", True, f"a second process{where} could not take the lock while the first held it, then could")


def _try_while_held(lock: Path, other: Side) -> bool | str:
    """Have a child process hold *lock* while *other* tries it, then release it.

    :returns: whether *other* took the lock meanwhile, or why the test could not be made
    """
    lock.touch()
    holder = subprocess.Popen(  # noqa: S603  # this Python, a fixed script, a path we made
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with holder:
        said = holder.stdout.readline().strip() if holder.stdout else ""
        if said != "locked":
            holder.kill()
            return f"flock failed: {said or holder.communicate()[1].strip()}"
        try:
            return other.try_lock()
        except OSError as exc:
            return f"flock through {other.where} failed: {exc}"
        finally:
            holder.communicate("release\n")


# The holder: locks the file, says so, and keeps it until told to release it (or its stdin closes).
_HOLDER: Final = """
import fcntl, sys
try:
    with open(sys.argv[1], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.readline()
except OSError as exc:
    print(f"{exc.__class__.__name__}: {exc}", flush=True)
"""


def _try_lock(path: Path) -> bool:
    """:returns: whether a non-blocking exclusive ``flock`` on *path* succeeds (released at once)"""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _lock_failed(what: str, fstype: str) -> Check:
    consequence = "farmers sharing a work directory here would run tasks twice"
    return Check("lock", False, f"{what}; {consequence}; to fix: {advice(fstype)}")


def _check_visibility(first: Side, second: Side, *, rounds: int, fstype: str) -> Check:
    """Write under the lock through one client, close, then at once open and read under the lock through the other."""
    rng = random.Random()  # noqa: S311  # test data, not cryptography
    data = b""
    stale: list[str] = []
    for number in range(rounds):
        writer, reader = (first, second) if number % 2 == 0 else (second, first)
        operation = _OPERATIONS[(number // 2) % len(_OPERATIONS)]
        start, data = _next_content(data, operation, rng)
        writer.write("data", data, start=start)
        seen = reader.read("data")
        if seen != data:
            stale.append(f"round {number + 1} ({operation} through {writer.where}): {_difference(data, seen)}")
    if not stale:
        return Check(
            "visibility",
            True,
            f"{rounds} rounds of rewrite, append and truncate through one client, each seen whole by a fresh open "
            "through the other right after",
        )
    return Check(
        "visibility",
        False,
        f"{len(stale)} of {rounds} rounds saw a stale view, first {stale[0]}; farmers on several hosts would run "
        f"tasks twice and corrupt the work directory; to fix: {advice(fstype)}",
    )


def _next_content(data: bytes, operation: str, rng: random.Random) -> tuple[int, bytes]:
    """:returns: where the next content starts to differ from *data*, and the content (no NUL byte in it)"""
    if operation == "append" and len(data) < _MAX_SIZE:
        return len(data), data + _printable(rng, rng.randint(1, 4096))
    if operation == "truncate" and data:
        cut = rng.randint(0, len(data) - 1)
        return cut, data[:cut]
    return 0, _printable(rng, rng.randint(1, 8192))


def _printable(rng: random.Random, size: int) -> bytes:
    return bytes(rng.choices(range(33, 127), k=size))


def _write(path: Path, data: bytes, *, start: int) -> None:
    """Make *path* hold *data*, writing only what differs from *start* on, as the store appends and cuts."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        pwrite_all(fd, data[start:], start)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _difference(expected: bytes, seen: bytes) -> str:
    """:returns: how *seen* differs from *expected*, in a few words"""
    if len(seen) != len(expected):
        return f"a fresh open saw {len(seen)} bytes, not the {len(expected)} written"
    offset = next(i for i, (a, b) in enumerate(zip(expected, seen, strict=True)) if a != b)
    nul = " (NUL bytes)" if seen[offset] == 0 else ""
    return f"a fresh open saw other bytes from offset {offset}{nul}"


def _check_latency(scratch: Path) -> Check:
    """Median and 90th percentile of an open+close and of a stat of an existing file."""
    probe = scratch / "latency"
    probe.write_bytes(b"x")
    opens = _timed(lambda: os.close(os.open(probe, os.O_RDONLY)))
    stats = _timed(probe.stat)
    return Check(
        "latency",
        True,
        f"open+close median {_ms(statistics.median(opens))}, p90 {_ms(_p90(opens))}; stat median "
        f"{_ms(statistics.median(stats))}, p90 {_ms(_p90(stats))} ({SAMPLES} each)",
    )


def _timed(request: Callable[[], object]) -> list[float]:
    times = []
    for _ in range(SAMPLES):
        start = time.perf_counter()
        request()
        times.append(time.perf_counter() - start)
    return times


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"
