#!/usr/bin/env python3
"""Run a tasklist with pytaskfarmer (PyTaskFarmer-compatible entry point)."""

from __future__ import annotations

import sys

from taskfarmer.cli import pytaskfarmer_main

if __name__ == "__main__":
    sys.exit(pytaskfarmer_main())
