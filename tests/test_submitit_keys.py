"""A ``submitit_slurm`` launcher config carries over to ``hydra/launcher=slurm``: every key of
hydra-submitit-launcher 1.2's ``SlurmQueueConf`` is accepted; the ones this launcher does not
use (``submitit_folder``) are ignored with one warning naming the key."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from launcher_core.backends.slurm.options import SlurmOptions
from launcher_core.errors import ConfigError
from tests.conftest import run_app

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "example_app" / "train.py"
FOLDER = "${hydra.sweep.dir}/.submitit/%j"

# hydra-submitit-launcher 1.2.0's SlurmQueueConf (BaseQueueConf included): its keys and defaults
SUBMITIT_1_2 = {
    "submitit_folder": FOLDER,
    "timeout_min": 60,
    "cpus_per_task": None,
    "gpus_per_node": None,
    "tasks_per_node": 1,
    "mem_gb": None,
    "nodes": 1,
    "name": "${hydra.job.name}",
    "stderr_to_stdout": False,
    "partition": None,
    "qos": None,
    "comment": None,
    "constraint": None,
    "exclude": None,
    "gres": None,
    "cpus_per_gpu": None,
    "gpus_per_task": None,
    "mem_per_gpu": None,
    "mem_per_cpu": None,
    "account": None,
    "signal_delay_s": 120,
    "max_num_timeout": 0,
    "additional_parameters": {},
    "array_parallelism": 256,
    "setup": None,
}
WARNING = "hydra.launcher.submitit_folder is ignored (a hydra-submitit-launcher setting)"


def test_the_list_is_hydra_submitit_launchers_own() -> None:
    config = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config")
    fields = {f.name: f for f in dataclasses.fields(config.SlurmQueueConf) if not f.name.startswith("_")}
    assert set(fields) == set(SUBMITIT_1_2)


def test_a_whole_submitit_slurm_config_is_accepted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="launcher_core.slurm"):
        opts = SlurmOptions.from_params(SUBMITIT_1_2)
    assert [r.getMessage() for r in caplog.records] == [
        f"{WARNING}: this launcher keeps its files in the sweep dir's .launcher/slurm/ and each job's .launcher/"
    ]
    assert (opts.setup, opts.timeout_min, opts.signal_delay_s, opts.array_parallelism) == ([], 60, 120, 256)


def test_submitit_keys_we_use_keep_their_meaning() -> None:
    opts = SlurmOptions.from_params({**SUBMITIT_1_2, "setup": ["module load x"], "mem_gb": 4, "partition": "gpu"})
    assert opts.setup == ["module load x"]
    assert opts.sbatch_options()["partition"] == "gpu" and opts.sbatch_options()["mem"] == "4GB"


def test_no_warning_without_submitit_folder(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="launcher_core.slurm"):
        SlurmOptions.from_params({"partition": "cpu"})
    assert caplog.records == []


def test_an_unknown_key_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="hydra.launcher.submitit_foldr is not a setting of the slurm launcher"):
        SlurmOptions.from_params({"submitit_foldr": "x"})


def test_slurm_launch_with_submitit_folder_dry_runs_with_a_warning(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.dry_run=true",
        f"hydra.launcher.submitit_folder={FOLDER}",
        "hydra.launcher.setup=null",
        f"hydra.sweep.dir={sweep}",
        "lr=1e-3,1e-2",
    ]
    proc = run_app(APP, args, tmp_path, 120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert output.count(WARNING) == 1, output[-2000:]
    assert [p.name for p in (sweep / ".launcher" / "slurm").glob("*.sbatch")] == ["jobs0-1.sbatch"]
    assert not (sweep / ".submitit").exists()
