"""Config schemas registered in Hydra's ConfigStore under ``hydra/launcher`` and ``hydra/sweeper``.

Each launcher's dataclass lives with its backend (``launcher_core/backends/<name>/schema.py``): this
module only registers them, and the sweeper's own. Typed dataclasses give users Hydra's own errors
for unknown keys and wrong types; range checks happen in the launchers before anything is launched."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from launcher_core.backends.ec2.schema import Ec2LauncherConf
from launcher_core.backends.local_pool.schema import LocalPoolLauncherConf
from launcher_core.backends.remote_ssh.schema import RemoteSSHEnvConf, RemoteSSHLauncherConf
from launcher_core.backends.slurm.schema import SlurmArrayLauncherConf
from launcher_core.backends.spill.schema import SpillLauncherConf, SpillTargetConf
from launcher_core.container_schema import ContainerConf

__all__ = [
    "ContainerConf",
    "Ec2LauncherConf",
    "LocalPoolLauncherConf",
    "OPEN_MAPPINGS",
    "PairedSweeperConf",
    "RemoteSSHEnvConf",
    "RemoteSSHLauncherConf",
    "SlurmArrayLauncherConf",
    "SpillLauncherConf",
    "SpillTargetConf",
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


#: mappings of environment variables that take new names from the command line without `+`
#: (``hydra.launcher.env_vars.NAME=value``): Hydra composes in struct mode, which refuses a key a
#: node does not have yet; these nodes are left open (still ``Dict[str, str]``-typed)
OPEN_MAPPINGS = ("env_vars", "container.env")


def launcher_node(schema: type) -> DictConfig:
    """``schema`` as the node Hydra composes, its :data:`OPEN_MAPPINGS` open to new keys."""
    node = OmegaConf.structured(schema)
    for key in OPEN_MAPPINGS:
        child = OmegaConf.select(node, key)
        if isinstance(child, DictConfig):
            OmegaConf.set_struct(child, False)
    return node


def register_configs() -> None:
    store = ConfigStore.instance()
    launchers = {
        "local_pool": LocalPoolLauncherConf,
        "ec2": Ec2LauncherConf,
        "slurm": SlurmArrayLauncherConf,
        "remote_ssh": RemoteSSHLauncherConf,
        "spill": SpillLauncherConf,
    }
    for name, schema in launchers.items():
        store.store(group="hydra/launcher", name=name, node=launcher_node(schema), provider="hydra-remote-launcher")
    store.store(group="hydra/sweeper", name="paired", node=PairedSweeperConf, provider="hydra-remote-launcher")


register_configs()
