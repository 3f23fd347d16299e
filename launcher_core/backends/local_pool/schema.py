"""``hydra/launcher=local_pool``: its keys and defaults, the one list of them (the Hydra face
registers this dataclass in Hydra's ConfigStore; :func:`~.backend.local_pool_settings` checks it).
Written with ``Optional`` and without postponed annotations: OmegaConf reads these types."""

from dataclasses import dataclass, field
from typing import Dict, Optional

_PKG = "hydra_plugins.remote_launcher"  # where the Hydra face's launcher classes live


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
    # environment variables of every job, set in its process before the task runs
    env_vars: Dict[str, str] = field(default_factory=dict)
