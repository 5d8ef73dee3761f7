"""Command line: ``python -m fastsim bench`` and ``python -m fastsim info``."""

from __future__ import annotations

import sys

from ._bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
