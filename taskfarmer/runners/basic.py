"""The default runner: each task in a shell, in the farmer's own environment."""

from __future__ import annotations

from taskfarmer.runners.base import CommandRunner


class BasicRunner(CommandRunner):
    """Runs each task line with ``bash -c`` (full shell syntax: pipes, quotes, ``&&``, redirections).

    Always available under the name ``default``. Options: those of :class:`CommandRunner`.
    """
