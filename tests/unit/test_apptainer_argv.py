"""ApptainerRunner and SingularityRunner: the exact argv of every option, and the checks of the options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskfarmer import config
from taskfarmer.runners.apptainer import ApptainerRunner, SingularityRunner, check_bind, is_uri
from taskfarmer.runners.base import TASK_KEY_VARIABLE

SIF = "/images/app.sif"
SCRIPT = "echo $PROC_NUMBER > out"


@pytest.fixture(autouse=True)
def task_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a worker sets before a task, and nothing else of the farmer's (CI sets TASKFARMER_*)."""
    for key in list(os.environ):
        if key.startswith("TASKFARMER_") or key == "PROC_NUMBER":
            monkeypatch.delenv(key)
    monkeypatch.setenv("PROC_NUMBER", "7")
    monkeypatch.setenv("TASKFARMER_TASK_ID", "7")
    monkeypatch.setenv("TASKFARMER_WORKDIR", "/work/dir,with $odd `chars`")


def _argv(runner: ApptainerRunner, script: str = SCRIPT) -> list[str]:
    return runner.command(runner.script(script))


@pytest.mark.parametrize(
    ("options", "middle"),
    [
        ({}, []),
        ({"contain": True}, ["--contain"]),
        ({"nv": True}, ["--nv"]),
        ({"rocm": True}, ["--rocm"]),
        ({"nv": True, "rocm": True, "contain": True}, ["--contain", "--nv", "--rocm"]),
        ({"pwd": "/data"}, ["--pwd", "/data"]),
        ({"binds": ["/scratch"]}, ["--bind", "/scratch"]),
        ({"binds": ["/a:/b", "/c:/d:ro"]}, ["--bind", "/a:/b", "--bind", "/c:/d:ro"]),
        ({"options": ["--writable-tmpfs", "--no-home"]}, ["--writable-tmpfs", "--no-home"]),
        (
            {"contain": True, "pwd": "/w", "binds": ["/x:/w"], "options": ["--no-home"]},
            ["--contain", "--pwd", "/w", "--bind", "/x:/w", "--no-home"],
        ),
    ],
)
def test_exec_options_come_before_the_image(options: dict[str, object], middle: list[str]) -> None:
    runner = ApptainerRunner(image=SIF, executable="apptainer", **options)  # type: ignore[arg-type]
    assert _argv(runner) == ["apptainer", "exec", *middle, SIF, "/bin/bash", "-c", SCRIPT]


def test_quiet_is_a_global_option() -> None:
    runner = ApptainerRunner(image=SIF, executable="apptainer", quiet=True, nv=True)
    assert _argv(runner) == ["apptainer", "--quiet", "exec", "--nv", SIF, "/bin/bash", "-c", SCRIPT]


def test_shell_and_setup() -> None:
    runner = ApptainerRunner(image=SIF, executable="apptainer", shell="/bin/sh", setup="source /opt/env.sh")  # noqa: S604  # a container's shell
    script = f"{{ source /opt/env.sh\n}} || exit $?\n{SCRIPT}"
    assert _argv(runner) == ["apptainer", "exec", SIF, "/bin/sh", "-c", script]


def test_variables_go_through_env_inside_the_container_verbatim() -> None:
    variables = {"B": "a,b", "A": '$HOME `x` "q"'}
    runner = ApptainerRunner(image=SIF, executable="apptainer", variables=variables)
    assert _argv(runner) == ["apptainer", "exec", SIF, "env", "B=a,b", 'A=$HOME `x` "q"', "/bin/bash", "-c", SCRIPT]


def test_cleanenv_passes_the_task_variables_and_the_variables() -> None:
    runner = ApptainerRunner(image=SIF, executable="apptainer", cleanenv=True, variables={"MODE": "fast"})
    assert _argv(runner) == [
        "apptainer",
        "exec",
        "--cleanenv",
        SIF,
        "env",
        "PROC_NUMBER=7",
        "TASKFARMER_TASK_ID=7",
        "TASKFARMER_WORKDIR=/work/dir,with $odd `chars`",
        "MODE=fast",
        "/bin/bash",
        "-c",
        SCRIPT,
    ]


@pytest.mark.parametrize("option", ["-e", "--cleanenv", "-C", "--containall", "--compat"])
def test_cleaning_options_also_pass_the_task_variables(option: str) -> None:
    runner = ApptainerRunner(image=SIF, executable="apptainer", options=[option])
    assert _argv(runner) == [
        "apptainer",
        "exec",
        option,
        SIF,
        "env",
        "PROC_NUMBER=7",
        "TASKFARMER_TASK_ID=7",
        "TASKFARMER_WORKDIR=/work/dir,with $odd `chars`",
        "/bin/bash",
        "-c",
        SCRIPT,
    ]


def test_the_task_key_is_not_in_argv_but_in_the_engine_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The key is set after command(): in argv it would be the previous task's.
    monkeypatch.setenv(TASK_KEY_VARIABLE, "stale")
    runner = ApptainerRunner(image=SIF, executable="apptainer", cleanenv=True)
    assert not any(arg.startswith(TASK_KEY_VARIABLE) for arg in _argv(runner))
    env = runner.environment()
    assert env[f"APPTAINERENV_{TASK_KEY_VARIABLE}"] == env[TASK_KEY_VARIABLE]
    assert f"APPTAINERENV_{TASK_KEY_VARIABLE}" not in ApptainerRunner(image=SIF, executable="apptainer").environment()


def test_singularity_ce_gets_singularityenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text("#!/bin/sh\n")
    (bin_dir / "apptainer").chmod(0o755)
    (bin_dir / "singularity").symlink_to("apptainer")  # Apptainer's own alias
    monkeypatch.setenv("PATH", str(bin_dir))
    key = f"ENV_{TASK_KEY_VARIABLE}"
    assert f"APPTAINER{key}" in SingularityRunner(image=SIF, cleanenv=True).environment()
    (bin_dir / "singularity").unlink()
    (bin_dir / "singularity").write_text("#!/bin/sh\n")  # SingularityCE: a program of its own
    (bin_dir / "singularity").chmod(0o755)
    env = SingularityRunner(image=SIF, cleanenv=True).environment()
    assert f"SINGULARITY{key}" in env
    assert f"APPTAINER{key}" not in env


def test_the_engine_on_path_apptainer_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert _argv(ApptainerRunner(image=SIF))[0] == "apptainer"  # none found: the task says "command not found"
    assert _argv(SingularityRunner(image=SIF))[0] == "singularity"
    (bin_dir / "singularity").write_text("#!/bin/sh\n")
    (bin_dir / "singularity").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:")  # a new PATH: the cached choice is per PATH
    assert _argv(ApptainerRunner(image=SIF))[0] == "singularity"
    (bin_dir / "apptainer").write_text("#!/bin/sh\n")
    (bin_dir / "apptainer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}::")
    assert _argv(ApptainerRunner(image=SIF))[0] == "apptainer"
    assert _argv(SingularityRunner(image=SIF))[0] == "singularity"
    assert _argv(SingularityRunner(image=SIF, executable="/opt/x/apptainer"))[0] == "/opt/x/apptainer"


def test_local_images_become_absolute_uris_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGES", "/store")
    assert ApptainerRunner(image="app.sif").image == str(tmp_path / "app.sif")
    assert ApptainerRunner(image="$IMAGES/app.sif").image == "/store/app.sif"
    assert ApptainerRunner(image="~/app.sif").image == str(Path("~/app.sif").expanduser())
    for uri in ("docker://ubuntu:24.04", "oras://ghcr.io/x/y:1", "library://alpine", "docker-archive:img.tar"):
        assert ApptainerRunner(image=uri).image == uri


@pytest.mark.parametrize(
    ("image", "uri"),
    [("docker://a", True), ("oras://a/b", True), ("oci-archive:x.tar", True), ("x.sif", False), ("d:/x", False)],
)
def test_is_uri(image: str, uri: bool) -> None:
    assert is_uri(image) is uri


def test_binds_are_checked_and_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA", "/big/data")
    assert check_bind("$DATA:/data:ro") == "/big/data:/data:ro"
    assert check_bind("/scratch") == "/scratch"
    for bad in ("", ":/data", "/a:relative", "/a::ro"):
        with pytest.raises(ValueError, match="is not /host/path"):
            check_bind(bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image": "  "}, "image is empty"),
        ({"image": SIF, "binds": ["/a:b"]}, "bind '/a:b'"),
        ({"image": SIF, "pwd": "data"}, "pwd 'data' is not an absolute path"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ApptainerRunner(**options)  # type: ignore[arg-type]


def test_ini_options_arrive_typed(taskfarmer_home: Path) -> None:
    (taskfarmer_home / "runners.d" / "apptainer.ini").write_text(
        f"""[app]
Runner = ApptainerRunner
image = {SIF}
binds = /a:/b "/with space:/c:ro"
cleanenv = true
nv = yes
pwd = /b
shell = /bin/sh
options = --no-home --writable-tmpfs
variables = MODE=fast
executable = apptainer
"""
    )
    runner, _ = config.build_runner(config.runner_catalog().get("app"))
    assert isinstance(runner, ApptainerRunner)
    assert _argv(runner) == [
        "apptainer",
        "exec",
        "--cleanenv",
        "--nv",
        "--pwd",
        "/b",
        "--bind",
        "/a:/b",
        "--bind",
        "/with space:/c:ro",
        "--no-home",
        "--writable-tmpfs",
        SIF,
        "env",
        "PROC_NUMBER=7",
        "TASKFARMER_TASK_ID=7",
        "TASKFARMER_WORKDIR=/work/dir,with $odd `chars`",
        "MODE=fast",
        "/bin/sh",
        "-c",
        SCRIPT,
    ]


def test_singularity_runner_is_shipped(taskfarmer_home: Path) -> None:
    (taskfarmer_home / "runners.d" / "s.ini").write_text(f"[s]\nRunner = SingularityRunner\nimage = {SIF}\n")
    runner, _ = config.build_runner(config.runner_catalog().get("s"))
    assert isinstance(runner, SingularityRunner)
    assert runner.label == "singularity runner [s]"  # the farmer gives the INI name
    assert ApptainerRunner(image=SIF, name="gpu").label == "apptainer runner [gpu]"
