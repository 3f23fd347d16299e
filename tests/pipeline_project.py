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


def pipeline_yaml(record: Path, launcher: list[str], *, cluster: str | None = None, sleep: float = 0.5) -> str:
    """Three stages: pretrain (x=0,1,2; x=1 fails) -> finetune (paired x/tag, reads its pretrain
    job) -> evaluate (x=0,2, reads its finetune job). ``launcher``: overrides every stage gets."""
    import json

    common = [f"record={record}", f"sleep={sleep}", *launcher]
    stages = {
        "pretrain": {"app": "app.py", "overrides": ["stage=pretrain", "x=0,1,2", "raise_on=[1]", *common]},
        "finetune": {
            "app": "app.py",
            "needs": ["pretrain"],
            "paired": [["x", "tag"]],
            "overrides": ["stage=finetune", "x=0,1,2", "tag=a,b,c", "upstream=${stage:pretrain,output_dir}", *common],
        },
        "evaluate": {
            "app": "app.py",
            "needs": ["finetune"],
            "overrides": ["stage=evaluate", "x=0,2", "upstream=${stage:finetune,output_dir}", *common],
        },
    }
    data: dict = {"dir": "runs/pl", "stages": stages}
    if cluster:
        data["cluster"] = cluster
    return json.dumps(data, indent=1)  # JSON is YAML


def runs(record: Path) -> dict[tuple[str, int], int]:
    """How many times each (stage, x) ran."""
    counts: dict[tuple[str, int], int] = {}
    for line in record.read_text().splitlines() if record.exists() else []:
        stage, x, _pid = line.split()
        counts[(stage, int(x))] = counts.get((stage, int(x)), 0) + 1
    return counts


EXPECTED_RUNS = {
    ("pretrain", 0): 1,
    ("pretrain", 1): 1,
    ("pretrain", 2): 1,
    ("finetune", 0): 1,
    ("finetune", 2): 1,
    ("evaluate", 0): 1,
    ("evaluate", 2): 1,
}


def check_outputs(pipeline_dir: Path) -> None:
    """Each evaluate job read its finetune job, which read its pretrain job (matched on x)."""
    assert (pipeline_dir / "evaluate" / "0" / "out.txt").read_text() == "pretrain:0>finetune:0a>evaluate:0"
    assert (pipeline_dir / "evaluate" / "1" / "out.txt").read_text() == "pretrain:2>finetune:2c>evaluate:2"
    assert not (pipeline_dir / "finetune" / "1" / "out.txt").exists()  # blocked: never ran
