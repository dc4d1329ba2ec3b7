#!/usr/bin/env python3
"""Run a tasklist with pytaskfarmer (PyTaskFarmer-compatible entry point)."""

from __future__ import annotations

from taskfarmer.cli import pytaskfarmer_program

if __name__ == "__main__":
    pytaskfarmer_program()
