"""The benchmark's old entry point, kept so ``python bench/run.py ARGS`` still works.

It is ``python -m bench ARGS`` (``--case NAME`` included); see bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.__main__ import main

if __name__ == "__main__":
    main()
