"""Config schemas, registered in Hydra's ConfigStore under ``hydra/launcher`` and
``hydra/sweeper``. Typed dataclasses give users Hydra's own errors for unknown keys and wrong
types; range checks happen in the launchers before anything is launched."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

_PKG = "hydra_plugins.remote_launcher"


def _default_rsync_excludes() -> List[str]:
    from launcher_core.remote.codesync import DEFAULT_EXCLUDES

    return list(DEFAULT_EXCLUDES)


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
    # environment of the jobs (never credentials: use iam_instance_profile)
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
    # check credentials, AMI, bucket, instance profile and instance type before launching
    preflight: bool = True
    # with wait=false: start (or join) this sweep's pull daemon at launch; notify: its --notify command
    auto_pull: bool = False
    auto_pull_interval_s: float = 30.0
    notify: Optional[str] = None
    # per-job resources read from each job's composed config: {instance_type: a.config.path};
    # jobs are grouped by instance type, each group on instances of its own type
    resources_from: Dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerConf:
    """Run the job's Python in a Singularity/Apptainer image (``launcher_core.container``); off while
    ``image`` is null. The code dir and sweep dir are always bound."""

    # path of the image (.sif or sandbox dir) on the machines that run the jobs; null = no container
    image: Optional[str] = None
    # singularity | apptainer
    runtime: str = "singularity"
    # extra binds SRC[:DST[:ro|rw]] (absolute paths)
    binds: List[str] = field(default_factory=list)
    # auto (--nv when GPUs are requested) | true | false
    nv: str = "auto"
    # more arguments for `<runtime> exec`, before the image
    extra_args: List[str] = field(default_factory=list)
    # environment inside the container (--env NAME=VALUE)
    env: Dict[str, str] = field(default_factory=dict)
    # Python command inside the image (needs hydra-core, cloudpickle and this package)
    python: str = "python"


@dataclass
class SlurmArrayLauncherConf:
    """``hydra/launcher=slurm``; the one list of its keys and defaults:
    ``launcher_core.backends.slurm.options.SlurmOptions`` derives from it and adds the checks.
    Names follow hydra-submitit-launcher's ``submitit_slurm``."""

    _target_: str = f"{_PKG}.launchers.SlurmArrayLauncher"
    # hydra-submitit-launcher's folder for its pickles and logs: accepted so a submitit_slurm
    # config carries over, and ignored with a warning (our files live in the sweep's .launcher/)
    submitit_folder: Optional[str] = None
    # maximum time of a job in minutes (sbatch --time)
    timeout_min: int = 60
    cpus_per_task: Optional[int] = None
    gpus_per_node: Optional[int] = None
    tasks_per_node: int = 1
    # memory per node in GB (sbatch --mem)
    mem_gb: Optional[float] = None
    nodes: int = 1
    name: str = "${hydra.job.name}"
    stderr_to_stdout: bool = False
    partition: Optional[str] = None
    qos: Optional[str] = None
    comment: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    gres: Optional[str] = None
    cpus_per_gpu: Optional[int] = None
    gpus_per_task: Optional[int] = None
    mem_per_gpu: Optional[str] = None
    mem_per_cpu: Optional[str] = None
    account: Optional[str] = None
    # SIGUSR2 this many seconds before the time limit: requeue (see max_num_timeout); 0: no signal
    signal_delay_s: int = 120
    # requeues allowed after a timeout; only for tasks that resume from their own checkpoints
    max_num_timeout: int = 0
    # any other sbatch option, e.g. {mail-user: me@example.com, mail-type: END}
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    # at most this many jobs of the sweep run at once
    array_parallelism: int = 256
    # shell lines run in the sbatch script before the job (null, submitit's default: none)
    setup: Optional[List[str]] = field(default_factory=list)
    srun_args: List[str] = field(default_factory=list)
    # run the job through srun inside the allocation (needed for tasks_per_node/nodes > 1)
    use_srun: bool = True
    # `module load` lines of the sbatch script; cuda_module is loaded last
    modules: List[str] = field(default_factory=list)
    cuda_module: Optional[str] = None
    # shell commands run once per launch on the submitting machine (login node), in the code dir
    prepare_commands: List[str] = field(default_factory=list)
    # environment variables of the jobs
    env: Dict[str, str] = field(default_factory=dict)
    container: ContainerConf = field(default_factory=ContainerConf)
    # SSH alias of the login node: code and job files are rsynced there, sbatch/sacct/scancel run
    # there over one SSH connection, results come back with rsync
    login_host: Optional[str] = None
    # with login_host: ssh config file (null = ~/.ssh/config)
    ssh_config: Optional[str] = None
    # with login_host: shell lines run before each Slurm command there (PATH, SLURM_CONF, module load)
    login_setup: List[str] = field(default_factory=list)
    # with login_host: where code snapshots and sweep dirs live (null = ~/hydra-remote-launcher/<code dir name>)
    remote_dir: Optional[str] = None
    # Python on the compute nodes; null = this interpreter (python3 with login_host)
    python: Optional[str] = None
    # write the sbatch scripts into the sweep dir and submit nothing
    dry_run: bool = False
    # false: return once submitted; `python -m launcher_core.pull` collects results
    wait: bool = True
    skip_completed: bool = False
    poll_interval_s: float = 5.0
    # null = MaxArraySize from `scontrol show config`
    max_array_size: Optional[int] = None
    # run this many jobs one after another in each array task, with one Python start-up (for
    # short jobs); "auto" packs about 10 min of expected_job_s per task, keeping array_parallelism
    jobs_per_task: Any = 1
    # how long one job is expected to run, in seconds (for jobs_per_task=auto)
    expected_job_s: Optional[float] = None
    # sbatch --dependency of every array of this launch, e.g. afterok:1234 (a job that can never
    # start because of it is cancelled by Slurm: --kill-on-invalid-dep=yes)
    dependency: Optional[str] = None
    # JSON {job output dir: ["<array id>_<index>", ...]}: the Slurm tasks each job waits for (what
    # `launcher-core pipeline run` writes); aftercorr where array task i needs only task i, else afterok
    dependency_file: Optional[str] = None
    # bound on every sbatch/sacct/squeue/scancel call
    command_timeout_s: float = 60.0
    # check the cluster (partition, account/QoS, MaxArraySize, accounting, Python) before submitting
    preflight: bool = True
    # with wait=false: start (or join) this sweep's pull daemon at launch; notify: its --notify command
    auto_pull: bool = False
    auto_pull_interval_s: float = 30.0
    notify: Optional[str] = None
    # per-job resources read from each job's composed config, e.g. {gpus_per_node: trainer.gpus,
    # mem_gb: trainer.mem_gb, timeout_min: trainer.minutes}; one array per distinct resource set
    resources_from: Dict[str, str] = field(default_factory=dict)
    # a Jinja2 template (extends "hydra_remote_launcher.sbatch.j2") for site lines; docs/slurm.md
    sbatch_template: Optional[str] = None


@dataclass
class RemoteSSHEnvConf:
    # how jobs get their Python environment on the host: none | uv | conda
    setup: str = "none"
    # conda: the environment `conda activate` enters, and the conda executable to use
    conda_env: Optional[str] = None
    conda_command: str = "conda"
    # uv: `uv sync` once per code snapshot, jobs run with `uv run --no-sync python`
    uv_command: str = "uv"
    # environment variables set for every job (not stored in the sweep's state file)
    vars: Dict[str, str] = field(default_factory=dict)


@dataclass
class RemoteSSHLauncherConf:
    _target_: str = f"{_PKG}.launchers.RemoteSSHLauncher"
    # ssh_config aliases or user@host[:port]; or {host: NAME, max_parallel: N, remote_dir: PATH}
    hosts: List[Any] = field(default_factory=list)
    # jobs running at once per host (host entries may override it)
    max_parallel: int = 1
    # OpenSSH client config to use instead of ~/.ssh/config
    ssh_config: Optional[str] = None
    # where code snapshots and outputs live on the hosts; null = ~/hydra-remote-launcher/<code dir name>
    remote_dir: Optional[str] = None
    # the project to ship; null = the directory the app was started from
    code_dir: Optional[str] = None
    # rsync filter rules, includes are checked first (first match wins)
    rsync_include: List[str] = field(default_factory=list)
    # default: launcher_core.remote.codesync.DEFAULT_EXCLUDES (.git, caches, venvs, /data/, /outputs/, ...)
    rsync_exclude: List[str] = field(default_factory=_default_rsync_excludes)
    # extra rsync options for the code sync, e.g. [--compress]
    rsync_args: List[str] = field(default_factory=list)
    # rsync on the host if not on its PATH
    rsync_path: Optional[str] = None
    # command that starts Python on the host (after env setup), e.g. ~/venv/bin/python
    python: str = "python3"
    env: RemoteSSHEnvConf = field(default_factory=RemoteSSHEnvConf)
    # shell commands run on the host before jobs start (module load ..., source ...)
    prepare_commands: List[str] = field(default_factory=list)
    # > 0: CUDA_VISIBLE_DEVICES of the job in slot i is GPUs [i*n, (i+1)*n) (or free GPUs, with gpus)
    gpus_per_job: int = 0
    # GPUs of each host (host entries may override it); set: jobs get free GPU ids, none shared
    gpus: Optional[int] = None
    # per-job resources read from each job's composed config: {gpus_per_job: trainer.gpus}
    resources_from: Dict[str, str] = field(default_factory=dict)
    # run each job's Python in a Singularity/Apptainer image on the host (image: a path there)
    container: ContainerConf = field(default_factory=ContainerConf)
    # true: block until every job is done and pulled; false: return once all jobs started
    wait: bool = True
    skip_completed: bool = False
    poll_interval_s: float = 2.0
    kill_grace_s: float = 5.0
    connect_timeout_s: float = 15.0
    command_timeout_s: float = 120.0
    rsync_timeout_s: float = 900.0
    # bounded retries (with a fresh connection) of a failed ssh/rsync step before giving up
    retries: int = 3
    # while jobs run, a host that cannot be reached is retried (with backoff) this long before the
    # launch gives up (laptops change networks, VPNs drop); the jobs keep running there meanwhile
    reconnect_grace_s: float = 300.0
    server_alive_interval_s: float = 10.0
    server_alive_count_max: int = 3
    control_persist_s: int = 600
    # true: learn the key of a host never seen before (StrictHostKeyChecking=accept-new)
    accept_new_host_keys: bool = False
    # null: ask for passwords / 2FA on the terminal if there is one; true: never ask
    batch_mode: Optional[bool] = None
    # pre-flight: refuse a host with less free disk than this (GB) where remote_dir is
    min_free_gb: float = 1.0
    # check every host (python, packages, rsync, disk, GPUs, container) before submitting
    preflight: bool = True
    # with wait=false: start (or join) this sweep's pull daemon at launch; notify: its --notify command
    auto_pull: bool = False
    auto_pull_interval_s: float = 30.0
    notify: Optional[str] = None


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
