"""The exact command lines of the Shifter and Pixi runners (pure: no engine, no process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfarmer.runners.pixi import PixiRunner, cache_entry, unpack_command
from taskfarmer.runners.shifter import ShifterRunner, check_volume, image_reference, module_list

MCC = "gitlab-registry.cern.ch/berkeleylab/muoncollider/muoncollider-docker/mucoll-ilc-framework:1.5.1-centos8"


def test_shifter_minimal_argv() -> None:
    runner = ShifterRunner(image="ubuntu:22.04")
    assert runner.command(runner.script("echo hi")) == [
        "shifter",
        "--image=docker:ubuntu:22.04",
        "--",
        "/bin/bash",
        "-c",
        "echo hi",
    ]


def test_shifter_full_argv_keeps_each_option_one_argument() -> None:
    runner = ShifterRunner(  # noqa: S604  # shell= names the shell inside the image, not a subprocess flag
        image=f"docker:{MCC}",
        setup="source ${HOME}/.bashrc.muc && source ${HOME}/MuonCollider/setup.sh",
        volumes=["/global/cfs/data:/data:ro", "/pscratch/my dir:/scratch"],
        modules=["cvmfs", "gpu"],
        entrypoint=True,
        shell="/bin/sh",
    )
    assert runner.command(runner.script("Marlin steer.xml && echo done")) == [
        "shifter",
        f"--image=docker:{MCC}",
        "-V",
        "/global/cfs/data:/data:ro",
        "-V",
        "/pscratch/my dir:/scratch",
        "--module=cvmfs,gpu",
        "--entrypoint",
        "--",
        "/bin/sh",
        "-c",
        (
            "{ source ${HOME}/.bashrc.muc && source ${HOME}/MuonCollider/setup.sh\n} || exit $?\n"
            "Marlin steer.xml && echo done"
        ),
    ]


def test_shifter_workdir_is_the_running_tasks_temporary_directory(tmp_path: Path) -> None:
    runner = ShifterRunner(image="docker:img:1", modules=["none"], tempdir=str(tmp_path))
    workdir = runner._make_tempdir(3)
    assert workdir is not None
    assert Path(workdir).parent == tmp_path
    assert runner.command("true") == [
        "shifter",
        "--image=docker:img:1",
        "--module=none",
        f"--workdir={workdir}",
        "--",
        "/bin/bash",
        "-c",
        "true",
    ]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("ubuntu", "docker:ubuntu"),
        ("ubuntu:22.04", "docker:ubuntu:22.04"),
        (" docker:ubuntu:22.04 ", "docker:ubuntu:22.04"),
        ("registry.example.org:5000/a/b:1", "docker:registry.example.org:5000/a/b:1"),
        ("custom:my-image", "custom:my-image"),
        ("id:0123abcd", "id:0123abcd"),
    ],
)
def test_image_reference(image: str, expected: str) -> None:
    assert image_reference(image) == expected


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        ([], []),
        (["cvmfs"], ["cvmfs"]),
        (["cvmfs,gpu"], ["cvmfs", "gpu"]),
        (["a,", "b"], ["a", "b"]),
        (["none"], ["none"]),
    ],
)
def test_module_list(modules: list[str], expected: list[str]) -> None:
    assert module_list(modules) == expected


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: image_reference("  "), "the image is empty"),
        (lambda: module_list(["none", "cvmfs"]), "'none' turns every module off"),
        (lambda: check_volume("/data"), "is not /host/path:/container/path"),
        (lambda: check_volume("/data:relative"), "is not /host/path:/container/path"),
        (lambda: check_volume(":/data"), "is not /host/path:/container/path"),
        (lambda: check_volume("/x:/etc/x:ro"), "cannot mount on /etc/x"),
        (lambda: check_volume("/x:/var"), "cannot mount on /var"),
    ],
)
def test_shifter_option_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_shifter_allows_targets_that_only_look_like_forbidden_ones() -> None:
    assert check_volume("/x:/variable:ro") == "/x:/variable:ro"


def test_pixi_project_shell_hook_argv(tmp_path: Path) -> None:
    manifest = tmp_path / "pixi.toml"
    runner = PixiRunner(manifest=str(manifest), environment="prod", frozen=True)
    assert runner.shell_hook_command() == [
        "pixi",
        "shell-hook",
        "--manifest-path",
        str(manifest),
        "-e",
        "prod",
        "--json",
        "--frozen",
    ]
    locked = PixiRunner(manifest=str(manifest), locked=True)
    assert locked.shell_hook_command()[-3:] == ["default", "--json", "--locked"]


def test_pixi_project_task_argv_is_plain_bash(tmp_path: Path) -> None:
    runner = PixiRunner(manifest=str(tmp_path / "pixi.toml"), setup="export A=1")
    assert runner.command(runner.script("python ana.py $PROC_NUMBER")) == [
        "bash",
        "-c",
        "{ export A=1\n} || exit $?\npython ana.py $PROC_NUMBER",
    ]


def test_pixi_packed_task_sources_the_activation_first(tmp_path: Path) -> None:
    runner = PixiRunner(pack=str(tmp_path / "environment.tar"))
    runner._activate_script = Path("/tmp/cache dir/environment-0123/activate.sh")
    assert runner.command(runner.script("tool $PROC_NUMBER")) == [
        "bash",
        "-c",
        "source '/tmp/cache dir/environment-0123/activate.sh' || exit $?\ntool $PROC_NUMBER",
    ]
    runner.setup = "tool --check"
    assert runner.command(runner.script("tool")) == [
        "bash",
        "-c",
        "source '/tmp/cache dir/environment-0123/activate.sh' || exit $?\n{ tool --check\n} || exit $?\ntool",
    ]


def test_pixi_unpack_argv() -> None:
    target = Path("/c/environment-0123")
    assert unpack_command(Path("/p/environment.tar"), target, pixi_unpack=True) == [
        "pixi-unpack",
        "-o",
        "/c/environment-0123",
        "/p/environment.tar",
    ]
    assert unpack_command(Path("/p/environment.tar"), target, pixi_unpack=False) is None
    assert unpack_command(Path("/p/environment.sh"), target, pixi_unpack=False) == [
        "bash",
        "/p/environment.sh",
        "-o",
        "/c/environment-0123",
    ]


def test_pixi_cache_entry_changes_with_the_archive(tmp_path: Path) -> None:
    pack = tmp_path / "environment.tar"
    pack.write_bytes(b"one")
    first = cache_entry(pack, tmp_path / "cache")
    assert first.parent == tmp_path / "cache"
    assert first.name.startswith("environment-")
    assert cache_entry(pack, tmp_path / "cache") == first
    pack.write_bytes(b"other")
    assert cache_entry(pack, tmp_path / "cache") != first


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give either manifest"),
        ({"manifest": "pixi.toml", "pack": "environment.tar"}, "give either manifest"),
        ({"manifest": "pixi.toml", "frozen": True, "locked": True}, "frozen and locked exclude each other"),
    ],
)
def test_pixi_option_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PixiRunner(**options)  # type: ignore[arg-type]
