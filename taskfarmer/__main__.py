"""``python -m taskfarmer``: the ``taskfarmer`` command."""

from __future__ import annotations

from taskfarmer.cli import taskfarmer_program

taskfarmer_program()
