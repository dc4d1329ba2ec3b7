"""``check-fs --peer-serve`` / ``--peer-wait``: the visibility check between two hosts sharing a directory.

On host 1, ``taskfarmer check-fs DIR --peer-serve`` makes its scratch directory in DIR, listens on a TCP port and
announces itself in ``DIR/.taskfarmer-check-fs.peer`` (host name, port, a random token, the scratch directory). On
host 2, ``taskfarmer check-fs DIR --peer-wait`` (DIR: the same directory, wherever it is mounted there) waits for
that file, checks that it sees the scratch directory, connects and then does what host 1 asks, through its own
mount: write a file under the lock, read it back under the lock, try the lock. Host 1 runs the checks and prints
the results, telling what it wrote to host 2 over the connection, never through the filesystem under test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from typing import TYPE_CHECKING, Final

from taskfarmer.checkfs import JOIN_WAIT, Check, LocalSide, Side, run_checks, shows_hello
from taskfarmer.errors import WorkDirError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

RENDEZVOUS: Final = ".taskfarmer-check-fs.peer"
REQUEST_TIMEOUT: Final = 120.0  # seconds for the peer to answer one request
_POLL: Final = 0.2  # seconds between two looks for the rendezvous file


class _Connection:
    """JSON lines over a TCP connection; a lost connection or a peer's error is a :class:`WorkDirError`."""

    def __init__(self, sock: socket.socket, *, peer: str) -> None:
        sock.settimeout(REQUEST_TIMEOUT)
        self.sock = sock
        self.peer = peer
        self.stream = sock.makefile("rwb")

    def send(self, message: dict[str, object]) -> None:
        """Send *message* (JSON-serialisable)."""
        try:
            self.stream.write(json.dumps(message).encode() + b"\n")
            self.stream.flush()
        except OSError as exc:
            raise self._lost(exc) from exc

    def receive(self) -> dict[str, object]:
        """:returns: the next message"""
        try:
            line = self.stream.readline()
        except OSError as exc:
            raise self._lost(exc) from exc
        if not line:
            raise self._lost(ConnectionError("connection closed"))
        message: dict[str, object] = json.loads(line)
        if "error" in message:
            msg = f"check-fs on {self.peer} failed: {message['error']}"
            raise WorkDirError(msg)
        return message

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(OSError):
            self.stream.close()
            self.sock.close()

    def _lost(self, exc: Exception) -> WorkDirError:
        return WorkDirError(f"Lost the connection to check-fs on {self.peer}: {exc}. Run both sides again.")


class RemoteSide:
    """The scratch directory through the mount of the host that runs ``--peer-wait`` (a :class:`Side`)."""

    def __init__(self, connection: _Connection, *, where: str) -> None:
        self._connection = connection
        self._where = where

    @property
    def where(self) -> str:
        """:returns: ``host:directory`` of the peer"""
        return self._where

    def write(self, name: str, data: bytes, *, start: int) -> None:
        """Under the lock, on the peer, make file *name* hold *data* (written from offset *start* on)."""
        self._call({"op": "write", "name": name, "start": start, "data": base64.b64encode(data).decode()})

    def read(self, name: str) -> bytes:
        """:returns: file *name* as the peer reads it under the lock through a fresh ``open``"""
        return base64.b64decode(str(self._call({"op": "read", "name": name})["data"]))

    def try_lock(self) -> bool:
        """:returns: whether the peer could take the lock at once"""
        return bool(self._call({"op": "try_lock"})["taken"])

    def close(self) -> None:
        """Tell the peer the checks are over."""
        with contextlib.suppress(WorkDirError):
            self._connection.send({"op": "done"})
        self._connection.close()

    def _call(self, request: dict[str, object]) -> dict[str, object]:
        self._connection.send(request)
        return self._connection.receive()


def serve(directory: Path) -> Iterator[Check]:
    """``check-fs DIR --peer-serve``: the checks of :func:`taskfarmer.checkfs.run_checks`, with a peer host."""
    return run_checks(directory, join=_accept)


def _accept(scratch: Path, token: bytes) -> Side:
    """Announce *scratch* in the rendezvous file and wait for a peer that shows the right token."""
    rendezvous = scratch.parent / RENDEZVOUS
    with socket.create_server(("", 0)) as listener:
        listener.settimeout(JOIN_WAIT)
        announcement = {"host": socket.gethostname(), "port": listener.getsockname()[1], "token": token.decode()}
        rendezvous.write_text(json.dumps({**announcement, "scratch": scratch.name}))
        try:
            while True:
                sock, address = listener.accept()
                connection = _Connection(sock, peer=address[0])
                hello = connection.receive()
                if hello.get("token") == token.decode():
                    connection.send({"ok": True})
                    return RemoteSide(connection, where=f"{hello.get('host')}:{hello.get('directory')}")
                connection.close()  # not our peer (an earlier run's): wait for the right one
        except TimeoutError:
            msg = f"No `taskfarmer check-fs DIR --peer-wait` joined within {JOIN_WAIT:.0f} s."
            raise WorkDirError(msg) from None
        finally:
            rendezvous.unlink(missing_ok=True)


def wait(directory: Path) -> Iterator[Check]:
    """``check-fs DIR --peer-wait``: join the ``--peer-serve`` of another host and answer its requests."""
    if not directory.is_dir():
        msg = f"{directory} is not a directory: give the directory --peer-serve checks, as this host sees it."
        raise WorkDirError(msg)
    yield Check("peer", None, f"waiting for `taskfarmer check-fs DIR --peer-serve` on another host ({RENDEZVOUS})")
    connection, announcement = _join(directory)
    try:
        served = f"{announcement['host']}:{announcement['port']}"
        yield Check("peer", None, f"joined {served}; it runs the checks and prints the results")
        count = _answer(connection, LocalSide(directory / str(announcement["scratch"])))
    finally:
        connection.close()
    yield Check("peer", True, f"answered {count} requests of {served}")


def _join(directory: Path) -> tuple[_Connection, dict[str, object]]:
    """Wait for a rendezvous file whose host answers and whose scratch directory shows here; say hello."""
    deadline = time.monotonic() + JOIN_WAIT
    while time.monotonic() < deadline:
        joined = _try_join(directory)
        if joined is not None:
            return joined
        time.sleep(_POLL)
    msg = f"No `taskfarmer check-fs DIR --peer-serve` announced itself in {directory} within {JOIN_WAIT:.0f} s."
    raise WorkDirError(msg)


def _try_join(directory: Path) -> tuple[_Connection, dict[str, object]] | None:
    try:
        announcement = json.loads((directory / RENDEZVOUS).read_text())
        token = str(announcement["token"])
        sock = socket.create_connection((str(announcement["host"]), int(announcement["port"])), timeout=10)
    except (OSError, ValueError, KeyError):
        return None  # not there yet, half written, or an earlier run's that nobody serves
    connection = _Connection(sock, peer=str(announcement["host"]))
    if not shows_hello(directory / str(announcement["scratch"]), token.encode()):
        connection.close()
        msg = f"{directory} does not show the scratch directory of the --peer-serve side: is it the same directory?"
        raise WorkDirError(msg)
    connection.send({"token": token, "host": socket.gethostname(), "directory": str(directory)})
    connection.receive()
    return connection, announcement


def _answer(connection: _Connection, side: LocalSide) -> int:
    """Do what the serving host asks until it says it is done.

    :returns: how many requests were answered
    """
    count = 0
    while (request := connection.receive()).get("op") != "done":
        try:
            connection.send(_do(side, request))
        except OSError as exc:
            connection.send({"error": f"{request.get('op')} of {side.directory}: {exc}"})
        count += 1
    return count


def _do(side: LocalSide, request: dict[str, object]) -> dict[str, object]:
    name = str(request.get("name"))
    if request["op"] == "write":
        side.write(name, base64.b64decode(str(request["data"])), start=int(str(request["start"])))
        return {"ok": True}
    if request["op"] == "read":
        return {"data": base64.b64encode(side.read(name)).decode()}
    return {"taken": side.try_lock()}
