"""A Hydra app whose task behaves according to its config: used by the local_pool tests.

mode=ok        return x * 10 (but raise ValueError naming x if x is in `fail_on`,
               and the file `fail_flag` exists if one is named)
mode=raise     raise ValueError naming x
mode=sleep     sleep `seconds`, then return x
mode=orphan    start a grandchild that writes its PID and would outlive the job
mode=exit      os._exit(code) without a result
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="tasks")
def main(cfg: DictConfig) -> object:
    started = time.time()
    if cfg.mode == "echo":
        return cfg.x
    failing = cfg.x in cfg.fail_on and (not cfg.fail_flag or os.path.exists(cfg.fail_flag))
    if cfg.mode == "raise" or failing:
        raise ValueError(f"bad value x={cfg.x}")
    if cfg.mode == "sleep":
        time.sleep(cfg.seconds)
    if cfg.mode == "orphan":
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            start_new_session=False,
        )
        Path(cfg.pid_file).write_text(str(child.pid))
    if cfg.mode == "exit":
        os._exit(int(cfg.code))
    if cfg.record:
        with open(cfg.record, "a") as f:
            f.write(f"{cfg.x} {started} {time.time()} {os.getpid()}\n")
    return cfg.x * 10


if __name__ == "__main__":
    main()
