"""``hydra/launcher=toy`` in Hydra's ConfigStore: the settings dataclass plus its ``_target_``."""

from dataclasses import dataclass

from hrl_toy_backend.settings import ToySettings
from hydra.core.config_store import ConfigStore


@dataclass
class ToyLauncherConf(ToySettings):
    _target_: str = "hydra_plugins.hrl_toy_launcher.launcher.ToyLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="toy", node=ToyLauncherConf, provider="hrl-toy-backend")
