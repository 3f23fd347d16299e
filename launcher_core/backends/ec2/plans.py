"""What one run of an ec2 sweep sends to its instances: each job's entry in the job table, the
plan of each instance (what its agent runs), the user-data that starts the agent, and the job
handles the state store keeps."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from launcher_core.backends.ec2.handle import Ec2Handle
from launcher_core.backends.ec2.settings import Ec2Settings, setting_key
from launcher_core.backends.ec2.store import S3Store, group_key, job_prefix, markers_prefix
from launcher_core.backends.ec2.userdata import USER_DATA_LIMIT, render_fetch_stub, render_user_data
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobSpec, SweepInfo
from launcher_core.remote.workspace import runtime_cwd

# job entry keys only this machine uses (to localise fetched results); not sent to instances
_LOCAL_ONLY = ("rel", "remote_cwd", "local_cwd")


@dataclass
class RunPlanner:
    """Builds the plans, user-data and handles of one run (one ``submit``) of a sweep, whose code
    snapshot and sweep payload are at ``code_key`` and ``sweep_payload_key``."""

    settings: Ec2Settings
    store: S3Store
    sweep: SweepInfo
    run: str
    code_key: str
    sweep_payload_key: str

    @property
    def base(self) -> str:
        return self.store.base(self.sweep.sweep_id)

    def remote_paths(self, group: str) -> tuple[str, str]:
        """(instance-side sweep dir, workspace of one instance)."""
        root = f"{self.settings.remote_dir.rstrip('/')}/{self.sweep.sweep_id}"
        return f"{root}/sweep", f"{root}/{self.run}-{group}"

    def job_entries(self, groups: Mapping[str, Sequence[JobSpec]]) -> dict[str, dict[str, Any]]:
        """Each job's entry in its instance's job table (the job composes its config from it),
        plus what only this machine uses (:data:`_LOCAL_ONLY`), by job id."""
        entries: dict[str, dict[str, Any]] = {}
        local_cwd: tuple[str | None] | None = None  # hydra.runtime.cwd: the launch dir, the same for every job
        for name, group in groups.items():
            for index, spec in enumerate(group):
                subdir = self._subdir(spec)
                if local_cwd is None:
                    local_cwd = (runtime_cwd(spec.config),)
                    spec.release_config()
                entries[spec.job_id] = self._job_entry(name, index, spec, subdir, local_cwd[0])
        return entries

    def _subdir(self, spec: JobSpec) -> str:
        """The job's output dir relative to the sweep dir; ConfigError when it lies outside."""
        subdir = os.path.relpath(spec.output_dir, self.sweep.sweep_dir)
        if subdir == ".." or subdir.startswith("../") or os.path.isabs(subdir):
            raise ConfigError(
                f"job #{spec.idx}: its output dir {spec.output_dir} is outside the sweep dir "
                f"{self.sweep.sweep_dir}; the ec2 launcher needs hydra.sweep.subdir inside hydra.sweep.dir"
            )
        return subdir

    def _job_entry(self, group: str, index: int, spec: JobSpec, subdir: str, local_cwd: str | None) -> dict[str, Any]:
        from launcher_core.runtime.worker import job_entry

        remote_sweep, workspace = self.remote_paths(group)
        rel = PurePosixPath(*Path(subdir).parts)
        remote_out = f"{remote_sweep}/{rel}"
        code = f"{workspace}/code"
        entry = job_entry(
            spec.idx, spec.overrides, f"{remote_out}/.launcher/result.pkl", remote_sweep, subdir, code, spec.attempt
        )
        return {
            **entry,
            "job_id": spec.job_id,
            "index": index,
            "output_dir": remote_out,
            "out_prefix": f"{job_prefix(self.base, self.run, spec.job_id)}out/",
            # what fetch needs to point the pulled JobReturn at local paths
            "rel": rel.as_posix(),
            "remote_cwd": code,
            "local_cwd": local_cwd,
        }

    def plan(self, group: str, specs: Sequence[JobSpec], entries: Mapping[str, dict[str, Any]]) -> bytes:
        """The plan of one instance: what its agent runs, and the job table of its jobs."""
        s = self.settings
        budget = s.max_runtime_s
        plan = {
            "version": 1,
            "sweep_id": self.sweep.sweep_id,
            "run": self.run,
            "group": group,
            "bucket": self.store.bucket,
            "code_key": self.code_key,
            "sweep_payload_key": self.sweep_payload_key,
            "marker_prefix": markers_prefix(self.base, self.run),
            "log_key": group_key(self.base, self.run, group, "agent.log"),
            "setup_log_key": group_key(self.base, self.run, group, "setup.log"),
            "python": s.python_cmd,
            "slots": s.jobs_per_instance,
            "sync_interval_s": s.sync_interval_s,
            "max_runtime_s": budget,
            # jobs stop this long before the hard power-off, to leave time for the final sync
            "stop_margin_s": min(max(budget * 0.1, 2.0), 300.0, budget / 2),
            "kill_grace_s": s.kill_grace_s,
            "spot_check_s": min(s.sync_interval_s, 5.0),
            "cancel_check_s": min(s.sync_interval_s, 30.0),
            "jobs": [{k: v for k, v in entries[spec.job_id].items() if k not in _LOCAL_ONLY} for spec in specs],
        }
        return json.dumps(plan, separators=(",", ":")).encode()

    def user_data(self, group: str, plan_key: str) -> str:
        """The user-data of one instance: the full script, or, if it is over 16 KB, a stub that
        fetches the full script (uploaded here) from S3."""
        s = self.settings
        bucket, region = self.store.bucket, self.store.aws.region
        _, workspace = self.remote_paths(group)
        common = {
            "sweep_id": self.sweep.sweep_id,
            "run": self.run,
            "group": group,
            "workspace": workspace,
            "python": s.python_cmd,
            "max_runtime_s": s.max_runtime_s,
        }
        bootstrap = {
            "bucket": bucket,
            "plan_key": plan_key,
            "region": region,
            "endpoint_url": s.endpoint_url,
            "workspace": workspace,
        }
        full = render_user_data(
            **common,
            bootstrap=bootstrap,
            env=s.env_vars,
            setup_commands=s.setup_commands,
            payload_needs=self.sweep.payload_needs,
        ).encode()
        self.store.aws.check_no_secrets(full, "the user-data script")
        if len(full) <= USER_DATA_LIMIT:
            return full.decode()
        key = group_key(self.base, self.run, group, "user-data.sh")
        self.store.put(key, full, "the user-data script")
        stub = render_fetch_stub(
            **common, bucket=bucket, key=key, region=region, endpoint_url=s.endpoint_url, full_size=len(full)
        )
        if len(stub.encode()) > USER_DATA_LIMIT:
            raise ConfigError(f"even the user-data fetch stub exceeds 16 KB: shorten {setting_key('python')}")
        return stub

    def handle(
        self, entry: Mapping[str, Any], group: str, instance_id: str, instance_type: str, now: float
    ) -> Ec2Handle:
        """The handle of a job started on ``instance_id`` (kept in the state store)."""
        return Ec2Handle(
            instance_id=instance_id,
            instance_type=instance_type,
            host=instance_id,
            sweep_id=self.sweep.sweep_id,
            run=self.run,
            group=group,
            bucket=self.store.bucket,
            base=self.base,
            out_prefix=entry["out_prefix"],
            launched_at=now,
            remote_job_dir=entry["output_dir"],
            rel=entry["rel"],
            remote_cwd=entry["remote_cwd"],
            local_cwd=entry["local_cwd"],
            local_sweep_dir=str(self.sweep.sweep_dir),
        )
