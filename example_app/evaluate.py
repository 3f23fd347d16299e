"""Second stage of the example pipeline (example_app/pipeline.yaml): "evaluates" one training run.

    launcher-core pipeline run example_app/pipeline.yaml --wait

It reads the metrics.json its training run wrote (``run_dir``: filled in per job by the pipeline
from ``${stage:train,output_dir}``), writes eval.json into its own output dir and returns the score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def evaluate(cfg: DictConfig) -> float:
    trained = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    score = round(1.0 - trained["loss"] * cfg.penalty, 4)
    result = {"trained": trained, "score": score}
    (Path(HydraConfig.get().runtime.output_dir) / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("model=%s seed=%d: loss %.4f -> score %.4f", trained["model"], trained["seed"], trained["loss"], score)
    return score


if __name__ == "__main__":
    evaluate()
