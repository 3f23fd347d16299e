"""``python -m launcher_core.cli ...``: the same as ``launcher-core``."""

import sys

from launcher_core.cli import main

sys.exit(main())
