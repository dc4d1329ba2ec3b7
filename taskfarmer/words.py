"""How counts are said to the user: ``1 task``, ``2 tasks``."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """:returns: ``1 task``, ``2 tasks`` (*noun* takes an ``s`` unless *count* is 1)"""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
