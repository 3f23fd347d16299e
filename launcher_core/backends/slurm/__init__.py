"""``slurm``: each job of a sweep is one task of a Slurm job array, run from sbatch scripts rendered
here, polled with batched ``sacct``; with ``login_host``, submitted from another machine over SSH.

:mod:`.options` checks the settings, :mod:`.sbatch` renders the scripts, :mod:`.accounting` asks
Slurm, :mod:`.sites` is where the cluster is (this machine, or a login node over SSH) and
:mod:`.backend` is the backend. Design: docs/slurm.md; why not submitit's executor: README,
"Design choices".
"""

from launcher_core.backends.slurm.accounting import (
    ExitInfo,
    SlurmAccounting,
    SlurmCommands,
    SlurmRecord,
    expand_job_ids,
    parse_sacct,
    parse_squeue,
    read_max_array_size,
)
from launcher_core.backends.slurm.backend import DryRunResult, SlurmBackend, from_config
from launcher_core.backends.slurm.options import SlurmOptions
from launcher_core.backends.slurm.sbatch import (
    EXIT_FILE,
    JOB_PAYLOAD_FILE,
    RANKS_DIR,
    SLURM_DIR,
    TIMEOUTS_FILE,
    Chunk,
    _failed_rank_function,
    job_argv,
    plan_chunks,
    render_argv,
    render_script,
)
from launcher_core.backends.slurm.sites import LocalSite, LoginSite, RemoteSlurmCommands, login_remote_dir

__all__ = [
    "EXIT_FILE",
    "JOB_PAYLOAD_FILE",
    "RANKS_DIR",
    "SLURM_DIR",
    "TIMEOUTS_FILE",
    "Chunk",
    "DryRunResult",
    "ExitInfo",
    "LocalSite",
    "LoginSite",
    "RemoteSlurmCommands",
    "SlurmAccounting",
    "SlurmBackend",
    "SlurmCommands",
    "SlurmOptions",
    "SlurmRecord",
    "_failed_rank_function",
    "expand_job_ids",
    "from_config",
    "job_argv",
    "login_remote_dir",
    "parse_sacct",
    "parse_squeue",
    "plan_chunks",
    "read_max_array_size",
    "render_argv",
    "render_script",
]
