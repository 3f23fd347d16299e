"""``hydra/launcher=remote_ssh``: its keys and defaults, the one list of them. The Hydra face
registers these dataclasses in Hydra's ConfigStore; ``launcher_core.backends.remote_ssh.settings.RemoteSSHSettings``
derives from them and adds the checks.
Written with ``typing.Optional``/``List``/``Dict`` and without postponed annotations: OmegaConf
reads these types at run time."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from launcher_core.container_schema import ContainerConf


def _default_rsync_excludes() -> List[str]:
    from launcher_core.remote.codesync import DEFAULT_EXCLUDES

    return list(DEFAULT_EXCLUDES)


_PKG = "hydra_plugins.remote_launcher"  # where the Hydra face's launcher classes live


@dataclass
class RemoteSSHEnvConf:
    # how jobs get their Python environment on the host: none | uv | conda
    setup: str = "none"
    # conda: the environment `conda activate` enters, and the conda executable to use
    conda_env: Optional[str] = None
    conda_command: str = "conda"
    # uv: `uv sync` once per code snapshot, jobs run with `uv run --no-sync python`
    uv_command: str = "uv"
    # deprecated spelling of hydra.launcher.env_vars
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
    # how jobs get their Python environment on the host (uv, conda)
    env: RemoteSSHEnvConf = field(default_factory=RemoteSSHEnvConf)
    # environment variables of every job (not stored in the sweep's state file)
    env_vars: Dict[str, str] = field(default_factory=dict)
    # shell lines run on the host in the shell that then starts the jobs (module load ..., source ...)
    setup_commands: List[str] = field(default_factory=list)
    # deprecated spelling of setup_commands (null: not given)
    prepare_commands: Optional[List[str]] = None
    # > 0: CUDA_VISIBLE_DEVICES of the job in slot i is GPUs [i*n, (i+1)*n) (or free GPUs, with gpus)
    gpus_per_job: int = 0
    # GPUs of each host (host entries may override it); set: jobs get free GPU ids, none shared
    gpus: Optional[int] = None
    # per-job resources read from each job's composed config: {gpus_per_job: trainer.gpus}
    resources_from: Dict[str, str] = field(default_factory=dict)
    # with gpus: up to N jobs share one GPU (your choice for small models; 1 = a GPU per job)
    jobs_per_gpu: int = 1
    # with gpus: the host's machine-wide GPU lock dir; null = /tmp/hydra-launcher-gpus
    gpu_lock_dir: Optional[str] = None
    # run each job's Python in a Singularity/Apptainer image on the host (image: a path there)
    container: ContainerConf = field(default_factory=ContainerConf)
    # true: block until every job is done and pulled; false: return once all jobs started
    wait: bool = True
    skip_completed: bool = False
    # run a job again (same id, dir, config and code) when an attempt of it is lost to the machine
    # (node failure, reboot, spot interruption, runner killed); 0 = never. retry_on: [out_of_memory]
    # also retries a job out of memory, with retry_mem_factor times its memory where there is mem_gb
    max_retries: int = 2
    retry_on: List[str] = field(default_factory=list)
    retry_mem_factor: float = 1.5
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
    # the pull daemon stops (and `status` says how to resume) once the backend was unreachable this long
    auto_pull_give_up_h: float = 24.0
    notify: Optional[str] = None
