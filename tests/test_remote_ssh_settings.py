"""remote_ssh's settings come from RemoteSSHLauncherConf: its defaults, its keys, nothing else."""

from __future__ import annotations

import dataclasses

import pytest

from hydra_plugins.remote_launcher.config import RemoteSSHEnvConf, RemoteSSHLauncherConf
from launcher_core.backends.remote_ssh import RemoteSSHSettings
from launcher_core.errors import ConfigError


def test_defaults_are_the_config_dataclass_defaults() -> None:
    conf = RemoteSSHLauncherConf()
    settings = RemoteSSHSettings.from_mapping({"hosts": ["gpu1"]})
    assert settings.ssh.connect_timeout_s == conf.connect_timeout_s
    assert settings.ssh.retries == conf.retries
    assert settings.ssh.control_persist_s == conf.control_persist_s
    assert settings.rsync_exclude == tuple(conf.rsync_exclude)
    assert settings.poll_interval_s == conf.poll_interval_s
    assert settings.kill_grace_s == conf.kill_grace_s
    assert settings.hosts[0].max_parallel == conf.max_parallel
    assert settings.conda_command == RemoteSSHEnvConf().conda_command


def test_every_config_key_is_accepted() -> None:
    """A mapping of every declared key with its default builds (nothing declared is refused)."""
    values = {f.name: getattr(RemoteSSHLauncherConf(), f.name) for f in dataclasses.fields(RemoteSSHLauncherConf)}
    values["hosts"] = ["gpu1"]
    values["env"] = dataclasses.asdict(RemoteSSHEnvConf())
    values["container"] = None
    assert RemoteSSHSettings.from_mapping(values).hosts[0].address.label == "gpu1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_paralel": 2}, "hydra.launcher.max_paralel is not a setting of the remote_ssh launcher"),
        ({"env": {"setpu": "uv"}}, "hydra.launcher.env.setpu is not a setting of the remote_ssh launcher"),
    ],
)
def test_unknown_keys_are_refused_by_name(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RemoteSSHSettings.from_mapping({"hosts": ["gpu1"], **extra})
