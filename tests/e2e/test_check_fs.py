"""``taskfarmer check-fs``: one line per check, exit 0 when all pass, 1 when one fails, 2 for bad input.

On a local directory every check passes (the GlusterFS tests show the failures on a real shared filesystem).
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from taskfarmer import checkfs
from taskfarmer.store._files import filesystem_type
from tests.helpers import serve_and_wait

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

CHECKS = ["filesystem", "mount options", "lock", "visibility", "latency"]


def check_fs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskfarmer", "check-fs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """An empty directory to check (tmp_path holds the test's configuration directory)."""
    directory = tmp_path / "place"
    directory.mkdir()
    return directory


def _by_check(stdout: str) -> dict[str, str]:
    """:returns: each printed line, keyed by the name of its check (the line's first 13 characters)"""
    return {line[:13].strip(): line[13:].strip() for line in stdout.splitlines()}


def test_a_local_directory_passes_every_check(place: Path) -> None:
    result = check_fs(place, "--peer", place)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = _by_check(result.stdout)
    assert list(lines) == CHECKS
    assert f"is on {filesystem_type(place)} (" in lines["filesystem"]
    for name in CHECKS[1:]:
        assert lines[name].startswith("ok: "), lines[name]
    assert "36 rounds of rewrite, append and truncate" in lines["visibility"]
    assert lines["visibility"].endswith("but DIR and --peer are one mount (one client): give another mount point of it")
    assert "open+close median " in lines["latency"]
    assert " ms, p90 " in lines["latency"]
    assert list(place.iterdir()) == [], "check-fs must leave nothing behind"


def test_without_a_peer_visibility_is_not_checked(place: Path) -> None:
    result = check_fs(place)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = _by_check(result.stdout)
    assert lines["visibility"].startswith("not checked: give --peer DIR2")
    assert lines["lock"].startswith("ok: a second process could not take the lock while the first held it")


def test_two_hosts_serve_and_wait_on_one_directory(place: Path) -> None:
    server, waited = serve_and_wait(place, place)
    assert server.returncode == 0, server.stdout + server.stderr
    lines = server.stdout.splitlines()
    assert lines[0].startswith("peer          waiting for `taskfarmer check-fs DIR --peer-wait` on another host")
    assert lines[1].startswith("peer          ")
    assert lines[1].endswith(f":{place} joined")
    results = _by_check("\n".join(lines[2:]))
    assert list(results) == CHECKS
    for name in CHECKS[1:]:
        assert results[name].startswith("ok: "), results[name]
    assert f":{place})" in results["lock"], "the second locker is the peer"
    assert waited.splitlines()[-1].startswith("peer          ok: answered 38 requests of ")
    assert list(place.iterdir()) == [], "check-fs must leave nothing behind"


def test_a_mount_option_known_to_break_locks_fails_with_what_to_change(tmp_path: Path) -> None:
    mountinfo = (
        "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n"
        f"40 22 0:40 / {tmp_path} rw,relatime shared:5 - nfs4 server:/export rw,vers=4.2,nolock,nocto\n"
    )
    mount = checkfs.mount_of(tmp_path, mountinfo=mountinfo)
    assert (mount.fstype, mount.source, mount.point) == ("nfs4", "server:/export", str(tmp_path))
    line = checkfs._check_mount_options(mount).line()
    assert line == (
        "mount options FAILED: nolock/local_lock: locks exclude only on this host; mount without them; "
        "nocto: another host's writes may stay unseen after open; mount without it"
    )


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp: [tmp / "missing"], "is not a directory"),
        (lambda tmp: [tmp / "file"], "is not a directory"),
        (lambda tmp: [tmp / "dir", "--peer", tmp / "missing"], "--peer"),
        (lambda tmp: [tmp / "dir", "--peer", tmp / "other"], "does not show the same directory"),
        (lambda tmp: [tmp / "dir", "--rounds", "3"], "unknown option --rounds"),
        (lambda tmp: [tmp / "dir", "--peer", tmp / "dir", "--peer-serve"], "not allowed with argument"),
        (lambda tmp: [tmp / "missing", "--peer-serve"], "is not a directory"),
        (lambda tmp: [tmp / "missing", "--peer-wait"], "is not a directory"),
    ],
    ids=[
        "missing",
        "a file",
        "missing peer",
        "peer not the same directory",
        "unknown option",
        "two peer modes",
        "serve a missing directory",
        "wait on a missing directory",
    ],
)
def test_bad_input_gets_one_clear_line_and_status_2(
    place: Path, make: Callable[[Path], list[str | Path]], needle: str
) -> None:
    (place / "file").write_text("x")
    (place / "dir").mkdir()
    (place / "other").mkdir()
    result = check_fs(*make(place))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert needle in error_lines[0]
    assert result.stdout == ""
    assert sorted(path.name for path in place.iterdir()) == ["dir", "file", "other"]
    assert list((place / "dir").iterdir()) == [], "nothing left behind"
