"""A slurm job's handle: its array task (``<array job id>_<index>``), where its ``.launcher`` dir
is on the cluster's file system, and when it was submitted with which time limit.

Two kinds share the class: a job that is an array task of its own, and a job of a packed task
(``jobs_per_task > 1``: ``packed`` holds the task's number of jobs; its state comes from its own
exit file, the task's from sacct). With ``login_host`` the sweep dir is mirrored on the cluster and
the handle also says where (``login_host`` and the mirror's paths; absent without it).
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher_core.backends.base import JobHandle, RemoteJobPaths, written_with

_LOGIN = "login_host"


@dataclass(frozen=True, kw_only=True)
class SlurmHandle(JobHandle):
    slurm_job_id: str  # <array job id>_<task>, as sacct and scancel name the task
    array_job_id: str
    array_index: int | None = None  # (kw_only: fields keep the JSON's key order, defaults or not)
    chunk_offset: int | None = None  # where its array's chunk starts in the sweep's job list
    launcher_dir: str
    submitted_at: float = 0.0
    timeout_min: int | None = None
    packed: int | None = written_with("packed")  # jobs its packed task runs (None: a task of its own)
    login_host: str | None = written_with(_LOGIN)
    rel: str | None = written_with(_LOGIN)
    remote_sweep_dir: str | None = written_with(_LOGIN)
    remote_job_dir: str | None = written_with(_LOGIN)
    remote_cwd: str | None = written_with(_LOGIN)
    local_cwd: str | None = written_with(_LOGIN)
    local_sweep_dir: str | None = written_with(_LOGIN)

    @property
    def is_packed(self) -> bool:
        """One of several jobs a task runs one after the other."""
        return bool(self.packed)

    def describe(self) -> str | None:
        return self.slurm_job_id or None

    def dependency_task(self) -> str | None:
        """``<array job id>_<index>``, as ``--dependency=aftercorr:...`` names an array task."""
        return None if self.array_index is None else f"{self.array_job_id}_{self.array_index}"

    def remote_paths(self) -> RemoteJobPaths | None:
        if self.login_host is None:  # the jobs wrote into the local sweep dir
            return None
        return RemoteJobPaths(
            remote_sweep_dir=self.remote_sweep_dir,
            remote_job_dir=self.remote_job_dir,
            rel=self.rel,
            remote_cwd=self.remote_cwd,
            local_cwd=self.local_cwd,
            local_sweep_dir=self.local_sweep_dir,
        )
