"""App for the results/report/link/files tests: a made-up "training" whose outputs are known.

Returns ``{"val": {"acc": ...}, "loss": ...}`` computed from the config, writes metrics.json and
two checkpoint files (``ckpt/epoch1.pt``, ``ckpt/last.pt`` of ``ckpt_kb`` KB), and raises
ValueError for ``model=broken``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def scores(model: str, lr: float, seed: int) -> tuple[float, float]:
    """(val accuracy, loss) as the tests compute them too."""
    acc = round({"cnn": 0.8, "mlp": 0.7}.get(model, 0.5) + lr * 10 + seed / 100, 6)
    return acc, round(1 - acc, 6)


def main(cfg: DictConfig) -> dict:
    out = Path(HydraConfig.get().runtime.output_dir)
    if cfg.model == "broken":
        raise ValueError(f"cannot train model={cfg.model}")
    acc, loss = scores(cfg.model, cfg.lr, cfg.seed)
    (out / "metrics.json").write_text(json.dumps({"epoch": 3, "val_acc": acc, "train": {"loss": loss}}))
    (out / "ckpt").mkdir()
    (out / "ckpt" / "epoch1.pt").write_bytes(b"1" * 100)
    (out / "ckpt" / "last.pt").write_bytes(bytes([cfg.seed % 256]) * (cfg.ckpt_kb * 1024))
    return {"val": {"acc": acc}, "loss": loss}


if __name__ == "__main__":
    # decorated here, not at import: hydra.main sets Hydra's version_base for the whole process,
    # and the tests import this module (for ``scores``) into the process that runs Hydra's suites
    hydra.main(version_base="1.3", config_path="results_conf", config_name="config")(main)()
