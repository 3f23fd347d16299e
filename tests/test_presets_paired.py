"""Every shipped cluster preset works with the README's paired example command: each selects our
paired sweeper as well as its launcher (a preset that selects only the launcher leaves Hydra's
BasicSweeper in place, and ``hydra.sweeper.paired=...`` fails with "Could not override").

Each preset runs the README's command (``example_app/train.py -m +cluster=<preset> ...``) as a
user would, in a subprocess, with the sweeper's ``dry_run`` so nothing is launched, and is
composed once with ``--cfg hydra`` to check the launcher and sweeper it selects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launcher_core.clusters import shipped_dir
from tests.conftest import run_app

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "example_app" / "train.py"
PRESETS = sorted(p.stem for p in shipped_dir().glob("*.yaml"))
PAIRED = "hydra.sweeper.paired=[[model,data.aug]]"
SWEEP = ["model=cnn,transformer", "data.aug=basic,strong", "lr=1e-3,1e-2"]
LAUNCHERS = {
    "local_pool": "LocalPoolLauncher",
    "remote_ssh": "RemoteSSHLauncher",
    "slurm": "SlurmArrayLauncher",
    "ec2": "Ec2Launcher",
}


def _placeholders(preset: str, tmp_path: Path) -> list[str]:
    """Overrides for a preset's placeholder values that a launch checks on this machine (a user
    replaces them too): slurm_gpu_container's image must exist where sbatch runs."""
    if preset != "slurm_gpu_container":
        return []
    image = tmp_path / "train.sif"
    image.write_bytes(b"")
    return [f"hydra.launcher.container.image={image}"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}  # no personal presets in the way


def composed_hydra(preset: str, tmp_path: Path, *extra: str) -> dict:
    """``hydra`` of the app's config with the preset (one job's values: --cfg refuses -m)."""
    proc = run_app(
        APP,
        [f"+cluster={preset}", PAIRED, "model=cnn", "data.aug=basic", *extra, "--cfg", "hydra"],
        tmp_path,
        120,
        _env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return yaml.safe_load(proc.stdout)["hydra"]


def test_every_shipped_preset_is_checked() -> None:
    assert {"local", "slurm_cpu", "slurm_login", "slurm_gpu_container", "ec2_spot", "ec2_gpu", "ssh_host"} <= set(
        PRESETS
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_readme_paired_command_runs_with_every_preset(preset: str, tmp_path: Path) -> None:
    proc = run_app(
        APP,
        ["-m", f"+cluster={preset}", PAIRED, *SWEEP, "hydra.sweeper.dry_run=true", *_placeholders(preset, tmp_path)],
        tmp_path,
        120,
        _env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = [line.split(":", 1)[1].split() for line in proc.stdout.splitlines() if line.strip().startswith("#")]
    assert jobs == [
        [f"+cluster={preset}", f"lr={lr}", f"model={model}", f"data.aug={aug}"]
        for lr in ("0.001", "0.01")
        for model, aug in (("cnn", "basic"), ("transformer", "strong"))
    ]
    assert not (tmp_path / "multirun").exists()  # a dry run launches and writes nothing


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_selects_its_launcher_and_the_paired_sweeper(preset: str, tmp_path: Path) -> None:
    hydra = composed_hydra(preset, tmp_path)
    declared = yaml.safe_load((shipped_dir() / f"{preset}.yaml").read_text())["defaults"]
    launcher = next(v for entry in declared for k, v in entry.items() if k == "override /hydra/launcher")
    assert hydra["launcher"]["_target_"] == f"hydra_plugins.remote_launcher.launchers.{LAUNCHERS[launcher]}"
    assert hydra["sweeper"]["_target_"] == "hydra_plugins.remote_launcher.sweeper.PairedSweeper"
    assert hydra["sweeper"]["paired"] == [["model", "data.aug"]]


def test_local_preset_sets_no_time_limit(tmp_path: Path) -> None:
    assert composed_hydra("local", tmp_path)["launcher"]["timeout_s"] is None
    limited = composed_hydra("local", tmp_path, "hydra.launcher.timeout_s=3600")  # how a user sets one
    assert limited["launcher"]["timeout_s"] == 3600


def test_local_gpus_preset_is_one_job_per_gpu_without_time_limit(tmp_path: Path) -> None:
    launcher = composed_hydra("local_gpus", tmp_path)["launcher"]
    assert (launcher["gpus"], launcher["gpus_per_job"], launcher["jobs_per_gpu"]) == ("auto", 1, 1)
    assert launcher["timeout_s"] is None and launcher["n_jobs"] is None  # n_jobs null: one per GPU
