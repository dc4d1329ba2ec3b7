"""The default runner: each task in a shell, in the farmer's own environment."""

from __future__ import annotations

import os
import re
from typing import IO, Final

from taskfarmer import process
from taskfarmer.runners.base import CommandRunner

# A line made only of these characters has no shell syntax at all: no quotes, expansions, globs, redirections,
# operators, comments or assignments. bash would exec such a command itself after parsing it.
_PLAIN: Final = re.compile(r"[A-Za-z0-9_./,:+@%^-]+(?: +[A-Za-z0-9_./,:+@%^=-]+)*")
# Words bash runs itself rather than exec'ing a program (builtins and keywords): these always go through bash.
# Not true and false: /bin/true and /bin/false do exactly what the builtins do.
_BASH_WORDS_TEXT: Final = (
    "alias bg bind break builtin caller case cd command compgen complete compopt continue declare dirs disown do"
    " done echo elif else enable esac eval exec exit export fc fg fi for function getopts hash help history if in"
    " jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly return select set shift"
    " shopt"
    " source suspend test then time times trap type typeset ulimit umask unalias unset until wait while . : coproc"
)
_BASH_WORDS: Final = frozenset(_BASH_WORDS_TEXT.split())


class BasicRunner(CommandRunner):
    """Runs each task line with ``bash -c`` (full shell syntax: pipes, quotes, ``&&``, redirections).

    Always available under the name ``default``. Options: those of :class:`CommandRunner`.
    A line with no shell syntax at all (``prog --seed 5 out.root``) is executed directly, as bash itself does after
    parsing such a line (``bash -c`` execs a lone simple command in place of itself): the program gets the same
    arguments and environment (``$_`` is its path), minus bash's ~1 ms of start-up. When the program cannot be
    executed that way (not found, not executable, a script without ``#!``), the line goes to bash after all, which
    runs it or reports it in its own words and exit status.
    """

    def command(self, script: str) -> list[str]:
        """:returns: ``[shell, "-c", script]``, or the words of a plain command line"""
        if self.shell == "bash" and not self.setup and self.tempdir is None and _is_plain(script):
            return script.split()
        return super().command(script)

    def _start(self, argv: list[str], script: str, *, cwd: str | None, output: IO[str]) -> process.TaskProcess:
        direct = argv[:2] != [self.shell, "-c"]
        if not direct:
            return super()._start(argv, script, cwd=cwd, output=output)
        environment = self.environment()
        program = process.find_program(argv[0], environment)
        if program is None:
            return super()._start(super().command(script), script, cwd=cwd, output=output)  # bash says it
        environment["_"] = program
        try:
            return process.start(argv, cwd=cwd, env=environment, output=output)
        except OSError:
            return super()._start(super().command(script), script, cwd=cwd, output=output)


def _is_plain(line: str) -> bool:
    if _PLAIN.fullmatch(line.strip()) is None:
        return False
    program = line.split(maxsplit=1)[0]
    return program not in _BASH_WORDS and f"BASH_FUNC_{program}%%" not in os.environ
