"""Tasklist handlers: how a line of the tasklist becomes the command a runner executes (``-t NAME``).

The default handler takes each line as a shell command. :class:`TemplateTaskList` takes each line as an input
(a file name, say) and builds the command from a template, GNU Parallel style::

    [marlin]
    TaskList = TemplateTaskList
    command = Marlin steer.xml --global.LCIOInputFiles={}

Placeholders, each replaced shell-quoted: ``{}`` the line, ``{.}`` without its extension, ``{/}`` its basename,
``{//}`` its directory, ``{/.}`` its basename without extension, ``{#}`` the task ID.
"""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath
from typing import Final

_PLACEHOLDER: Final = re.compile(r"\{(|\.|/|//|/\.|#)\}")


class TaskList:
    """The default handler: a line is a shell command, run as it is."""

    def __init__(self) -> None:
        """Subclasses take their INI options as keyword arguments."""

    def command(self, line: str, *, taskid: int) -> str:
        """:returns: the shell command for the task on *line* (line number *taskid*)"""
        del taskid  # the default handler runs the line as it is
        return line


class TemplateTaskList(TaskList):
    """Each line is an input; the command is *command* with placeholders replaced (see the module docstring).

    :param command: the command template; it must contain at least one placeholder
    """

    def __init__(self, *, command: str) -> None:
        super().__init__()
        if not _PLACEHOLDER.search(command):
            msg = f"the command template {command!r} has no placeholder such as {{}}: every task would be the same"
            raise ValueError(msg)
        self.template = command

    def command(self, line: str, *, taskid: int) -> str:
        """:returns: the template with the placeholders replaced by parts of *line*, shell-quoted"""
        return _PLACEHOLDER.sub(lambda match: shlex.quote(_part(match.group(1), line, taskid)), self.template)


def _part(placeholder: str, line: str, taskid: int) -> str:
    path = PurePosixPath(line)
    without_suffix = line[: -len(path.suffix)] if path.suffix else line
    parts = {
        "": line,
        ".": without_suffix,
        "/": path.name,
        "//": str(path.parent),
        "/.": path.stem,
        "#": str(taskid),
    }
    return parts[placeholder]


SHIPPED: Final[dict[str, str]] = {
    "TaskList": "taskfarmer.tasklist.TaskList",
    "ListTaskList": "taskfarmer.tasklist.TaskList",  # PyTaskFarmer's name for the default
    "TemplateTaskList": "taskfarmer.tasklist.TemplateTaskList",
}
