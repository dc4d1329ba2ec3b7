r"""How counts, durations and commands are said to the user: ``1 task``, ``2 tasks``, ``3m05s``, ``a\x00b``."""

from __future__ import annotations

from typing import Final


def plural(count: int, noun: str) -> str:
    """:returns: ``1 task``, ``2 tasks`` (*noun* takes an ``s`` unless *count* is 1)"""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_duration(seconds: float | None) -> str:
    """:returns: ``42s``, ``3m05s`` or ``2h07m`` (``?`` when unknown)"""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def id_list(ids: list[int], shown: int = 5) -> str:
    """:returns: ``task 3``, ``tasks 3, 4, 9``, ``tasks 3, 4, 9, 10, 11 and 22 more``"""
    if len(ids) == 1:
        return f"task {ids[0]}"
    listed = ", ".join(str(taskid) for taskid in ids[:shown])
    return f"tasks {listed}" + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def printable(text: str) -> str:
    r""":returns: *text* with its control characters (NUL, escape sequences...; tabs stay) written as ``\xNN``: a
    terminal shows it as it is, and a file of such lines stays text for ``grep``
    """
    return text.translate(_CONTROLS)


_CONTROLS: Final = {code: f"\\x{code:02x}" for code in (*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0))}
