"""``python -m taskfarmer``: the ``taskfarmer`` command."""

from __future__ import annotations

import sys

from taskfarmer.cli import main

sys.exit(main())
