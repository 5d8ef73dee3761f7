"""Command line: ``python -m fastsim bench | info | train | dedup | make-pairs``."""

from __future__ import annotations

import sys

from ._bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
