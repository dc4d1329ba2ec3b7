from __future__ import annotations

import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from taskfarmer import config
from taskfarmer.errors import ConfigError, UnknownDefinitionError
from taskfarmer.runners import BasicRunner

if TYPE_CHECKING:
    from pathlib import Path


def _ini(home: Path, name: str, text: str) -> Path:
    path = home / "runners.d" / name
    path.write_text(textwrap.dedent(text))
    return path


def test_default_runner_is_always_there() -> None:
    runner, variables = config.build_runner(config.runner_catalog().get("default"))
    assert isinstance(runner, BasicRunner)
    assert variables == {}


def test_unknown_runner_lists_the_defined_ones(taskfarmer_home: Path) -> None:
    _ini(taskfarmer_home, "a.ini", "[gpu]\nRunner = BasicRunner\n")
    with pytest.raises(UnknownDefinitionError, match=r"Unknown runner 'mcc'\. Defined: default, gpu\."):
        config.runner_catalog().get("mcc")


def test_a_broken_file_does_not_stop_another_runner(taskfarmer_home: Path) -> None:
    _ini(taskfarmer_home, "broken.ini", "[oops\nRunner = x\n")
    _ini(taskfarmer_home, "good.ini", "[good]\nRunner = BasicRunner\nsetup = true\n")
    runner, _ = config.build_runner(config.runner_catalog().get("good"))
    assert runner.setup == "true"
    with pytest.raises(UnknownDefinitionError, match=r"broken\.ini"):
        config.runner_catalog().get("missing")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "[x]\nRunner = taskfarmer.runners.DokcerRunner\n",
            r"\[x\] in .*bad\.ini: class 'taskfarmer\.runners\.DokcerRunner' not found\. Shipped: .*BasicRunner",
        ),
        ("[x]\nRunner = no_such_module.Runner\n", r"\[x\] in .*bad\.ini: module 'no_such_module' cannot be imported"),
        ("[x]\nRunner = NotAClass\n", r"'NotAClass' is not module\.Class"),
        (
            "[x]\nRunner = BasicRunner\nsetpu = source a.sh\n",
            r"\[x\] in .*bad\.ini: unknown option 'setpu'\. Valid options: .*setup",
        ),
        ("[x]\nRunner = BasicRunner\ngrace = soon\n", r"option 'grace' = 'soon': not a number"),
        ("[x]\nRunner = collections.OrderedDict\n", r"is not a taskfarmer\.runners\.base\.Runner"),
        (
            "[x]\nRunner = BasicRunner\nvariables = missing.env\n",
            r"option 'variables' = 'missing\.env': no \.env file .*runners\.d/missing\.env",
        ),
    ],
)
def test_bad_definitions_name_file_section_and_key(taskfarmer_home: Path, text: str, pattern: str) -> None:
    _ini(taskfarmer_home, "bad.ini", text)
    with pytest.raises(ConfigError, match=pattern):
        config.build_runner(config.runner_catalog().get("x"))


def test_missing_required_option_and_constructor_errors(
    taskfarmer_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "myrunners.py"
    module.write_text(
        textwrap.dedent(
            """
            from taskfarmer.runners import Runner

            class NeedsImage(Runner):
                def __init__(self, image, setup=''):
                    super().__init__()
                    if image == 'bad':
                        raise ValueError('image must not be bad')
                    self.image = image
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _ini(
        taskfarmer_home,
        "r.ini",
        "[a]\nRunner = myrunners.NeedsImage\n[b]\nRunner = myrunners.NeedsImage\nimage = bad\n",
    )
    with pytest.raises(ConfigError, match=r"\[a\] in .*r\.ini: missing option 'image' \(required by NeedsImage\)"):
        config.build_runner(config.runner_catalog().get("a"))
    with pytest.raises(ConfigError, match=r"Cannot build runner \[b\] .*image must not be bad"):
        config.build_runner(config.runner_catalog().get("b"))
    sys.modules.pop("myrunners", None)


def test_typed_options_and_inline_variables(taskfarmer_home: Path) -> None:
    _ini(
        taskfarmer_home,
        "r.ini",
        """
        [typed]
        Runner = BasicRunner
        grace = 2.5
        tempdir = yes
        variables = A=1
            B="two words"
            C=${A}x
        """,
    )
    runner, extra = config.build_runner(config.runner_catalog().get("typed"))
    assert runner.grace == 2.5
    assert runner.tempdir == ""
    assert runner.variables == {"A": "1", "B": "two words", "C": "1x"}
    assert extra == {}


def test_variables_from_a_dotenv_file_relative_to_the_ini(taskfarmer_home: Path) -> None:
    (taskfarmer_home / "runners.d" / "site.env").write_text("# site\nexport HEP_SITE=nersc\nN=3\n")
    _ini(taskfarmer_home, "r.ini", "[site]\nRunner = BasicRunner\nvariables = site.env\n")
    runner, _ = config.build_runner(config.runner_catalog().get("site"))
    assert runner.variables == {"HEP_SITE": "nersc", "N": "3"}


def test_pytaskfarmer_style_runner_gets_variables_through_the_worker(
    taskfarmer_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "legacyrunners.py").write_text(
        "from taskfarmer.runners import Runner\n"
        "class Legacy(Runner):\n"
        "    def __init__(self, image, modules=''):\n"
        "        super().__init__()\n"
        "        self.image, self.modules = image, modules.split()\n"
        "    def run(self, taskid, command, logfh):\n"
        "        return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _ini(
        taskfarmer_home,
        "r.ini",
        "[old]\nRunner = legacyrunners.Legacy\nimage = centos7\nmodules = cvmfs gpu\nvariables = X=1\n",
    )
    runner, variables = config.build_runner(config.runner_catalog().get("old"))
    assert (runner.image, runner.modules) == ("centos7", ["cvmfs", "gpu"])
    assert variables == {"X": "1"}
    sys.modules.pop("legacyrunners", None)


def test_later_files_override_earlier_definitions(taskfarmer_home: Path) -> None:
    _ini(taskfarmer_home, "10-site.ini", "[x]\nRunner = BasicRunner\nsetup = echo site\n")
    _ini(taskfarmer_home, "20-mine.ini", "[x]\nRunner = BasicRunner\nsetup = echo mine\n")
    definition = config.runner_catalog().get("x")
    assert definition.options["setup"] == "echo mine"
    assert definition.source.endswith("20-mine.ini")


def test_tasklist_handlers_are_read_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "handlers.ini").write_text(
        "[marlin]\nTaskList = TemplateTaskList\ncommand = Marlin steer.xml --in={}\n"
    )
    handler = config.build_tasklist(config.tasklist_catalog().get("marlin"))
    assert handler.command("/data/file one.slcio", taskid=3) == "Marlin steer.xml --in='/data/file one.slcio'"
