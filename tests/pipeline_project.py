"""A small project for the pipeline tests: one app that plays every stage.

Each job appends ``<stage> <x> <pid>`` to ``record`` (to count runs), reads its upstream's
``out.txt`` (``upstream``: a job dir, or a sweep dir whose job dirs it all reads), and writes its
own ``out.txt`` (the upstream text, ``>``, its own ``stage:x<tag>``). ``raise_on`` fails a job.
"""

from __future__ import annotations

from pathlib import Path

APP = '''\
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


def read_upstream(path):
    p = Path(path)
    if (p / "out.txt").is_file():
        return (p / "out.txt").read_text()
    parts = sorted(q for q in p.iterdir() if (q / "out.txt").is_file())
    return "[" + "|".join((q / "out.txt").read_text() for q in parts) + "]"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    if cfg.record:
        with open(cfg.record, "a") as f:
            f.write(f"{cfg.stage} {cfg.x} {os.getpid()}\\n")
    time.sleep(cfg.sleep)
    if cfg.x in cfg.raise_on:
        raise ValueError(f"bad x={cfg.x}")
    text = f"{cfg.stage}:{cfg.x}{cfg.tag}"
    if cfg.upstream:
        text = read_upstream(cfg.upstream) + ">" + text
    (out / "out.txt").write_text(text)
    return text


if __name__ == "__main__":
    main()
'''

CONFIG = """\
stage: ""
x: 0
tag: ""
upstream: ""
record: ""
sleep: 0
raise_on: []
hydra:
  job:
    chdir: false
"""


def make_pipeline_project(root: Path) -> Path:
    (root / "conf").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    return root
