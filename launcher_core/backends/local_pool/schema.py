"""``hydra/launcher=local_pool``: its keys and defaults, the one list of them (the Hydra face
registers this dataclass in Hydra's ConfigStore; :func:`~.backend.local_pool_settings` checks it).
Written with ``Optional`` and without postponed annotations: OmegaConf reads these types."""

from dataclasses import dataclass, field
from typing import List, Optional

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
    # run a job again (same id, dir, config and code) when an attempt of it is lost to the machine
    # (node failure, reboot, spot interruption, runner killed); 0 = never. retry_on: [out_of_memory]
    # also retries a job out of memory, with retry_mem_factor times its memory where there is mem_gb
    max_retries: int = 2
    retry_on: List[str] = field(default_factory=list)
    retry_mem_factor: float = 1.5
