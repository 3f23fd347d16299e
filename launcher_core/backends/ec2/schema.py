"""``hydra/launcher=ec2``: its keys and defaults, the one list of them. The Hydra face
registers these dataclasses in Hydra's ConfigStore; ``launcher_core.backends.ec2.settings.Ec2Settings``
derives from them and adds the checks.
Written with ``typing.Optional``/``List``/``Dict`` and without postponed annotations: OmegaConf
reads these types at run time."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

_PKG = "hydra_plugins.remote_launcher"  # where the Hydra face's launcher classes live


@dataclass
class Ec2LauncherConf:
    """``hydra/launcher=ec2``; the one list of its keys and defaults:
    ``launcher_core.backends.ec2.settings.Ec2Settings`` derives from it and adds the checks."""

    _target_: str = f"{_PKG}.launchers.Ec2Launcher"
    # required: a Linux AMI whose `python` has hydra-core, omegaconf, cloudpickle and boto3
    ami: Optional[str] = None
    # required: an existing bucket for code, payloads, results and logs
    s3_bucket: Optional[str] = None
    s3_prefix: str = "hydra-remote-launcher"
    # null = boto3's default region (AWS_DEFAULT_REGION, ~/.aws/config)
    region: Optional[str] = None
    instance_type: str = "t3.medium"
    key_name: Optional[str] = None
    # name or ARN; its role needs S3 read/write on the bucket and ec2:TerminateInstances on itself
    iam_instance_profile: Optional[str] = None
    security_group_ids: List[str] = field(default_factory=list)
    subnet_id: Optional[str] = None
    spot: bool = False
    # spot only; null = on-demand price cap
    max_price: Optional[float] = None
    # size of the root volume in GB; null = the AMI's default (at least the AMI's root snapshot)
    root_volume_gb: Optional[int] = None
    # jobs per instance, run in parallel on it
    jobs_per_instance: int = 1
    # at most this many instances per launch; more jobs are queued on them
    max_instances: int = 10
    # hard budget per instance: it powers off (= terminates) after this many minutes whatever happens
    max_runtime_min: float = 720.0
    # shell commands run on the instance before the jobs (install or activate the environment)
    setup_commands: List[str] = field(default_factory=list)
    # environment variables of every job (never credentials: use iam_instance_profile)
    env_vars: Dict[str, str] = field(default_factory=dict)
    # deprecated spelling of env_vars
    env: Dict[str, str] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)
    # S3/EC2-compatible or test endpoint, used here and on the instances
    endpoint_url: Optional[str] = None
    # false: return once the instances started; `python -m launcher_core.pull` collects results
    wait: bool = True
    # Python command on the instance
    python: str = "python3"
    # instance-side root of code, payloads and the sweep dir
    remote_dir: str = "/var/tmp/hydra-remote-launcher"
    # what to ship; null = the current working directory
    code_dir: Optional[str] = None
    # rsync patterns left out on top of launcher_core.remote.codesync.DEFAULT_EXCLUDES, .env and .launcher
    code_excludes: List[str] = field(default_factory=list)
    max_code_mb: float = 200.0
    # how often instances upload new output files; how often the launcher polls
    sync_interval_s: float = 60.0
    poll_interval_s: float = 10.0
    kill_grace_s: float = 20.0
    # EC2 API retries (throttling, InsufficientInstanceCapacity) with exponential backoff
    api_retries: int = 6
    api_retry_base_s: float = 1.0
    skip_completed: bool = False
    # run a job again (same id, dir, config and code) when an attempt of it is lost to the machine
    # (node failure, reboot, spot interruption, runner killed); 0 = never. retry_on: [out_of_memory]
    # also retries a job out of memory, with retry_mem_factor times its memory where there is mem_gb
    max_retries: int = 2
    retry_on: List[str] = field(default_factory=list)
    retry_mem_factor: float = 1.5
    # check credentials, AMI, bucket, instance profile and instance type before launching
    preflight: bool = True
    # with wait=false: start (or join) this sweep's pull daemon at launch; notify: its --notify command
    auto_pull: bool = False
    auto_pull_interval_s: float = 30.0
    # the pull daemon stops (and `status` says how to resume) once the backend was unreachable this long
    auto_pull_give_up_h: float = 24.0
    notify: Optional[str] = None
    # per-job resources read from each job's composed config: {instance_type: a.config.path};
    # jobs are grouped by instance type, each group on instances of its own type
    resources_from: Dict[str, str] = field(default_factory=dict)
