"""The per-task process helpers: the one-call child check and the remembered program paths."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

from taskfarmer import process

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _in_child(code: str) -> str:
    # In a fresh process: the test runner's own children must not count.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    return result.stdout.strip()


def test_has_children_sees_running_and_unreaped_children_and_reaps_none() -> None:
    code = """
import os, time
from taskfarmer import process
seen = [process.has_children()]
pid = os.posix_spawn("/bin/sleep", ["sleep", "0.3"], dict(os.environ))
seen.append(process.has_children())
time.sleep(0.6)  # it ended, not reaped yet: still a child
seen.append(process.has_children())
seen.append(os.waitpid(pid, 0)[0] == pid)  # the check did not reap it
seen.append(process.has_children())
print(seen)
"""
    assert _in_child(code) == "[False, True, True, True, False]"


def _program(directory: Path, word: str) -> None:
    directory.mkdir(exist_ok=True)
    script = directory / "tool"
    script.write_text(f"#!/bin/sh\necho {word}\n")
    script.chmod(0o755)


def _run(env: dict[str, str], tmp_path: Path) -> str:
    out = tmp_path / "out"
    with out.open("wb") as handle:
        proc = process.start(["tool"], cwd=None, env=env, output=handle)
        assert proc.wait() == 0
    return out.read_text()


def test_a_program_moved_between_tasks_is_found_again(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _program(first, "from-a")
    env = {**os.environ, "PATH": f"{first}:{second}:/usr/bin:/bin"}
    assert process.find_program("tool", env) == str(first / "tool")
    assert _run(env, tmp_path) == "from-a\n"
    (first / "tool").unlink()
    _program(second, "from-b")
    assert _run(env, tmp_path) == "from-b\n"  # the remembered path failed: PATH searched again
    assert process.find_program("tool", env) == str(second / "tool")


def test_programs_are_remembered_per_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _program(first, "from-a")
    _program(second, "from-b")
    assert _run({**os.environ, "PATH": f"{first}:/usr/bin:/bin"}, tmp_path) == "from-a\n"
    assert _run({**os.environ, "PATH": f"{second}:/usr/bin:/bin"}, tmp_path) == "from-b\n"
    assert process.find_program("no-such-tool-here", {"PATH": str(first)}) is None


def test_environ_copy_follows_every_change_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFARMER_TEST_A", "1")
    assert process.environ_copy() == dict(os.environ)
    monkeypatch.setenv("TASKFARMER_TEST_A", "2")
    monkeypatch.setenv("TASKFARMER_TEST_B", "caf\u00e9 \udcff")  # not UTF-8 once encoded: kept as os.environ does
    monkeypatch.delenv("HOME", raising=False)
    copy = process.environ_copy()
    assert copy == dict(os.environ)
    assert copy["TASKFARMER_TEST_A"] == "2"
    assert "HOME" not in copy
    copy["TASKFARMER_TEST_C"] = "mine"  # a copy: changing it changes neither os.environ nor the next copy
    assert "TASKFARMER_TEST_C" not in os.environ
    assert process.environ_copy() == dict(os.environ)


def test_a_forked_process_takes_the_slot_pool_lock_through_a_descriptor_of_its_own(tmp_path: Path) -> None:
    # Two descriptors of one open file share a flock: a forked worker must not lock through its farmer's copy.
    code = f"""
import os
from pathlib import Path
from taskfarmer import packing
lock = Path({str(tmp_path / "slots")!r})
with packing._Locked(lock):
    pass
parent_fd = packing._Locked._descriptors[lock]
pid = os.fork()
if pid == 0:
    cached = dict(packing._Locked._descriptors)
    with packing._Locked(lock):
        own = packing._Locked._descriptors[lock]
    os.write(1, f"{{cached}} {{own != parent_fd}}".encode())
    os._exit(0)
os.waitpid(pid, 0)
"""
    assert _in_child(code) == "{} True"
