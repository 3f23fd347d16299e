"""A no-op Hydra app for the launcher benchmark: the task returns immediately.

    python bench/noop_app/app.py -m hydra/launcher=local_pool hydra.launcher.n_jobs=2 x=range(100)

The config (5 config groups plus top-level keys, ~45 leaves) is sized so that composing it costs about
what a small real project's config does; the job itself does nothing, so wall time measures
only the launcher.
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

if os.environ.get("BENCH_TIMINGS_FILE"):  # set by bench_local.py: phase timers, no behaviour change
    import _bench_timing

    _bench_timing.install(os.environ["BENCH_TIMINGS_FILE"])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    return int(cfg.x)


if __name__ == "__main__":
    main()
