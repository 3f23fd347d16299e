"""One settings vocabulary across launchers (docs/launchers.md, "Settings every launcher spells the
same"): ``env_vars`` and ``setup_commands`` mean the same on every launcher that has them, the
earlier spellings still work with one deprecation line per key and launch, both spellings with
different values are refused naming both keys, and ``env_vars`` takes new names on the command line
without ``+``.

Here: the settings of every launcher (no service needed), real local_pool launches of a small app
and slurm dry runs of ``example_app/train.py``. The same keys against the real sshd, Slurm cluster
and moto: ``tests/test_settings_vocabulary_backends.py``."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from launcher_core.backends.ec2.settings import Ec2Settings
from launcher_core.backends.local_pool import local_pool_settings
from launcher_core.backends.remote_ssh.settings import RemoteSSHSettings
from launcher_core.backends.slurm import SlurmOptions
from launcher_core.backends.slurm.sbatch import setup_lines
from launcher_core.errors import ConfigError
from launcher_core.runtime.worker import load_job_return
from launcher_core.settings import NOTES, DeprecationNotes, one_spelling
from tests.conftest import REPO_ROOT, run_app

EXAMPLE = REPO_ROOT / "example_app" / "train.py"
EC2 = {"ami": "ami-0123456789abcdef0", "s3_bucket": "my-sweeps"}
SSH = {"hosts": ["h"]}


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Notes are given once per process: each test starts as a new launch would."""
    monkeypatch.setattr(NOTES, "given", set())


def notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "launcher_core.settings"]


# --- the rule ----------------------------------------------------------------------------------
def test_the_new_key_wins_the_old_one_is_noted_once_and_both_different_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    own = DeprecationNotes()
    with caplog.at_level(logging.WARNING, logger="launcher_core.settings"):
        assert one_spelling("env_vars", {"A": "1"}, "env", {}, notes=own).key == "env_vars"
        assert notes(caplog) == []
        for _ in range(3):  # a launch builds its settings several times: one line
            given = one_spelling("env_vars", {}, "env", {"A": "1"}, notes=own)
        assert (given.key, given.value) == ("env", {"A": "1"})
        assert notes(caplog) == ["hydra.launcher.env is deprecated: use hydra.launcher.env_vars"]
        same = one_spelling("env_vars", {"A": "1"}, "env", {"A": "1"}, notes=own)
        assert same.value == {"A": "1"}
        kept = one_spelling("setup_commands", [], "setup", ["x"], deprecated=False, notes=own)
        assert kept.key == "setup" and len(notes(caplog)) == 1  # another tool's name: no note
    # an old list set empty is given (it clears what a preset sets under the new key: refused, not
    # ignored); an old mapping cannot be told from its {} default (Hydra's `+` adds to mappings only)
    with pytest.raises(ConfigError, match=r"^hydra.launcher.setup and hydra.launcher.setup_commands"):
        one_spelling("setup_commands", ["source v/bin/activate"], "setup", [], deprecated=False, notes=own)
    with pytest.raises(ConfigError) as err:
        one_spelling("env_vars", {"A": "s3cret-new"}, "env", {"A": "s3cret-old"}, notes=own)
    message = str(err.value)
    assert message.startswith("hydra.launcher.env and hydra.launcher.env_vars are the same setting"), message
    assert "s3cret" not in message  # values may be secrets


# --- every launcher's settings -----------------------------------------------------------------
def test_local_pool_takes_env_vars_and_names_the_key_of_a_bad_one() -> None:
    settings = local_pool_settings({"env_vars": {"OMP_NUM_THREADS": 4, "FLAG": True}})
    assert settings.env_vars == {"OMP_NUM_THREADS": "4", "FLAG": "true"}
    with pytest.raises(ConfigError, match=r"^hydra.launcher.env_vars: '1X' is not a valid environment variable"):
        local_pool_settings({"env_vars": {"1X": "a"}})
    for missing in ("setup_commands", "python", "container"):  # what forked jobs cannot have
        with pytest.raises(
            ConfigError, match=rf"^hydra.launcher.{missing} is not a setting of the local_pool launcher"
        ):
            local_pool_settings({missing: None})


def test_remote_ssh_old_and_new_spellings_give_the_same_settings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="launcher_core.settings"):
        new = RemoteSSHSettings.from_mapping({**SSH, "env_vars": {"N": 3}, "setup_commands": ["module load x"]})
        assert notes(caplog) == []
        old = RemoteSSHSettings.from_mapping({**SSH, "env": {"vars": {"N": 3}}, "prepare_commands": ["module load x"]})
    assert (
        (new.env_vars, new.setup_commands) == (old.env_vars, old.setup_commands) == ((("N", "3"),), ("module load x",))
    )
    assert (new.env_vars_key, new.setup_commands_key) == ("env_vars", "setup_commands")
    assert (old.env_vars_key, old.setup_commands_key) == ("env.vars", "prepare_commands")
    assert old.prepare_commands == old.setup_commands  # the attribute's earlier name still reads
    assert notes(caplog) == [
        "hydra.launcher.env.vars is deprecated: use hydra.launcher.env_vars",
        "hydra.launcher.prepare_commands is deprecated: use hydra.launcher.setup_commands",
    ]
    with pytest.raises(ConfigError, match=r"^hydra.launcher.env.vars: 'BAD-NAME' is not a valid"):
        RemoteSSHSettings.from_mapping({**SSH, "env": {"vars": {"BAD-NAME": "x"}}})
    with pytest.raises(ConfigError, match=r"^hydra.launcher.env_vars: 'BAD-NAME' is not a valid"):
        RemoteSSHSettings.from_mapping({**SSH, "env_vars": {"BAD-NAME": "x"}})
    with pytest.raises(ConfigError, match=r"^hydra.launcher.prepare_commands and hydra.launcher.setup_commands"):
        RemoteSSHSettings.from_mapping({**SSH, "prepare_commands": [], "setup_commands": ["b"]})
    with pytest.raises(ConfigError, match=r"^hydra.launcher.env.vars and hydra.launcher.env_vars"):
        RemoteSSHSettings.from_mapping({**SSH, "env": {"vars": {"A": "1"}}, "env_vars": {"A": "2"}})


def test_slurm_old_and_new_spellings_make_the_same_script_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="launcher_core.settings"):
        new = SlurmOptions.from_params({"env_vars": {"A": "1"}, "setup_commands": ["source v/bin/activate"]})
        assert notes(caplog) == []
        old = SlurmOptions.from_params({"env": {"A": "1"}, "setup": ["source v/bin/activate"]})
    assert new.env_vars == old.env_vars == {"A": "1"} and new.job_setup == old.job_setup
    assert notes(caplog) == ["hydra.launcher.env is deprecated: use hydra.launcher.env_vars"]  # setup: submitit's
    # a failing line is named by the key the user wrote
    assert "'hydra.launcher.setup_commands[0]'" in "\n".join(setup_lines(new))
    assert "'hydra.launcher.setup[0]'" in "\n".join(setup_lines(old))
    assert old.setup == ["source v/bin/activate"]  # hydra-submitit-launcher's key keeps its meaning
    with pytest.raises(ConfigError, match=r"^hydra.launcher.env: 'A-B' is not a valid environment variable"):
        SlurmOptions.from_params({"env": {"A-B": "x"}})
    for setup in (["a"], []):
        with pytest.raises(ConfigError, match=r"^hydra.launcher.setup and hydra.launcher.setup_commands"):
            SlurmOptions.from_params({"setup": setup, "setup_commands": ["b"]})
    with pytest.raises(ConfigError, match=r"^hydra.launcher.env and hydra.launcher.env_vars"):
        SlurmOptions.from_params({"env": {"A": "1"}, "env_vars": {"A": "2"}})


def test_ec2_old_and_new_spellings_give_the_same_job_environment(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="launcher_core.settings"):
        new = Ec2Settings.from_mapping({**EC2, "env_vars": {"WANDB_MODE": "offline"}})
        old = Ec2Settings.from_mapping({**EC2, "env": {"WANDB_MODE": "offline"}})
    assert new.env_vars == old.env_vars == {"WANDB_MODE": "offline"}
    assert notes(caplog) == ["hydra.launcher.env is deprecated: use hydra.launcher.env_vars"]
    assert Ec2Settings.from_mapping(old.to_dict()).env_vars == old.env_vars  # round trip, no conflict
    for key, values in (
        ("env", {"env": {"AWS_SECRET_ACCESS_KEY": "x"}}),
        ("env_vars", {"env_vars": {"aws_session_token": "x"}}),
    ):
        with pytest.raises(ConfigError, match=rf"^hydra.launcher.{key}\.\w+: credentials are never shipped"):
            Ec2Settings.from_mapping({**EC2, **values})
    with pytest.raises(ConfigError, match=r"^hydra.launcher.env and hydra.launcher.env_vars"):
        Ec2Settings.from_mapping({**EC2, "env": {"A": "1"}, "env_vars": {"B": "1"}})


def test_stored_configs_of_the_earlier_version_still_rebuild_their_backends(caplog: pytest.LogCaptureFixture) -> None:
    """What ``stored_config()`` wrote into sweeps launched before the rename (it never held job
    variables or set-up lines) rebuilds the backend for pull/status/cancel, without a note."""
    from launcher_core.backends.ec2.backend import from_config as ec2_from_config
    from launcher_core.backends.remote_ssh.backend import from_config as ssh_from_config
    from launcher_core.backends.slurm import from_config as slurm_from_config

    slurm_stored = {
        "poll_interval_s": 5.0,
        "command_timeout_s": 60.0,
        "timeout_min": 60,
        "login_host": None,
        "ssh_config": None,
        "login_setup": ["module load slurm"],
    }
    ssh_stored = {
        "hosts": [{"host": "gpu1", "max_parallel": 2, "remote_dir": None}],
        "ssh_config": None,
        "remote_dir": "/scratch/me",
        "connect_timeout_s": 15.0,
        "command_timeout_s": 120.0,
        "rsync_timeout_s": 900.0,
        "server_alive_interval_s": 10.0,
        "server_alive_count_max": 3,
        "accept_new_host_keys": False,
        "batch_mode": None,
        "control_persist_s": 600,
        "retries": 3,
        "rsync_path": None,
        "poll_interval_s": 2.0,
        "kill_grace_s": 5.0,
        "reconnect_grace_s": 300.0,
    }
    ec2_stored = {
        **EC2,
        "s3_prefix": "sweeps",
        "region": "us-east-1",
        "endpoint_url": None,
        "api_retries": 6,
        "api_retry_base_s": 1.0,
        "poll_interval_s": 10.0,
    }
    with caplog.at_level(logging.WARNING, logger="launcher_core.settings"):
        assert slurm_from_config(slurm_stored).stored_config() == slurm_stored
        rebuilt = ssh_from_config(ssh_stored)
        try:
            assert rebuilt.settings.stored_config() == ssh_stored
        finally:
            rebuilt.close()
        assert ec2_from_config(ec2_stored).settings.stored_config() == ec2_stored
    assert notes(caplog) == []


# --- real launches -----------------------------------------------------------------------------
ENV_APP = """\
import os

import hydra


@hydra.main(version_base="1.3", config_path=None)
def main(cfg):
    return {name: os.environ.get(name) for name in ("HRL_VOCAB_A", "HRL_VOCAB_B")}


if __name__ == "__main__":
    main()
"""
NOTE_ENV_SLURM = "hydra.launcher.env is deprecated: use hydra.launcher.env_vars"


def _env_app(tmp_path: Path) -> Path:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(ENV_APP))
    return app


def _returns(sweep: Path, n: int) -> list[object]:
    return [load_job_return(sweep / str(i) / ".launcher" / "result.pkl").return_value for i in range(n)]


def test_local_pool_jobs_get_env_vars_given_on_the_command_line_without_plus(tmp_path: Path) -> None:
    app, sweep = _env_app(tmp_path), tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=local_pool",
        "hydra.launcher.env_vars.HRL_VOCAB_A=from-the-command-line",
        "hydra.launcher.env_vars.HRL_VOCAB_B=2",
        f"hydra.sweep.dir={sweep}",
        "+x=1,2",
    ]
    proc = run_app(app, args, tmp_path, 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _returns(sweep, 2) == [{"HRL_VOCAB_A": "from-the-command-line", "HRL_VOCAB_B": "2"}] * 2
    assert "deprecated" not in proc.stdout + proc.stderr
    written = (sweep / "multirun.yaml").read_text()
    assert "from-the-command-line" not in written and "REDACTED" in written  # a job variable may be a secret


def test_a_launcher_without_a_concept_refuses_its_key_before_anything_runs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for override, said in (
        ("hydra.launcher.container.image=/i.sif", "Key 'container' not in 'LocalPoolLauncherConf'"),
        ("+hydra.launcher.setup_commands=[true]", "hydra.launcher.setup_commands is not a setting of the local_pool"),
    ):
        proc = run_app(
            EXAMPLE, ["-m", "hydra/launcher=local_pool", override, f"hydra.sweep.dir={sweep}"], tmp_path, 120
        )
        assert proc.returncode != 0 and said in proc.stderr, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and not (sweep / ".launcher").exists()


def _slurm_dry_run(tmp_path: Path, *overrides: str) -> tuple[object, str, str]:
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.dry_run=true",
        *overrides,
        f"hydra.sweep.dir={sweep}",
        "lr=1e-3,1e-2",
    ]
    proc = run_app(EXAMPLE, args, tmp_path, 120)
    scripts = sorted((sweep / ".launcher" / "slurm").glob("*.sbatch")) if (sweep / ".launcher").exists() else []
    return proc, proc.stdout + proc.stderr, scripts[0].read_text() if scripts else ""


def test_slurm_new_keys_reach_the_script_without_plus_or_note(tmp_path: Path) -> None:
    proc, output, script = _slurm_dry_run(
        tmp_path,
        "hydra.launcher.env_vars.HRL_VOCAB_A=bar",
        "hydra.launcher.setup_commands=[echo set-up]",
        "hydra.launcher.container.image=/images/i.sif",
        "hydra.launcher.container.env.HRL_VOCAB_C=inside",  # the container's variables are open too
    )
    assert proc.returncode == 0, output[-3000:]
    assert "export HRL_VOCAB_A=bar" in script and "'hydra.launcher.setup_commands[0]'" in script
    assert "--env HRL_VOCAB_C=inside" in script, script
    assert "deprecated" not in output


def test_slurm_old_keys_still_work_with_one_deprecation_line(tmp_path: Path) -> None:
    proc, output, script = _slurm_dry_run(
        tmp_path, "+hydra.launcher.env.HRL_VOCAB_A=bar", "+hydra.launcher.env.HRL_VOCAB_B=baz"
    )
    assert proc.returncode == 0, output[-3000:]
    assert "export HRL_VOCAB_A=bar" in script and "export HRL_VOCAB_B=baz" in script
    assert output.count(NOTE_ENV_SLURM) == 1 and output.count("deprecated") == 1, output[-3000:]
    assert "Traceback" not in output


def test_both_spellings_with_different_values_stop_the_launch_naming_both(tmp_path: Path) -> None:
    proc, output, script = _slurm_dry_run(
        tmp_path, "+hydra.launcher.env.HRL_VOCAB_A=old", "hydra.launcher.env_vars.HRL_VOCAB_A=new"
    )
    assert proc.returncode != 0 and script == ""
    assert "hydra.launcher.env and hydra.launcher.env_vars are the same setting" in proc.stderr, output[-3000:]
    assert "Traceback" not in output
