"""``python -m tests.mutation``: run the mutation list and print the table (``--help`` for options)."""

from __future__ import annotations

import sys

from .runner import main

sys.exit(main())
