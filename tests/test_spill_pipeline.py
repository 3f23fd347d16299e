"""A pipeline whose stages run on the spill launcher (issue 27): every stage's jobs spread over two
local_pool targets of a project preset, each job runs once, each downstream job reads its own
upstream job, and ``status``/``results`` name the target each job ran on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher_core import results as res
from tests.pipeline_project import EXPECTED_RUNS, check_outputs, make_pipeline_project, pipeline_yaml, runs

TARGET = """\
# @package _global_
defaults:
  - override /hydra/launcher: local_pool
hydra:
  launcher:
    n_jobs: 4
"""
SPILL = """\
# @package _global_
defaults:
  - override /hydra/launcher: spill
hydra:
  launcher:
    targets:
      - {cluster: first, max_jobs: 1}
      - {cluster: second, max_jobs: 2}
"""


def _project(tmp_path: Path) -> tuple[Path, Path]:
    proj = make_pipeline_project(tmp_path / "proj")
    presets = proj / "conf" / "cluster"
    presets.mkdir(parents=True)
    (presets / "first.yaml").write_text(TARGET)
    (presets / "second.yaml").write_text(TARGET)
    (presets / "both.yaml").write_text(SPILL)
    record = tmp_path / "record.txt"
    file = proj / "pipeline.yaml"
    file.write_text(pipeline_yaml(record, [], cluster="both", sleep=1.0))
    return file, record


@pytest.mark.slow
def test_pipeline_stages_run_on_the_spill_launcher(tmp_path: Path) -> None:
    file, record = _project(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-m", "launcher_core", "pipeline", "run", str(file), "--wait"],
        cwd=file.parent,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # pretrain #1 fails on purpose, finetune #1 is blocked
    assert runs(record) == EXPECTED_RUNS  # each job once, the blocked one never
    check_outputs(file.parent / "runs" / "pl")

    pretrain = res.load(file.parent / "runs" / "pl" / "pretrain")
    where = {row.num: row.where for row in pretrain}
    assert where[0] == "first"  # the first target's one slot
    assert where[1] == "second" and where[2] == "second"  # the rest spill over
    assert all(row.host and row.host.startswith(f"{row.where}/") for row in pretrain)
