"""`python -m localcluster build|up|down|status` (run with e2e/ on sys.path)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
