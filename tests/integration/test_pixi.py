"""PixiRunner through the farmer, against fake ``pixi`` and ``pixi-unpack`` on PATH, with real tar archives."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import tarfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from taskfarmer import config
from taskfarmer.runners.pixi import UNPACKED_MARKER, PixiRunner, cache_entry
from tests.helpers import LONG, REPO, cleanup, ids, lines, run_farmer, start_farmer, write_tasklist
from tests.integration.fakes import LOG_VARIABLE, UNPACK_DELAY_VARIABLE, calls, install_fakes, write_script

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

pytestmark = pytest.mark.timeout(120)
ADVICE = "Load the module that provides it, or pick another runner with --runner."
TOOL = 'echo "{name} $1 prefix=$CONDA_PREFIX"\n'
RELOCATABLE_ACTIVATE = """\
_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONDA_PREFIX="$_here/env"
export PATH="$CONDA_PREFIX/bin:$PATH"
"""


@pytest.fixture
def engine_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake ``pixi`` and ``pixi-unpack`` first on PATH; :returns: the log their calls go to."""
    bin_dir = install_fakes(tmp_path / "bin", ("pixi", "pixi-unpack"))
    log = tmp_path / "engines.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv(LOG_VARIABLE, str(log))
    return log


def _define(home: Path, body: str) -> None:
    (home / "runners.d" / "pixi.ini").write_text(textwrap.dedent(body))


def _project(root: Path, environment: str) -> Path:
    """A Pixi project whose *environment* is installed and holds ``ana-tool``. :returns: its manifest"""
    root.mkdir(parents=True)
    manifest = root / "pixi.toml"
    manifest.write_text('[workspace]\nname = "ana"\nchannels = ["conda-forge"]\nplatforms = ["linux-64"]\n')
    write_script(root / ".pixi" / "envs" / environment / "bin" / "ana-tool", TOOL.format(name="ana-tool"))
    return manifest


def _add(archive: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    archive.addfile(info, io.BytesIO(data))


def _pack(path: Path, *, pixi_pack: bool) -> Path:
    """A real tar with ``env/bin/pack-tool``: a pixi-pack archive (metadata, no activate.sh), or a plain one."""
    with tarfile.open(path, "w") as archive:
        if pixi_pack:
            _add(archive, "pixi-pack.json", json.dumps({"version": "1", "platform": "linux-64"}))
        else:
            _add(archive, "activate.sh", RELOCATABLE_ACTIVATE)
        _add(archive, "env/bin/pack-tool", "#!/bin/sh\n" + TOOL.format(name="pack-tool"), 0o755)
    return path


def _outputs(out: Path) -> dict[int, list[str]]:
    return {int(path.name): path.read_text().split() for path in out.iterdir()}


# --- a Pixi project --------------------------------------------------------------------------------------------


def test_project_environment_entered_once_per_worker(tmp_path: Path, taskfarmer_home: Path, engine_log: Path) -> None:
    manifest = _project(tmp_path / "proj", "prod")
    prefix = manifest.parent / ".pixi" / "envs" / "prod"
    _define(
        taskfarmer_home,
        f"""
        [ana]
        Runner = PixiRunner
        manifest = {manifest}
        environment = prod
        frozen = true
        setup = export FROM_SETUP=$(ana-tool setup | cut -d' ' -f2)
        variables = PIXI_ENVIRONMENT_NAME=mine
        """,
    )
    out = tmp_path / "out"
    out.mkdir()
    command = (
        f"echo $(ana-tool $PROC_NUMBER) $FROM_SETUP $PIXI_ENVIRONMENT_NAME $TASKFARMER_WORKER > {out}/$PROC_NUMBER"
    )
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", [command] * 6), "-r", "ana", "-n", "2")
    assert result.returncode == 0, result.stderr
    outputs = _outputs(out)
    assert sorted(outputs) == list(range(6))
    for taskid, words in outputs.items():
        assert words[:5] == ["ana-tool", str(taskid), f"prefix={prefix}", "setup", "mine"]
    workers = {words[5] for words in outputs.values()}
    hook = ["pixi", "shell-hook", "--manifest-path", str(manifest), "-e", "prod", "--json", "--frozen"]
    recorded = calls(engine_log, "pixi")
    assert recorded[0] == ["pixi", "--version"]
    assert recorded[1:] == [hook] * (1 + len(workers))  # the preflight, then once per worker: not once per task


def test_unknown_environment_is_one_clear_error(tmp_path: Path, taskfarmer_home: Path, engine_log: Path) -> None:
    manifest = _project(tmp_path / "proj", "prod")
    _define(taskfarmer_home, f"[ana]\nRunner = PixiRunner\nmanifest = {manifest}\nenvironment = nope\n")
    marker = tmp_path / "ran"
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", [f"touch {marker}"]), "-r", "ana")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    hook = f"pixi shell-hook --manifest-path {manifest} -e nope --json"
    assert result.stderr.strip().replace(" [ana]", "") == (
        f"pytaskfarmer: error: The pixi runner cannot enter environment 'nope' of {manifest}: '{hook}' exited with"
        " status 1: pixi: unknown environment 'nope'. Check the manifest and the environment name."
    )
    assert not marker.exists()
    assert not (tmp_path / "tasks.txt_workdir").exists()


def test_missing_pixi_is_one_clear_error(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")
    if shutil.which("pixi") is not None:
        pytest.skip("a real pixi is on /usr/bin or /bin")
    manifest = _project(tmp_path / "proj", "default")
    _define(taskfarmer_home, f"[ana]\nRunner = PixiRunner\nmanifest = {manifest}\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "ana")
    assert result.returncode == 2
    assert result.stderr.strip().replace(" [ana]", "") == (
        f"pytaskfarmer: error: The pixi runner needs the 'pixi' executable, but it is not on PATH. {ADVICE}"
    )
    assert not (tmp_path / "tasks.txt_workdir").exists()


# --- a packed environment --------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_two_farmers_unpack_the_archive_once_and_run_every_task_once(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack = _pack(tmp_path / "environment.tar", pixi_pack=True)
    cache = tmp_path / "cache"
    entry = cache_entry(pack, cache)
    _define(
        taskfarmer_home,
        f"""
        [packed]
        Runner = PixiRunner
        pack = {pack}
        cache = {cache}
        setup = export FROM_SETUP=$(pack-tool setup | cut -d' ' -f2)
        """,
    )
    monkeypatch.setenv(UNPACK_DELAY_VARIABLE, "2")  # a slow unpack: the other farmer arrives while it runs
    out = tmp_path / "out"
    out.mkdir()
    command = f"echo $(pack-tool $PROC_NUMBER) $FROM_SETUP >> {out}/$PROC_NUMBER"
    tasklist = write_tasklist(tmp_path / "tasks.txt", [command] * 12)
    farmers = [start_farmer(tasklist, "-r", "packed", "-n", "2") for _ in range(2)]
    with cleanup(*farmers):
        for farmer in farmers:
            assert farmer.wait(timeout=LONG * 3) == 0, farmer.communicate()[1]
    unpacks = [argv for argv in calls(engine_log, "pixi-unpack") if argv != ["pixi-unpack", "--version"]]
    assert unpacks == [["pixi-unpack", "-o", str(entry), str(pack)]]
    outputs = _outputs(out)
    assert sorted(outputs) == list(range(12))
    for taskid, words in outputs.items():
        assert words == ["pack-tool", str(taskid), f"prefix={entry}/env", "setup"]  # exactly one line: ran once
    assert sorted(ids(tmp_path / "tasks.txt_workdir" / "finished")) == list(range(12))
    assert sorted(path.name for path in cache.iterdir()) == sorted([entry.name, f"{entry.name}.lock"])
    assert (entry / UNPACKED_MARKER).is_file()


def _prepare_in_process(pack: str, cache: str, ready: Queue[str], go: Event, results: Queue[str]) -> None:
    runner = PixiRunner(pack=pack, cache=cache)
    ready.put("ready")
    go.wait(LONG)
    runner.prepare()
    results.put(str(runner._activate_script))


@pytest.mark.timeout(120)
def test_concurrent_workers_of_one_node_unpack_once(
    tmp_path: Path, engine_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack = _pack(tmp_path / "environment.tar", pixi_pack=True)
    cache = tmp_path / "cache"
    monkeypatch.setenv(UNPACK_DELAY_VARIABLE, "1")
    context = multiprocessing.get_context("spawn")
    ready: Queue[str] = context.Queue()
    results: Queue[str] = context.Queue()
    go = context.Event()
    procs = [
        context.Process(target=_prepare_in_process, args=(str(pack), str(cache), ready, go, results)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=LONG)
        go.set()  # all four ask at the same moment
        activated = [results.get(timeout=LONG) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=LONG)
            if proc.is_alive():
                proc.kill()
                proc.join()
    entry = cache_entry(pack, cache)
    assert activated == [str(entry / "activate.sh")] * 4
    assert [argv for argv in calls(engine_log, "pixi-unpack") if "-o" in argv] == [
        ["pixi-unpack", "-o", str(entry), str(pack)]
    ]


def test_an_interrupted_unpack_is_redone(tmp_path: Path, taskfarmer_home: Path, engine_log: Path) -> None:
    pack = _pack(tmp_path / "environment.tar", pixi_pack=True)
    cache = tmp_path / "cache"
    entry = cache_entry(pack, cache)
    (entry / "env").mkdir(parents=True)
    (entry / "env" / "half-written").write_text("left by a killed unpack")
    _define(taskfarmer_home, f"[packed]\nRunner = PixiRunner\npack = {pack}\ncache = {cache}\n")
    out = tmp_path / "out"
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", [f"pack-tool x > {out}"]), "-r", "packed", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert out.read_text().split() == ["pack-tool", "x", f"prefix={entry}/env"]
    assert not (entry / "env" / "half-written").exists()
    assert len([argv for argv in calls(engine_log, "pixi-unpack") if "-o" in argv]) == 1
    # A second farmer finds it done: no unpack, no lock taken.
    result = run_farmer(write_tasklist(tmp_path / "more.txt", [f"pack-tool y > {out}"]), "-r", "packed", "-n", "1")
    assert result.returncode == 0, result.stderr
    assert len([argv for argv in calls(engine_log, "pixi-unpack") if "-o" in argv]) == 1


def test_a_plain_tar_is_extracted_without_pixi_unpack(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty-bin'}:/usr/bin:/bin")
    if shutil.which("pixi-unpack") is not None:
        pytest.skip("a real pixi-unpack is on /usr/bin or /bin")
    pack = _pack(tmp_path / "env.tar", pixi_pack=False)
    cache = tmp_path / "cache"
    _define(taskfarmer_home, f"[packed]\nRunner = PixiRunner\npack = {pack}\ncache = {cache}\n")
    out = tmp_path / "out"
    out.mkdir()
    tasklist = write_tasklist(tmp_path / "tasks.txt", [f"pack-tool $PROC_NUMBER > {out}/$PROC_NUMBER"] * 3)
    result = run_farmer(tasklist, "-r", "packed", "-n", "2")
    assert result.returncode == 0, result.stderr
    entry = cache_entry(pack, cache)
    assert _outputs(out) == {i: ["pack-tool", str(i), f"prefix={entry}/env"] for i in range(3)}
    assert (entry / UNPACKED_MARKER).is_file()


def test_a_pixi_pack_archive_needs_pixi_unpack(
    tmp_path: Path, taskfarmer_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty-bin'}:/usr/bin:/bin")
    if shutil.which("pixi-unpack") is not None:
        pytest.skip("a real pixi-unpack is on /usr/bin or /bin")
    pack = _pack(tmp_path / "environment.tar", pixi_pack=True)
    _define(taskfarmer_home, f"[packed]\nRunner = PixiRunner\npack = {pack}\ncache = {tmp_path / 'cache'}\n")
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", ["true"]), "-r", "packed")
    assert result.returncode == 2
    assert result.stderr.strip().replace(" [packed]", "") == (
        f"pytaskfarmer: error: The pixi runner needs the 'pixi-unpack' executable to install {pack}, but it is not"
        " on PATH. Install it (pixi global install pixi-unpack), or pick another runner."
    )
    assert not (tmp_path / "tasks.txt_workdir").exists()
    assert not cache_entry(pack, tmp_path / "cache").exists()


def test_a_self_extracting_environment_sh(tmp_path: Path, taskfarmer_home: Path) -> None:
    payload = _pack(tmp_path / "payload.tar", pixi_pack=False)
    record = tmp_path / "sfx.log"
    header = f"""\
        set -euo pipefail
        out=env
        while [ $# -gt 0 ]; do
          case "$1" in
            -o|--output-directory) out=$2; shift 2 ;;
            *) shift ;;
          esac
        done
        scratch=$(mktemp -d)  # as pixi-pack's header: a copy in $TMPDIR that it never removes
        echo "-o $out TMPDIR=$TMPDIR" >> {record}
        mkdir -p "$out"
        sed '1,/^@@END_HEADER@@$/d' "$0" | base64 -d > "$scratch/archive.tar"
        tar -x -C "$out" -f "$scratch/archive.tar"
        exit 0
        @@END_HEADER@@
        """
    import base64  # noqa: PLC0415  # only this test builds a self-extracting script

    sfx = write_script(tmp_path / "environment.sh", header)
    with sfx.open("a") as handle:
        handle.write(base64.b64encode(payload.read_bytes()).decode() + "\n")
    cache = tmp_path / "cache"
    _define(taskfarmer_home, f"[packed]\nRunner = PixiRunner\npack = {sfx}\ncache = {cache}\n")
    out = tmp_path / "out"
    result = run_farmer(write_tasklist(tmp_path / "tasks.txt", [f"pack-tool sfx > {out}"]), "-r", "packed", "-n", "1")
    assert result.returncode == 0, result.stderr
    entry = cache_entry(sfx, cache)
    assert out.read_text().split() == ["pack-tool", "sfx", f"prefix={entry}/env"]
    [call] = lines(record)
    option, target, tmpdir = call.split()
    assert (option, target) == ("-o", str(entry))
    assert Path(tmpdir.removeprefix("TMPDIR=")).parent == cache  # a private TMPDIR in the cache...
    assert sorted(path.name for path in cache.iterdir()) == sorted([entry.name, f"{entry.name}.lock"])  # ...removed


def test_a_task_cannot_run_when_the_environment_cannot_be_entered(
    tmp_path: Path, taskfarmer_home: Path, engine_log: Path
) -> None:
    """Preflight entered it, then the environment vanished: each worker's own entry fails its task, clearly."""
    manifest = _project(tmp_path / "proj", "default")
    runner = PixiRunner(manifest=str(manifest))
    runner.prepare()
    shutil.rmtree(manifest.parent / ".pixi")
    fresh = PixiRunner(manifest=str(manifest), name="ana")
    log = tmp_path / "log"
    with log.open("w") as handle:
        assert fresh.run(0, f"touch {tmp_path / 'ran'}", handle) == 1
    assert not (tmp_path / "ran").exists()
    assert log.read_text().startswith("pytaskfarmer: The pixi runner [ana] cannot enter environment 'default'")
    assert runner.environment()["CONDA_PREFIX"] == str(manifest.parent / ".pixi" / "envs" / "default")


@pytest.mark.parametrize("section", ["analysis", "analysis-packed"])
def test_the_example_definitions_load(taskfarmer_home: Path, section: str) -> None:
    shutil.copy(REPO / "runners.d.example" / "pixi.ini", taskfarmer_home / "runners.d")
    runner, _ = config.build_runner(config.runner_catalog().get(section))
    assert isinstance(runner, PixiRunner)
    assert (runner.manifest is None) == (section == "analysis-packed")
