"""``slurm``: each job of a sweep is one task of a Slurm job array (design: docs/slurm.md)."""

from launcher_core.backends.slurm.backend import (
    EXIT_FILE,
    JOB_PAYLOAD_FILE,
    TIMEOUTS_FILE,
    SlurmBackend,
    SlurmOptions,
    _failed_rank_function,
    expand_job_ids,
    from_config,
    job_argv,
    login_remote_dir,
    parse_sacct,
    parse_squeue,
    plan_chunks,
    render_script,
)

__all__ = [
    "EXIT_FILE",
    "JOB_PAYLOAD_FILE",
    "TIMEOUTS_FILE",
    "SlurmBackend",
    "SlurmOptions",
    "_failed_rank_function",
    "expand_job_ids",
    "from_config",
    "job_argv",
    "login_remote_dir",
    "parse_sacct",
    "parse_squeue",
    "plan_chunks",
    "render_script",
]
