"""``python -m launcher_core.pull``: the pull command, kept under the name users type (the code is
:mod:`launcher_core.collect.pull`)."""

import sys

from launcher_core.collect.pull import main

if __name__ == "__main__":
    sys.exit(main())
