"""``hydra/launcher=slurm``: its keys and defaults, the one list of them. The Hydra face
registers these dataclasses in Hydra's ConfigStore; ``launcher_core.backends.slurm.options.SlurmOptions``
derives from them and adds the checks.
Written with ``typing.Optional``/``List``/``Dict`` and without postponed annotations: OmegaConf
reads these types at run time."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from launcher_core.container_schema import ContainerConf

_PKG = "hydra_plugins.remote_launcher"  # where the Hydra face's launcher classes live


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
    # hydra-submitit-launcher's name of setup_commands (null, submitit's default: not given)
    setup: Optional[List[str]] = None
    srun_args: List[str] = field(default_factory=list)
    # run the job through srun inside the allocation (needed for tasks_per_node/nodes > 1)
    use_srun: bool = True
    # `module load` lines of the sbatch script; cuda_module is loaded last
    modules: List[str] = field(default_factory=list)
    cuda_module: Optional[str] = None
    # shell commands run once per launch on the submitting machine (login node), in the code dir
    prepare_commands: List[str] = field(default_factory=list)
    # shell lines run in the sbatch script before the job (after modules)
    setup_commands: List[str] = field(default_factory=list)
    # environment variables of every job
    env_vars: Dict[str, str] = field(default_factory=dict)
    # deprecated spelling of env_vars
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
    # run a job again (same id, dir, config and code) when an attempt of it is lost to the machine
    # (node failure, reboot, spot interruption, runner killed); 0 = never. retry_on: [out_of_memory]
    # also retries a job out of memory, with retry_mem_factor times its memory where there is mem_gb
    max_retries: int = 2
    retry_on: List[str] = field(default_factory=list)
    retry_mem_factor: float = 1.5
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
    # the pull daemon stops (and `status` says how to resume) once the backend was unreachable this long
    auto_pull_give_up_h: float = 24.0
    notify: Optional[str] = None
    # per-job resources read from each job's composed config, e.g. {gpus_per_node: trainer.gpus,
    # mem_gb: trainer.mem_gb, timeout_min: trainer.minutes}; one array per distinct resource set
    resources_from: Dict[str, str] = field(default_factory=dict)
    # a Jinja2 template (extends "hydra_remote_launcher.sbatch.j2") for site lines; docs/slurm.md
    sbatch_template: Optional[str] = None
