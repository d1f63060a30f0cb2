"""``python tests/mutation/run.py``: the same as ``python -m tests.mutation``, from any directory."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.mutation`
    from tests.mutation.runner import main

    sys.exit(main())
