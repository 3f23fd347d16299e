"""Config schemas, registered in Hydra's ConfigStore under ``hydra/launcher`` and
``hydra/sweeper``. Typed dataclasses give users Hydra's own errors for unknown keys and wrong
types; range checks happen in the launchers before anything is launched."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

_PKG = "hydra_plugins.remote_launcher"


@dataclass
class LocalPoolLauncherConf:
    _target_: str = f"{_PKG}.launchers.LocalPoolLauncher"
    # number of jobs running at once; null = number of CPU cores
    n_jobs: Optional[int] = None
    # kill a job (its whole process tree) after this many seconds; null = no limit
    timeout_s: Optional[float] = None
    # seconds between SIGTERM and SIGKILL when a job's process tree is cleaned up
    kill_grace_s: float = 5.0
    # relaunching the same sweep dir reuses results of jobs that completed before
    skip_completed: bool = False


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


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="local_pool", node=LocalPoolLauncherConf, provider="hydra-remote-launcher")
    store.store(group="hydra/sweeper", name="paired", node=PairedSweeperConf, provider="hydra-remote-launcher")


register_configs()
