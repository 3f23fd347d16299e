"""App for sweeper tests: returns the values of the keys it was swept over."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf_grid", config_name="config")
def main(cfg: DictConfig) -> dict:
    return {"a": cfg.a, "b": cfg.b, "c": cfg.c, "m": cfg.m, "n": cfg.n, "model": cfg.model.name}


if __name__ == "__main__":
    main()
