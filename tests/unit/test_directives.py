from __future__ import annotations

import pytest

from taskfarmer.directives import PLAIN, Directive, DirectiveError, split


def test_a_plain_line_has_no_directive() -> None:
    assert split("echo '#taskfarmer' is quoted text") == ("echo '#taskfarmer' is quoted text", PLAIN)
    assert split("root -b -q fit.C") == ("root -b -q fit.C", PLAIN)


def test_a_directive_is_read_and_cut_off() -> None:
    line, directive = split("fit --run 7   #taskfarmer cores=4 gpus=1 memory=8G time=2h runner=root outputs=a{#},b")
    assert line == "fit --run 7"
    assert directive == Directive(
        cores=4,
        gpus=1,
        memory=8 << 30,
        duration=7200.0,
        runner="root",
        outputs=("a{#}", "b"),
        given=frozenset({"cores", "gpus", "memory", "time", "runner", "outputs"}),
    )
    assert directive.output_paths("in/run7.slcio", taskid=3) == ["a3", "b"]
    assert split("#taskfarmer cores=2")[0] == ""


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("cpus=4", "not a directive"),
        ("cores", "not a directive"),
        ("cores=0", "at least 1"),
        ("gpus=-1", "at least 0"),
        ("memory=lots", "size such as 4G"),
        ("time=soon", "duration such as"),
    ],
)
def test_a_bad_directive_says_what_is_wrong(words: str, message: str) -> None:
    with pytest.raises(DirectiveError, match=message):
        split(f"echo #taskfarmer {words}")


def test_output_placeholders_are_those_of_the_template_handler() -> None:
    _, directive = split("x #taskfarmer outputs={.}.root,{/},{//}/log,{/.}.txt,{}")
    assert directive.output_paths("data/run1.slcio", taskid=0) == [
        "data/run1.root",
        "run1.slcio",
        "data/log",
        "run1.txt",
        "data/run1.slcio",
    ]
