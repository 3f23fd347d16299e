"""ec2 launcher as Hydra users meet it: the example app with a cluster preset, Hydra's launcher suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra.test_utils.launcher_common_tests import LauncherTestSuite
from omegaconf import OmegaConf

from launcher_core.backends.ec2 import Ec2Settings
from tests.conftest import REPO_ROOT, run_app
from tests.ec2_fixtures import AwsWorld, assert_no_credentials, wait_for

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]


def _override_value(value: Any) -> str:
    """A value in Hydra's override grammar (strings always quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def launcher_overrides(settings: dict[str, Any]) -> list[str]:
    """Command-line overrides; mappings (env, tags) need ``++`` to add keys, as in any Hydra config."""
    return [
        f"{'++' if isinstance(value, dict) else ''}hydra.launcher.{key}={_override_value(value)}"
        for key, value in settings.items()
    ]


@pytest.mark.parametrize("preset", sorted((REPO_ROOT / "conf" / "cluster").glob("ec2_*.yaml")), ids=lambda p: p.stem)
def test_cluster_presets_are_valid_settings(preset: Path) -> None:
    cfg = OmegaConf.load(preset)
    assert list(cfg.defaults) == [{"override /hydra/launcher": "ec2"}, {"override /hydra/sweeper": "paired"}]
    Ec2Settings.from_mapping(cfg.hydra.launcher)


def test_example_app_with_the_spot_preset(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "multirun"
    settings = aws.launcher_settings(jobs_per_instance=2, code_dir=str(REPO_ROOT / "example_app"), setup_commands=[])
    args = [
        "-m",
        f"hydra.searchpath=[file://{REPO_ROOT / 'conf'}]",
        "+cluster=ec2_spot",
        *launcher_overrides(settings),
        "lr=1e-3,1e-2",
        "model=cnn,transformer",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = run_app(REPO_ROOT / "example_app" / "train.py", args, cwd=aws.tmp, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = [json.loads((sweep_dir / str(n) / "metrics.json").read_text()) for n in range(4)]
    assert [(m["model"], m["lr"]) for m in metrics] == [
        ("cnn", 1e-3),
        ("transformer", 1e-3),
        ("cnn", 1e-2),
        ("transformer", 1e-2),
    ]
    assert (sweep_dir / "multirun.yaml").exists()
    instances = aws.instances()
    assert len(instances) == 2  # 4 jobs, 2 per instance
    assert {inst["InstanceLifecycle"] for inst in instances.values()} == {"spot"}  # from the preset
    wait_for(lambda: not aws.running_instances(), 15, "the instances to terminate")
    scanned = assert_no_credentials(aws, proc.stdout, proc.stderr)
    assert scanned > 50


@pytest.fixture(name="launcher_name")
def launcher_name_fixture() -> str:
    return "ec2"


@pytest.fixture(name="overrides")
def overrides_fixture(aws: AwsWorld) -> list[str]:
    return launcher_overrides(aws.launcher_settings(jobs_per_instance=4))


class TestEc2LauncherConformance(LauncherTestSuite):
    """Hydra's own launcher conformance suite, every job through moto and an instance agent."""
