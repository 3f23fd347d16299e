"""``python -m launcher_core ...``: the sweep CLI (see :mod:`launcher_core.cli`)."""

import sys

from launcher_core.cli import main

sys.exit(main())
