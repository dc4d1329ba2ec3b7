"""Stand-ins for engines that cannot run here: ``shifter``, ``pixi`` and ``pixi-unpack`` (see ENGINES.md).

Each fake appends its argv (name, then arguments) as one JSON line to ``$FAKE_ENGINE_LOG``, parses its options
the way the real command line takes them, refuses what the real one refuses, and then does the real thing's
job in a way the tests can see: ``shifter`` changes to its ``--workdir`` and execs what follows ``--``;
``pixi shell-hook --json`` prints the variables of ``<project>/.pixi/envs/<env>``; ``pixi-unpack`` installs
the ``env/`` of a pack into ``DIR/env`` and writes an ``activate.sh`` with absolute paths, as the real one does.
Unlike the real Shifter, the fake runs as root (the tests do).
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

LOG_VARIABLE: Final = "FAKE_ENGINE_LOG"
UNPACK_DELAY_VARIABLE: Final = "FAKE_PIXI_UNPACK_DELAY"

_COMMON: Final = '''
import json, os, sys, time

def log():
    path = os.environ.get("FAKE_ENGINE_LOG")
    if path:
        line = json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

def fail(message, status=1):
    sys.stderr.write(f"{os.path.basename(sys.argv[0])}: {message}\\n")
    sys.exit(status)

def value(args, i, option):
    """The value of an option given as --opt=V, --opt V or -oV / -o V. Returns (value, next index)."""
    arg = args[i]
    if "=" in arg and arg.startswith("--"):
        return arg.split("=", 1)[1], i + 1
    if not arg.startswith("--") and len(arg) > 2:
        return arg[2:], i + 1
    if i + 1 >= len(args):
        fail(f"option {option} needs a value", 2)
    return args[i + 1], i + 2
'''

SHIFTER: Final = (
    _COMMON
    + """
FORBIDDEN = ("/dev", "/etc", "/proc", "/var")
TYPES = ("docker", "custom", "id", "local")
OPTIONS = {"-i": "image", "--image": "image", "-V": "volume", "--volume": "volume", "-m": "module",
           "--module": "module", "-w": "workdir", "--workdir": "workdir", "-e": "env", "--env": "env"}

def parse(args):
    found = {"image": None, "volume": [], "module": None, "workdir": None, "entrypoint": False}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return found, args[i + 1:]
        if arg in ("-h", "--help"):
            print("Usage: shifter [-h|--help] [-v|--verbose] [--image=<imageType>:<imageTag>] "
                  "[--entrypoint] [-V|--volume=/path/to/bind:/mnt/in/image[:<flags>]] [-- /path/to/program args]")
            sys.exit(0)
        if arg == "--entrypoint":
            found["entrypoint"] = True
            i += 1
            continue
        if not arg.startswith("-"):
            return found, args[i:]
        key = OPTIONS.get(arg.split("=", 1)[0] if arg.startswith("--") else arg[:2])
        if key is None:
            fail(f"unrecognized option '{arg}'", 1)
        got, i = value(args, i, arg)
        if key == "volume":
            found["volume"].append(got)
        elif key != "env":  # upstream's -e/--env is a no-op
            found[key] = got
    return found, []

def check(found, command):
    image = found["image"]
    if not image or image.split(":", 1)[0] not in TYPES or ":" not in image:
        fail(f"invalid image request {image!r}: use --image=docker:name:tag")
    for volume in found["volume"]:
        parts = volume.split(":")
        if len(parts) < 2 or not parts[0] or not parts[1].startswith("/"):
            fail(f"invalid volume map {volume!r}")
        if any(parts[1] == top or parts[1].startswith(top + "/") for top in FORBIDDEN):
            fail(f"cannot bind on {parts[1]}")
    if found["module"] is not None and "none" in found["module"].split(",") and found["module"] != "none":
        fail("module 'none' cannot be combined with others")
    if not command:
        fail("no command given")

log()
found, command = parse(sys.argv[1:])
check(found, command)
if found["workdir"] is not None:
    try:
        os.chdir(found["workdir"])
    except OSError as exc:
        fail(f"failed to chdir to {found['workdir']}: {exc.strerror}")
os.environ["FAKE_SHIFTER_IMAGE"] = found["image"]
os.environ["FAKE_SHIFTER_MODULES"] = found["module"] or ""
os.environ["FAKE_SHIFTER_VOLUMES"] = " ".join(found["volume"])
os.execvp(command[0], command)
"""
)

PIXI: Final = (
    _COMMON
    + """
def shell_hook(args):
    manifest, env, json_out, frozen, locked, i = None, "default", False, False, False, 0
    while i < len(args):
        arg = args[i]
        if arg.split("=", 1)[0] in ("--manifest-path", "-m"):
            manifest, i = value(args, i, arg)
        elif arg.split("=", 1)[0] in ("--environment", "-e"):
            env, i = value(args, i, arg)
        elif arg.split("=", 1)[0] in ("--shell", "-s"):
            _, i = value(args, i, arg)
        elif arg in ("--json", "--frozen", "--locked"):
            json_out = json_out or arg == "--json"
            frozen = frozen or arg == "--frozen"
            locked = locked or arg == "--locked"
            i += 1
        else:
            fail(f"unexpected argument '{arg}' found", 2)
    if frozen and locked:
        fail("the argument '--frozen' cannot be used with '--locked'", 2)
    if manifest is None or not os.path.isfile(manifest):
        fail(f"could not find pixi.toml or pyproject.toml at {manifest}")
    prefix = os.path.join(os.path.dirname(os.path.abspath(manifest)), ".pixi", "envs", env)
    if not os.path.isdir(prefix):
        fail(f"unknown environment '{env}'")
    variables = {"PATH": f"{prefix}/bin:{os.environ.get('PATH', '')}", "CONDA_PREFIX": prefix,
                 "PIXI_ENVIRONMENT_NAME": env, "PIXI_PROJECT_MANIFEST": os.path.abspath(manifest)}
    if json_out:
        print(json.dumps({"environment_variables": variables}))
    else:
        for key, val in variables.items():
            print(f"export {key}={val!r}")

log()
args = sys.argv[1:]
if args[:1] in (["--version"], ["-V"]):
    print("pixi 0.50.2")
elif args[:1] == ["shell-hook"]:
    shell_hook(args[1:])
else:
    fail(f"this stand-in does not implement {args[:1]}", 2)
"""
)

PIXI_UNPACK: Final = (
    _COMMON
    + """
import tarfile

def parse(args):
    out, name, pack, i = os.getcwd(), "env", os.path.join(os.getcwd(), "environment.tar"), 0
    while i < len(args):
        arg = args[i]
        if arg.split("=", 1)[0] in ("--output-directory", "-o"):
            out, i = value(args, i, arg)
        elif arg.split("=", 1)[0] in ("--env-name", "-e"):
            name, i = value(args, i, arg)
        elif arg.split("=", 1)[0] in ("--shell", "-s"):
            _, i = value(args, i, arg)
        elif arg in ("-v", "-q", "--verbose", "--quiet"):
            i += 1
        elif arg.startswith("-"):
            fail(f"unexpected argument '{arg}' found", 2)
        else:
            pack, i = arg, i + 1
    return os.path.abspath(out), name, pack

log()
if sys.argv[1:] == ["--version"]:
    print("pixi-unpack 0.7.3")
    sys.exit(0)
out, name, pack = parse(sys.argv[1:])
time.sleep(float(os.environ.get("FAKE_PIXI_UNPACK_DELAY", "0")))
with tarfile.open(pack) as archive:
    names = [member.name.removeprefix("./") for member in archive.getmembers()]
    if "pixi-pack.json" not in names:
        fail("Could not read metadata file: No such file or directory")
    prefix = os.path.join(out, name)
    for member in archive.getmembers():
        member_name = member.name.removeprefix("./")
        if member_name.startswith("env/"):
            member.name = member_name[len("env/"):]
            archive.extract(member, prefix, filter="data")
with open(os.path.join(out, "activate.sh"), "w") as script:
    script.write(f'export PATH="{prefix}/bin:${{PATH}}"\\nexport CONDA_PREFIX="{prefix}"\\n')
sys.stderr.write(f"Finished unpacking to {out}.\\n")
"""
)

FAKES: Final = {"shifter": SHIFTER, "pixi": PIXI, "pixi-unpack": PIXI_UNPACK}


def install_fakes(bin_dir: Path, names: tuple[str, ...] = tuple(FAKES)) -> Path:
    """Write the fake executables *names* into *bin_dir* (created). :returns: *bin_dir*"""
    return install_python_fakes(bin_dir, {name: FAKES[name] for name in names})


def install_python_fakes(bin_dir: Path, sources: dict[str, str]) -> Path:
    """Write each Python *sources* entry as an executable of that name in *bin_dir* (created). :returns: *bin_dir*"""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{source}")
        path.chmod(0o755)
    return bin_dir


def write_script(path: Path, body: str) -> Path:
    """Write an executable shell script (a hanging or failing fake, a tool). :returns: *path*"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def calls(log: Path, name: str | None = None) -> list[list[str]]:
    """:returns: the recorded argv lists (of one fake when *name* is given), in order"""
    if not log.exists():
        return []
    recorded = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [argv for argv in recorded if name is None or argv[0] == name]
