"""`python -m flotilla ...`"""

from __future__ import annotations

import sys

from flotilla.cli import main

sys.exit(main())
