"""``python -m launcher_core.backends.ec2 cleanup [--terminate]``: see :mod:`.strays`."""

import sys

from launcher_core.backends.ec2.strays import main

sys.exit(main())
