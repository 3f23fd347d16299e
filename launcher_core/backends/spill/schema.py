"""``hydra/launcher=spill``: one sweep over several targets (cluster presets), filled in order.
Written with ``Optional`` and without postponed annotations: OmegaConf reads these types."""

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

_PKG = "hydra_plugins.remote_launcher"  # where the Hydra face's launcher classes live


@dataclass
class SpillTargetConf:
    # a cluster preset (project conf/cluster/, personal, or shipped): what +cluster=NAME would use
    cluster: str = MISSING
    # jobs of this sweep on the target at once (queued there or running)
    max_jobs: int = MISSING
    # the target's name in status, results and report (default: the preset's name)
    name: Optional[str] = None
    # settings of the preset changed for this sweep, as `cluster test` takes them: ["partition=gpu"]
    overrides: List[str] = field(default_factory=list)
    # queueing targets (slurm, ec2): a job not started this many minutes after it was placed is
    # taken back and placed on the next target with a free slot; null = it waits
    max_queue_wait_min: Optional[float] = None
    # ec2: stop placing jobs on this target once its machines cost this much (USD)
    max_cost_usd: Optional[float] = None
    # ec2: the price of one instance-hour (USD); null = the spot price history, where AWS gives one
    price_per_hour_usd: Optional[float] = None


@dataclass
class SpillLauncherConf:
    _target_: str = f"{_PKG}.launchers.SpillLauncher"
    # in order: each job goes to the first target with a free slot
    targets: List[SpillTargetConf] = field(default_factory=list)
    # false: a target whose pre-flight or start-up fails is skipped with a warning; true: refused
    require_all: bool = False
    # a job lost to its target's machine (node failure, spot reclaim) runs again on the next target
    # with a free slot instead of its own
    retry_elsewhere: bool = False
    # seconds between polls of the local targets (each target keeps its own poll_interval_s)
    poll_interval_s: float = 1.0
    # relaunching the same sweep dir reuses results of jobs that completed before
    skip_completed: bool = False
    # check every target before anything is submitted
    preflight: bool = True
    # run a job again when an attempt of it is lost to the machine; 0 = never (see local_pool)
    max_retries: int = 2
    retry_on: List[str] = field(default_factory=list)
    retry_mem_factor: float = 1.5
