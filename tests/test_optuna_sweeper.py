"""Hydra's Optuna sweeper through our launchers gives the study Hydra's basic launcher gives (issue 23).

On a small categorical space TPE proposes the same values more than once, also inside one batch
(``n_jobs`` trials are launched together with a growing ``initial_job_idx``). Each proposal is its
own trial: the jobs, their overrides, the values told to Optuna and so the best result must be
exactly those of Hydra's basic launcher, with a fixed sampler seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from launcher_core.runtime.worker import load_job_return
from tests.sshd import SSHTestEnv

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is in the test extra")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

N_TRIALS = 8
N_JOBS = 4

APP = '''\
import hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> float:
    return {"a": 1.0, "b": 2.0, "c": 0.5}[cfg.x] + {"p": 0.1, "q": 0.3}[cfg.y]


if __name__ == "__main__":
    main()
'''
CONFIG = f"""\
defaults:
  - override hydra/sweeper: optuna
x: a
y: p
hydra:
  job:
    chdir: false
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    n_trials: {N_TRIALS}
    n_jobs: {N_JOBS}
    params:
      x: choice(a, b, c)
      y: choice(p, q)
"""


def _study(proj: Path, sweep_dir: Path, launcher: list[str]) -> tuple[list[list[str]], dict]:
    """Run the study; return each trial's overrides (by job number) and optimization_results.yaml."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    argv = [sys.executable, str(proj / "app.py"), "-m", *launcher, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = [yaml.safe_load((sweep_dir / str(n) / ".hydra" / "overrides.yaml").read_text()) for n in range(N_TRIALS)]
    assert not (sweep_dir / str(N_TRIALS)).exists()
    return trials, yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


@pytest.fixture(name="proj")
def proj_fixture(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    (proj / "conf").mkdir(parents=True)
    (proj / "app.py").write_text(APP)
    (proj / "conf" / "config.yaml").write_text(CONFIG)
    return proj


@pytest.fixture(name="basic_study")
def basic_study_fixture(proj: Path, tmp_path: Path) -> tuple[list[list[str]], dict]:
    trials, best = _study(proj, tmp_path / "basic", ["hydra/launcher=basic"])
    batches = [trials[i : i + N_JOBS] for i in range(0, N_TRIALS, N_JOBS)]
    # the point of the test: TPE proposed a config twice within one batch
    assert any(max(Counter(tuple(t) for t in batch).values()) > 1 for batch in batches), trials
    return trials, best


def _check_same_study(sweep_dir: Path, got: tuple[list[list[str]], dict], want: tuple[list[list[str]], dict]) -> None:
    assert got[0] == want[0]  # the same proposals, so the same values were told to Optuna
    assert got[1] == want[1]
    for n, overrides in enumerate(got[0]):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.overrides == overrides
        values = dict(o.split("=", 1) for o in overrides)
        assert ret.return_value == {"a": 1.0, "b": 2.0, "c": 0.5}[values["x"]] + {"p": 0.1, "q": 0.3}[values["y"]]


def test_optuna_study_on_local_pool_equals_the_basic_launchers(
    proj: Path, tmp_path: Path, basic_study: tuple[list[list[str]], dict]
) -> None:
    sweep_dir = tmp_path / "local_pool"
    got = _study(proj, sweep_dir, ["hydra/launcher=local_pool", "hydra.launcher.n_jobs=2"])
    _check_same_study(sweep_dir, got, basic_study)


@pytest.mark.ssh
def test_optuna_study_on_remote_ssh_equals_the_basic_launchers(
    proj: Path, tmp_path: Path, basic_study: tuple[list[list[str]], dict], ssh_env: SSHTestEnv
) -> None:
    sweep_dir = tmp_path / "remote_ssh"
    got = _study(proj, sweep_dir, ["hydra/launcher=remote_ssh", *ssh_env.overrides("optuna", max_parallel=2)])
    _check_same_study(sweep_dir, got, basic_study)
