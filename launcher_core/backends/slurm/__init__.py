"""``slurm``: each job of a sweep is one task of a Slurm job array (sbatch scripts rendered here,
batched ``sacct``), optionally submitted from another machine through ``login_host``.

Design: docs/slurm.md (its "Code:" paragraph says which module does what).
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
    RANKS_DIR,
    SLURM_DIR,
    TIMEOUTS_FILE,
    Chunk,
    failed_rank_function,
    job_argv,
    plan_chunks,
    render_argv,
    render_script,
)
from launcher_core.backends.slurm.sites import LocalSite, LoginSite, RemoteSlurmCommands, login_remote_dir

__all__ = [
    "EXIT_FILE",
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
    "expand_job_ids",
    "failed_rank_function",
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
