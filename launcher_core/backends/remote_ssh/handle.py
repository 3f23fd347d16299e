"""A remote_ssh job's handle: its host, its dirs there (the remote dir, the mirrored sweep dir, the
job dir and its ``.launcher`` dir with the pid and exit files), the batch whose runner started it,
and where its result's paths point here."""

from __future__ import annotations

from dataclasses import dataclass

from launcher_core.backends.base import JobHandle, RemoteJobPaths


@dataclass(frozen=True, kw_only=True)
class RemoteSSHHandle(JobHandle):
    host: str  # the host's label, as the user wrote it
    remote_dir: str
    remote_sweep_dir: str
    remote_job_dir: str
    rel: str  # the job's subdir of the sweep dir
    launcher_dir: str
    pid_file: str
    exit_file: str
    runner_pid_file: str  # the batch runner's, which started the job
    batch: str
    remote_cwd: str  # the code snapshot the job runs in
    local_cwd: str | None
    local_sweep_dir: str

    def host_label(self) -> str | None:
        return self.host

    def remote_paths(self) -> RemoteJobPaths:
        return RemoteJobPaths(
            remote_sweep_dir=self.remote_sweep_dir,
            remote_job_dir=self.remote_job_dir,
            rel=self.rel,
            remote_dir=self.remote_dir,
            remote_cwd=self.remote_cwd,
            local_cwd=self.local_cwd,
            local_sweep_dir=self.local_sweep_dir,
        )
