"""The one settings vocabulary end to end on the real services: ``env_vars`` (given on the command
line without ``+``) and ``setup_commands`` reach the jobs on the loopback sshd, the test Slurm
cluster and moto's EC2; the old spellings give the jobs the same and one deprecation line per key.
The rules themselves, local_pool and slurm dry runs: ``tests/test_settings_vocabulary.py``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from launcher_core.settings import NOTES
from tests.conftest import run_app
from tests.ec2_fixtures import AwsWorld, multirun
from tests.slurm_cluster import SlurmCluster, launch_sweep
from tests.sshd import SSHTestEnv, make_project

# the set-up line sees the job variables, and what it exports reaches the job
SSH_SETUP = "HRL_TEST_TOKEN=$HRL_TEST_TOKEN-setup; export HRL_TEST_TOKEN"
SETUP = "export HRL_VOCAB_B=$HRL_VOCAB_A-setup"
NOTE = "hydra.launcher.{old} is deprecated: use hydra.launcher.{new}"


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Notes are given once per process: each in-process launch starts as a new one would."""
    monkeypatch.setattr(NOTES, "given", set())


def notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "launcher_core.settings"]


# --- remote_ssh ---------------------------------------------------------------------------------
def _ssh_launch(env: SSHTestEnv, tmp_path: Path, name: str, *args: str) -> tuple[str, Any]:
    proj = make_project(tmp_path / name)
    sweep = proj / "multirun" / name
    argv = ["-m", "hydra/launcher=remote_ssh", f"hydra.sweep.dir={sweep}", *env.overrides(name), *args, "x=1"]
    proc = run_app(proj / "app.py", argv, cwd=proj, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    with open(sweep / "0" / ".launcher" / "result.pkl", "rb") as f:
        return output, cloudpickle.load(f).return_value


@pytest.mark.ssh
def test_remote_ssh_new_and_old_spellings_reach_the_jobs(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    output, ret = _ssh_launch(
        ssh_env,
        tmp_path,
        "new",
        "hydra.launcher.env_vars.HRL_TEST_TOKEN=new",
        f'hydra.launcher.setup_commands=["{SSH_SETUP}"]',
    )
    assert ret["token"] == "new-setup" and "deprecated" not in output
    output, ret = _ssh_launch(
        ssh_env,
        tmp_path,
        "old",
        "+hydra.launcher.env.vars.HRL_TEST_TOKEN=old",
        f'hydra.launcher.prepare_commands=["{SSH_SETUP}"]',
    )
    assert ret["token"] == "old-setup"
    for old, new in (("env.vars", "env_vars"), ("prepare_commands", "setup_commands")):
        assert output.count(NOTE.format(old=old, new=new)) == 1, output[-3000:]
    assert output.count("deprecated") == 2 and "Traceback" not in output


# --- slurm --------------------------------------------------------------------------------------
def _env_task(cfg: Any) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("HRL_VOCAB_A", "HRL_VOCAB_B")}


def _slurm_overrides(sweep: Path, *extra: str) -> list[str]:
    return [f"hydra.sweep.dir={sweep}", "hydra.launcher.poll_interval_s=0.3", "hydra.launcher.timeout_min=5", *extra]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_slurm_new_and_old_spellings_reach_the_jobs(
    slurm_cluster: SlurmCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="launcher_core.settings"):
        new = _slurm_overrides(
            tmp_path / "new", "hydra.launcher.env_vars.HRL_VOCAB_A=new", f'hydra.launcher.setup_commands=["{SETUP}"]'
        )
        (ret,) = launch_sweep(_env_task, [["+x=0"]], new)
        assert ret.return_value == {"HRL_VOCAB_A": "new", "HRL_VOCAB_B": "new-setup"}
        assert notes(caplog) == []
        old = _slurm_overrides(
            tmp_path / "old", "+hydra.launcher.env.HRL_VOCAB_A=old", f'hydra.launcher.setup=["{SETUP}"]'
        )
        (ret,) = launch_sweep(_env_task, [["+x=0"]], old)
        assert ret.return_value == {"HRL_VOCAB_A": "old", "HRL_VOCAB_B": "old-setup"}
    # hydra-submitit-launcher's `setup` is kept without a note
    assert notes(caplog) == [NOTE.format(old="env", new="env_vars")]


# --- ec2 ----------------------------------------------------------------------------------------
@pytest.mark.ec2
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_ec2_new_and_old_spellings_reach_the_jobs(aws: AwsWorld, caplog: pytest.LogCaptureFixture) -> None:
    names = ["HRL_VOCAB_A", "HRL_VOCAB_B", "HRL_VOCAB_C"]
    with caplog.at_level(logging.WARNING, logger="launcher_core.settings"):
        launcher = aws.launcher_settings(env_vars={"HRL_VOCAB_A": "new"}, setup_commands=[SETUP])
        extra = ["hydra.launcher.env_vars.HRL_VOCAB_C=from-the-command-line", "x=1"]
        (ret,) = multirun(aws.tmp / "new", launcher, extra, mode="env", env_names=names)
        assert ret.return_value == {
            "HRL_VOCAB_A": "new",
            "HRL_VOCAB_B": "new-setup",
            "HRL_VOCAB_C": "from-the-command-line",
        }
        assert notes(caplog) == []
        launcher = aws.launcher_settings(env={"HRL_VOCAB_A": "old"}, setup_commands=[SETUP])
        (ret,) = multirun(aws.tmp / "old", launcher, ["x=1"], mode="env", env_names=names)
        assert ret.return_value == {"HRL_VOCAB_A": "old", "HRL_VOCAB_B": "old-setup", "HRL_VOCAB_C": None}
    assert notes(caplog) == [NOTE.format(old="env", new="env_vars")]
