"""Config schemas registered in Hydra's ConfigStore under ``hydra/launcher`` and ``hydra/sweeper``.

Each launcher's dataclass lives with its backend (``launcher_core/backends/<name>/schema.py``): this
module only registers them, and the sweeper's own. Typed dataclasses give users Hydra's own errors
for unknown keys and wrong types; range checks happen in the launchers before anything is launched."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from launcher_core.backends.ec2.schema import Ec2LauncherConf
from launcher_core.backends.local_pool.schema import LocalPoolLauncherConf
from launcher_core.backends.remote_ssh.schema import RemoteSSHEnvConf, RemoteSSHLauncherConf
from launcher_core.backends.slurm.schema import SlurmArrayLauncherConf
from launcher_core.container_schema import ContainerConf

__all__ = [
    "ContainerConf",
    "Ec2LauncherConf",
    "LocalPoolLauncherConf",
    "PairedSweeperConf",
    "RemoteSSHEnvConf",
    "RemoteSSHLauncherConf",
    "SlurmArrayLauncherConf",
    "register_configs",
]

_PKG = "hydra_plugins.remote_launcher"


@dataclass
class PairedSweeperConf:
    _target_: str = f"{_PKG}.sweeper.PairedSweeper"
    max_batch_size: Optional[int] = None
    # like BasicSweeper: key -> sweep string, e.g. {lr: "0.1,0.01"}
    params: Optional[Dict[str, str]] = None
    # groups of keys that advance together (zip); each is {key: [values] or "a,b"} or [keys]
    paired: List[Any] = field(default_factory=list)
    # print the numbered job list and launch nothing
    dry_run: bool = False
    # JSON file listing every job instead of a sweep: [[override, ...], ...] or
    # [{"overrides": [...], "num": N}, ...] (N: the job's number, dir and id; see launcher_core.sweep)
    jobs_file: Optional[str] = None


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="local_pool", node=LocalPoolLauncherConf, provider="hydra-remote-launcher")
    store.store(group="hydra/launcher", name="ec2", node=Ec2LauncherConf, provider="hydra-remote-launcher")
    store.store(group="hydra/launcher", name="slurm", node=SlurmArrayLauncherConf, provider="hydra-remote-launcher")
    store.store(group="hydra/launcher", name="remote_ssh", node=RemoteSSHLauncherConf, provider="hydra-remote-launcher")
    store.store(group="hydra/sweeper", name="paired", node=PairedSweeperConf, provider="hydra-remote-launcher")


register_configs()
