"""A tiny "training" script to try hydra-remote-launcher with.

    python example_app/train.py -m hydra/launcher=local_pool lr=1e-3,1e-2
    python example_app/train.py -m hydra/sweeper=paired \
        'hydra.sweeper.paired=[[model,data.aug]]' model=cnn,transformer data.aug=basic,strong seed=0,1
    python example_app/train.py -m +cluster=local lr=1e-3,1e-2

It "trains" for a few steps with a made-up loss, writes metrics.json into the job's output
dir and returns the final loss (which is what Hydra's JobReturn.return_value carries).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def fake_loss(step: int, lr: float, width: int, aug_strength: float, rng: random.Random) -> float:
    """A made-up, deterministic-per-seed loss curve: bigger lr and model learn faster."""
    progress = 1.0 - math.exp(-lr * 100 * (step + 1) * width / 64)
    return (1.0 - progress) * (1.0 + aug_strength) + 0.01 * rng.random()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def train(cfg: DictConfig) -> float:
    rng = random.Random(cfg.seed)
    loss = float("nan")
    for step in range(cfg.steps):
        loss = fake_loss(step, cfg.lr, cfg.model.width, cfg.data.aug_strength, rng)
        if cfg.step_sleep_s:
            time.sleep(cfg.step_sleep_s)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = {"model": cfg.model.name, "aug": cfg.data.aug, "lr": cfg.lr, "seed": cfg.seed, "loss": loss}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("model=%s aug=%s lr=%g seed=%d -> loss %.4f", cfg.model.name, cfg.data.aug, cfg.lr, cfg.seed, loss)
    return loss


if __name__ == "__main__":
    train()
