"""Job entry point where jobs run (``python -m launcher_core.runtime.remote_worker ARGS``).

Exactly :func:`launcher_core.runtime.worker.main`, under the name the backends' scripts, batch
files and instance agents have always called. The sweep payload names no Hydra plugin (see
:mod:`launcher_core.runtime.payload`), so a host needs only hydra-core, omegaconf, cloudpickle
and the task's own imports.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from launcher_core.runtime.worker import main as worker_main

    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(main())
