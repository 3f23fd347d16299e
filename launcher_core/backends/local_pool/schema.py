"""``hydra/launcher=local_pool``: its keys and defaults, the one list of them (the Hydra face
registers this dataclass in Hydra's ConfigStore; :func:`~.backend.local_pool_settings` checks it).
Written with ``Optional`` and without postponed annotations: OmegaConf reads these types."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

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
    # GPUs the jobs share out: null = none handed out (every job sees every GPU); auto = all that
    # nvidia-smi -L lists; a count N = GPUs 0..N-1; a list = those ids. Locks are machine-wide.
    gpus: Optional[Any] = None
    # with gpus: GPUs each job gets (0: a job that sees no GPU)
    gpus_per_job: int = 1
    # per-job resources read from each job's composed config: {gpus_per_job: trainer.gpus}
    resources_from: Dict[str, str] = field(default_factory=dict)
    # with gpus: up to N jobs share one GPU (your choice for small models; 1 = a GPU per job)
    jobs_per_gpu: int = 1
    # with gpus: the machine-wide GPU lock dir; null = /tmp/hydra-launcher-gpus
    gpu_lock_dir: Optional[str] = None
    # run a job again (same id, dir, config and code) when an attempt of it is lost to the machine
    # (node failure, reboot, spot interruption, runner killed); 0 = never. retry_on: [out_of_memory]
    # also retries a job out of memory, with retry_mem_factor times its memory where there is mem_gb
    max_retries: int = 2
    retry_on: List[str] = field(default_factory=list)
    retry_mem_factor: float = 1.5
