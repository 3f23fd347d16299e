"""An ec2 job's handle: the instance that runs it, its sweep's run and instance group, the S3
bucket and prefixes its markers, logs and output dir go to, and where its result's paths point."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher_core.backends.base import JobHandle, RemoteJobPaths


@dataclass(frozen=True, kw_only=True)
class Ec2Handle(JobHandle):
    instance_id: str
    instance_type: str
    host: str  # the instance id: the state store's host
    sweep_id: str
    run: str  # one submit of the sweep
    group: str  # the instance group of the run the job is in
    bucket: str
    base: str  # the sweep's S3 prefix
    out_prefix: str  # the job's output dir in S3
    launched_at: float = 0.0
    remote_job_dir: str | None = None
    rel: str | None = None
    remote_cwd: str | None = None
    local_cwd: str | None = None
    local_sweep_dir: str | None = None

    @staticmethod
    def instance_of(stored: Mapping[str, Any]) -> str | None:
        """The instance a stored handle names, read from its JSON even when the rest is missing:
        finding stray instances must never take one that runs a job for a stray."""
        value = stored.get("instance_id")
        return str(value) if value else None

    def host_label(self) -> str | None:
        return self.host

    def describe(self) -> str | None:
        return self.instance_id or None

    def remote_paths(self) -> RemoteJobPaths:
        return RemoteJobPaths(
            remote_job_dir=self.remote_job_dir,
            rel=self.rel,
            remote_cwd=self.remote_cwd,
            local_cwd=self.local_cwd,
            local_sweep_dir=self.local_sweep_dir,
        )
