"""The ec2 backend: prepare uploads, RunInstances per group of jobs, poll, fetch, cancel and
clean through EC2 and S3."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Backend, CleanReport, CleanRequest
from launcher_core.backends.ec2.aws import (
    ENDED_INSTANCE_STATES,
    RETRYABLE_CODES,
    TAG_GROUP,
    TAG_RUN,
    TAG_SWEEP,
    AwsApiError,
    api_error_text,
    quiet_aws_loggers,
    root_volume_mapping,
)
from launcher_core.backends.ec2.placement import new_run_id, plan_typed_groups
from launcher_core.backends.ec2.settings import Ec2Settings, setting_key
from launcher_core.backends.ec2.snapshot import build_snapshot, sha256_file, snapshot_filter
from launcher_core.errors import BackendError, ConfigError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, JobSpec, JobState, JobStatus, PullFilter, SweepInfo

if TYPE_CHECKING:
    from launcher_core.preflight import Check, PreflightRequest
from launcher_core.remote.codesync import RsyncFilter
from launcher_core.remote.workspace import runtime_cwd

log = logging.getLogger("launcher_core.ec2")

# An instance may be missing from DescribeInstances right after RunInstances (eventual consistency).
NOT_FOUND_GRACE_S = 300.0
# job entry keys only this machine uses (to localise fetched results); not sent to instances
_LOCAL_ONLY = ("rel", "remote_cwd", "local_cwd")


class Ec2Backend(Backend):
    """Runs jobs on EC2 instances; the flow and the S3 layout: docs/ec2.md."""

    name = "ec2"
    detached = True  # instances keep running without us; a relaunch re-attaches to them
    poll_interval_s = 10.0

    def __init__(
        self,
        settings: Ec2Settings,
        *,
        task_function: Any = None,
        hydra_context: Any = None,
        session: Any = None,
    ) -> None:
        self.settings = settings
        self.poll_interval_s = float(settings.poll_interval_s)
        self._task_function = task_function
        self._hydra_context = hydra_context
        self._session = session
        self._ec2: Any = None
        self._s3: Any = None
        self._secrets: list[bytes] | None = None
        self._sweep: SweepInfo | None = None
        self._snapshot_key: str | None = None
        self._sweep_payload_key: str | None = None
        self._block_devices: list[dict[str, Any]] = []
        self._reasons: dict[str, str] = {}
        self._types_in_use: list[str] | None = None  # instance types the jobs of this launch need

    def stored_config(self) -> dict[str, Any]:
        """The settings :func:`from_config` rebuilds this backend from (kept in the state store):
        only what polling, fetching, cancelling and cleaning need, never ``env`` values or
        ``setup_commands`` (:meth:`Ec2Settings.stored_config`).

        Refuses settings holding the active credentials (anywhere, ``env`` and ``setup_commands``
        included: they go to the instances), before anything writes them anywhere.
        """
        everything = json.dumps(self.settings.to_dict()).encode()
        self.check_no_secrets(everything, "hydra.launcher (env, setup_commands, python, tags)")
        return self.settings.stored_config()

    # --- AWS plumbing ---------------------------------------------------------------------
    def _connect(self) -> None:
        if self._ec2 is not None:
            return
        import boto3
        from botocore.config import Config

        quiet_aws_loggers()
        session = self._session or boto3.session.Session(region_name=self.settings.region)
        if not session.region_name:
            raise ConfigError(
                f"{setting_key('region')} is not set and boto3 has no default region "
                "(AWS_DEFAULT_REGION or ~/.aws/config)"
            )
        self._session = session
        endpoint = self.settings.endpoint_url or None
        # EC2 calls are retried by _ec2_call (with ClientToken idempotency), not by botocore.
        ec2_cfg = Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60)
        s3_cfg = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=120)
        self._ec2 = session.client("ec2", endpoint_url=endpoint, config=ec2_cfg)
        self._s3 = session.client("s3", endpoint_url=endpoint, config=s3_cfg)

    @property
    def region(self) -> str:
        self._connect()
        return str(self._session.region_name)

    def _ec2_call(self, operation: str, **kwargs: Any) -> Any:
        """Call EC2, retrying throttling and capacity errors with exponential backoff and jitter."""
        from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

        self._connect()
        attempts = self.settings.api_retries
        for attempt in range(1, attempts + 1):
            try:
                return getattr(self._ec2, operation)(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "Unknown")
                message = exc.response.get("Error", {}).get("Message", str(exc))
                if code not in RETRYABLE_CODES or attempt == attempts:
                    raise AwsApiError(api_error_text(operation, code, message, attempt), code) from exc
                log.warning("EC2 %s: %s (attempt %d of %d); retrying", operation, code, attempt, attempts)
            except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
                if attempt == attempts:
                    raise AwsApiError(f"EC2 {operation} failed after {attempt} attempts: {exc}") from exc
                log.warning("EC2 %s: %s (attempt %d of %d); retrying", operation, exc, attempt, attempts)
            delay = min(self.settings.api_retry_base_s * 2 ** (attempt - 1), 30.0)
            time.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _credential_strings(self) -> list[bytes]:
        if self._secrets is None:
            self._connect()
            creds = self._session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds is not None else None
            values = (frozen.access_key, frozen.secret_key, frozen.token) if frozen else ()
            self._secrets = [v.encode() for v in values if v and len(v) >= 8]
        return self._secrets

    def check_no_secrets(self, data: bytes, what: str) -> None:
        """Refuse to ship ``data`` if it contains the active AWS credentials."""
        for secret in self._credential_strings():
            if secret in data:
                raise ConfigError(
                    f"{what} contains your AWS credentials; refusing to upload it. Instances get access "
                    f"through {setting_key('iam_instance_profile')}, never through copied keys."
                )

    def _put(self, key: str, data: bytes, what: str) -> None:
        self.check_no_secrets(data, what)
        self._s3.put_object(Bucket=self.settings.s3_bucket, Key=key, Body=data)

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.settings.s3_bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _base(self, sweep_id: str) -> str:
        prefix = self.settings.s3_prefix.strip("/")
        return f"{prefix}/{sweep_id}" if prefix else sweep_id

    # --- contract: prepare ------------------------------------------------------------------
    def prepare(self, sweep: SweepInfo) -> None:
        """Check bucket, AMI and settings, then upload the code snapshot and the sweep payload.

        Everything is built and checked for credentials before the first upload, so a refusal
        leaves nothing behind. Uploads are content-addressed: a relaunch uploads nothing new.
        """
        self._connect()
        self._sweep = sweep
        self._check_bucket()
        self._block_devices = root_volume_mapping(self._check_ami(), self.settings.root_volume_gb)
        self.stored_config()  # refuses settings that hold credentials
        self._sweep_payload()  # refuses a payload that holds credentials before any upload
        base = self._base(sweep.sweep_id)
        with tempfile.TemporaryDirectory(prefix="hrl-ec2-") as tmp:
            archive = Path(tmp) / "snapshot.tar.gz"
            code_dir, count = self._build_snapshot(sweep, archive)
            self._snapshot_key = f"{base}/snapshot-{sha256_file(archive)[:16]}.tar.gz"
            if not self._exists(self._snapshot_key):
                self._s3.upload_file(str(archive), self._bucket, self._snapshot_key)
                log.info("uploaded the code snapshot of %s (%d files) to s3://%s", code_dir, count, self._bucket)

    def _upload_sweep_payload(self, base: str) -> None:
        """The sweep payload as of now (content-addressed: a batch that brought new config
        templates gets a new one, a relaunch uploads nothing new)."""
        payload = self._sweep_payload()
        self._sweep_payload_key = f"{base}/sweep-{hashlib.sha256(payload).hexdigest()[:16]}.pkl"
        if not self._exists(self._sweep_payload_key):
            self._put(self._sweep_payload_key, payload, "the sweep payload")

    def preflight(self, request: PreflightRequest) -> list[Check]:
        """Credentials, AMI, bucket (a write), instance profile and instance type, before
        anything is uploaded: :mod:`.preflight`."""
        from launcher_core.backends.ec2.preflight import preflight

        return preflight(self, request)

    def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_bucket(Bucket=self.settings.s3_bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise ConfigError(
                f"{setting_key('s3_bucket')}={self.settings.s3_bucket!r} cannot be used ({code or exc}): create the "
                "bucket or fix the name; this machine and the instance role need read/write access to it"
            ) from exc

    def _check_ami(self) -> dict[str, Any]:
        """The AMI's description (DescribeImages); ConfigError if it does not exist here."""
        try:
            images = self._ec2_call("describe_images", ImageIds=[self.settings.ami]).get("Images", [])
        except AwsApiError as exc:
            if not str(exc.code).startswith("InvalidAMIID"):
                raise ConfigError(f"{setting_key('ami')}={self.settings.ami!r}: {exc}") from exc
            images = []
        if not images:
            raise ConfigError(f"{setting_key('ami')}={self.settings.ami!r} does not exist in region {self.region}")
        return dict(images[0])

    def _build_snapshot(self, sweep: SweepInfo, archive: Path) -> tuple[Path, int]:
        code_dir = Path(self.settings.code_dir).expanduser().resolve() if self.settings.code_dir else sweep.code_dir
        count = build_snapshot(
            Path(code_dir),
            archive,
            code_filter=snapshot_filter(Path(code_dir), sweep.sweep_dir, self.settings.code_excludes),
            max_bytes=int(self.settings.max_code_mb * 2**20),
            check=self.check_no_secrets,
        )
        return Path(code_dir), count

    @property
    def _bucket(self) -> str:
        return str(self.settings.s3_bucket)

    def _sweep_payload(self) -> bytes:
        from launcher_core.backends.base import sweep_payload_for

        if self._task_function is None:
            raise BackendError(
                "this ec2 backend was rebuilt from a stored config: it can poll, fetch and cancel, not launch"
            )
        assert self._sweep is not None
        data = sweep_payload_for(self._sweep, self._task_function)
        self.check_no_secrets(data, "the sweep payload (task function, Hydra config and context)")
        return data

    # --- per-job resources ------------------------------------------------------------------
    def resolve_resources(self, specs: Sequence[JobSpec]) -> None:
        """``resources_from.instance_type``: each job's instance type from its config (checked to
        look like one; whether the region offers it is the pre-flight's question)."""
        from launcher_core.backends.ec2.settings import RESOURCES
        from launcher_core.resources import read_job_resources

        read_job_resources(specs, self.settings.resources_from, RESOURCES)
        self._types_in_use = sorted({self._type_of(spec) for spec in specs})

    def _type_of(self, spec: JobSpec) -> str:
        return str(spec.resources.get("instance_type", self.settings.instance_type))

    def instance_types_in_use(self) -> list[str]:
        """The instance types the launch starts (``instance_type``, or the jobs' own)."""
        return self._types_in_use or [self.settings.instance_type]

    def _instance_groups(self, jobs: Sequence[JobSpec]) -> list[tuple[str, list[JobSpec]]]:
        """(instance type, its jobs) per instance: jobs grouped by type, each type split as
        ``jobs_per_instance`` and ``max_instances`` (over all types) say."""
        from launcher_core.resources import resource_groups

        typed: list[tuple[str, Sequence[JobSpec]]] = [
            (self._type_of(specs[0]), specs) for _resources, specs in resource_groups(jobs)
        ]
        return plan_typed_groups(typed, self.settings.jobs_per_instance, self.settings.max_instances)

    # --- contract: submit -------------------------------------------------------------------
    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, dict[str, Any]]:
        """Upload the sweep payload and one plan per instance (its job table), start the
        instances; all of them or none."""
        sweep = self._sweep
        if sweep is None or self._snapshot_key is None:
            raise BackendError("ec2 backend: prepare() must run before submit()")
        if not jobs:
            return {}
        run = new_run_id()
        base = self._base(sweep.sweep_id)
        typed = self._instance_groups(jobs)
        groups = [group for _type, group in typed]
        names = [f"g{n:03d}" for n in range(len(groups))]
        types = {name: instance_type for name, (instance_type, _group) in zip(names, typed)}
        self._upload_sweep_payload(base)
        entries = self._job_entries(sweep, base, run, dict(zip(names, groups)))
        plans = {name: self._plan(sweep, base, run, name, group, entries) for name, group in zip(names, groups)}
        for name, body in plans.items():  # every plan checked before the first upload
            self.check_no_secrets(body, f"the plan of instance group {name} (job overrides)")
        plan_keys = {name: self._upload_plan(base, run, name, body) for name, body in plans.items()}
        launched: dict[str, str] = {}
        try:
            for name in names:
                launched[name] = self._launch(sweep, base, run, name, plan_keys[name], types[name])
        except BaseException:
            self._undo_launch(list(launched.values()))
            raise
        log.info(
            "started %d EC2 instances for %d jobs (sweep %s, run %s)", len(launched), len(jobs), sweep.sweep_id, run
        )
        handles: dict[str, dict[str, Any]] = {}
        now = time.time()
        for name, group in zip(names, groups):
            for spec in group:
                entry = entries[spec.job_id]
                handles[spec.job_id] = {
                    "instance_id": launched[name],
                    "instance_type": types[name],
                    "host": launched[name],
                    "sweep_id": sweep.sweep_id,
                    "run": run,
                    "group": name,
                    "bucket": self._bucket,
                    "base": base,
                    "out_prefix": entry["out_prefix"],
                    "launched_at": now,
                    "remote_job_dir": entry["output_dir"],
                    "rel": entry["rel"],
                    "remote_cwd": entry["remote_cwd"],
                    "local_cwd": entry["local_cwd"],
                    "local_sweep_dir": str(sweep.sweep_dir),
                }
        return handles

    def _undo_launch(self, instance_ids: list[str]) -> None:
        """A launch failed half way: terminate what it started, without hiding the original error."""
        if not instance_ids:
            return
        log.error("launch failed: terminating the %d instances this launch started", len(instance_ids))
        try:
            self.terminate_instances(instance_ids)
        except Exception as exc:  # noqa: BLE001 - reported; the launch error is what propagates
            log.error(
                "could not terminate %s (%s): terminate them yourself or run "
                "`python -m launcher_core.backends.ec2 cleanup --terminate`",
                ", ".join(instance_ids),
                exc,
            )

    def _remote_paths(self, sweep: SweepInfo, run: str, group: str) -> tuple[str, str]:
        """(instance-side sweep dir, workspace of one instance)."""
        root = f"{self.settings.remote_dir.rstrip('/')}/{sweep.sweep_id}"
        return f"{root}/sweep", f"{root}/{run}-{group}"

    def _job_entries(
        self, sweep: SweepInfo, base: str, run: str, groups: Mapping[str, Sequence[JobSpec]]
    ) -> dict[str, dict[str, Any]]:
        from launcher_core.runtime.worker import job_entry

        entries: dict[str, dict[str, Any]] = {}
        local_cwd: tuple[str | None] | None = None  # hydra.runtime.cwd: the launch dir, the same for every job
        for name, group in groups.items():
            remote_sweep, workspace = self._remote_paths(sweep, run, name)
            for index, spec in enumerate(group):
                subdir = os.path.relpath(spec.output_dir, sweep.sweep_dir)
                if subdir == ".." or subdir.startswith("../") or os.path.isabs(subdir):
                    raise ConfigError(
                        f"job #{spec.idx}: its output dir {spec.output_dir} is outside the sweep dir "
                        f"{sweep.sweep_dir}; the ec2 launcher needs hydra.sweep.subdir inside hydra.sweep.dir"
                    )
                if local_cwd is None:
                    local_cwd = (runtime_cwd(spec.config),)
                    spec.release_config()
                remote_out = f"{remote_sweep}/{PurePosixPath(*Path(subdir).parts)}"
                job_prefix = f"{base}/runs/{run}/jobs/{spec.job_id}"
                code = f"{workspace}/code"
                # the instance's plan is the job table: the job composes its config from this entry
                entry = job_entry(
                    spec.idx, spec.overrides, f"{remote_out}/.launcher/result.pkl", remote_sweep, subdir, code
                )
                entries[spec.job_id] = {
                    **entry,
                    "job_id": spec.job_id,
                    "index": index,
                    "output_dir": remote_out,
                    "out_prefix": f"{job_prefix}/out/",
                    # what fetch needs to point the pulled JobReturn at local paths
                    "rel": PurePosixPath(*Path(subdir).parts).as_posix(),
                    "remote_cwd": code,
                    "local_cwd": local_cwd[0],
                }
        return entries

    def _plan(
        self,
        sweep: SweepInfo,
        base: str,
        run: str,
        group: str,
        specs: Sequence[JobSpec],
        entries: Mapping[str, dict[str, Any]],
    ) -> bytes:
        """The plan of one instance: what its agent runs, and the job table of its jobs."""
        budget = self.settings.max_runtime_s
        plan = {
            "version": 1,
            "sweep_id": sweep.sweep_id,
            "run": run,
            "group": group,
            "bucket": self._bucket,
            "code_key": self._snapshot_key,
            "sweep_payload_key": self._sweep_payload_key,
            "marker_prefix": f"{base}/markers/{run}/",
            "log_key": f"{base}/runs/{run}/{group}/agent.log",
            "setup_log_key": f"{base}/runs/{run}/{group}/setup.log",
            "python": self.settings.python_cmd,
            "slots": self.settings.jobs_per_instance,
            "sync_interval_s": self.settings.sync_interval_s,
            "max_runtime_s": budget,
            # jobs stop this long before the hard power-off, to leave time for the final sync
            "stop_margin_s": min(max(budget * 0.1, 2.0), 300.0, budget / 2),
            "kill_grace_s": self.settings.kill_grace_s,
            "spot_check_s": min(self.settings.sync_interval_s, 5.0),
            "cancel_check_s": min(self.settings.sync_interval_s, 30.0),
            "jobs": [{k: v for k, v in entries[s.job_id].items() if k not in _LOCAL_ONLY} for s in specs],
        }
        return json.dumps(plan, separators=(",", ":")).encode()

    def _upload_plan(self, base: str, run: str, group: str, body: bytes) -> str:
        key = f"{base}/runs/{run}/{group}/plan.json"
        self._put(key, body, f"the plan of instance group {group}")
        return key

    def render_user_data(self, sweep: SweepInfo, base: str, run: str, group: str, plan_key: str) -> str:
        """The user-data of one instance: the full script, or the S3 fetch stub if it is > 16 KB."""
        import launcher_core.backends.ec2.userdata as ud

        _, workspace = self._remote_paths(sweep, run, group)
        common = {
            "sweep_id": sweep.sweep_id,
            "run": run,
            "group": group,
            "workspace": workspace,
            "python": self.settings.python_cmd,
            "max_runtime_s": self.settings.max_runtime_s,
        }
        bootstrap = {
            "bucket": self._bucket,
            "plan_key": plan_key,
            "region": self.region,
            "endpoint_url": self.settings.endpoint_url,
            "workspace": workspace,
        }
        full = ud.render_user_data(
            **common,
            bootstrap=bootstrap,
            env=self.settings.env,
            setup_commands=self.settings.setup_commands,
            payload_needs=sweep.payload_needs,
        )
        self.check_no_secrets(full.encode(), "the user-data script")
        if len(full.encode()) <= ud.USER_DATA_LIMIT:
            return full
        key = f"{base}/runs/{run}/{group}/user-data.sh"
        self._put(key, full.encode(), "the user-data script")
        stub = ud.render_fetch_stub(
            **common,
            bucket=self._bucket,
            key=key,
            region=self.region,
            endpoint_url=self.settings.endpoint_url,
            full_size=len(full.encode()),
        )
        if len(stub.encode()) > ud.USER_DATA_LIMIT:
            raise ConfigError(f"even the user-data fetch stub exceeds 16 KB: shorten {setting_key('python')}")
        return stub

    def _launch(self, sweep: SweepInfo, base: str, run: str, group: str, plan_key: str, instance_type: str) -> str:
        user_data = self.render_user_data(sweep, base, run, group, plan_key)
        args = self._run_instances_args(sweep, run, group, user_data, instance_type)
        response = self._ec2_call("run_instances", **args)
        instance_id = str(response["Instances"][0]["InstanceId"])
        log.info("instance %s (%s) started for group %s of run %s", instance_id, instance_type, group, run)
        return instance_id

    def _run_instances_args(
        self, sweep: SweepInfo, run: str, group: str, user_data: str, instance_type: str | None = None
    ) -> dict[str, Any]:
        s = self.settings
        tags = {
            "Name": f"hydra-{sweep.sweep_id}-{group}"[:255],
            **{k: str(v) for k, v in s.tags.items()},
            TAG_SWEEP: sweep.sweep_id,
            TAG_RUN: run,
            TAG_GROUP: group,
        }
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        args: dict[str, Any] = {
            "ImageId": s.ami,
            "InstanceType": instance_type or s.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
            # idempotency: a retried call never starts a second instance for the same group
            "ClientToken": f"hrl-{run}-{group}",
        }
        if s.key_name:
            args["KeyName"] = s.key_name
        if s.iam_instance_profile:
            is_arn = s.iam_instance_profile.startswith("arn:")
            args["IamInstanceProfile"] = {"Arn" if is_arn else "Name": s.iam_instance_profile}
        if s.security_group_ids:
            args["SecurityGroupIds"] = list(s.security_group_ids)
        if s.subnet_id:
            args["SubnetId"] = s.subnet_id
        if self._block_devices:
            args["BlockDeviceMappings"] = copy.deepcopy(self._block_devices)
        if s.spot:
            options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if s.max_price is not None:
                options["MaxPrice"] = f"{s.max_price:g}"
            args["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        return args

    # --- contract: poll ---------------------------------------------------------------------
    def poll(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, JobStatus]:
        """Per sweep: one DescribeInstances (by tag), then one listing of its marker objects.

        Instances are described *before* markers are listed: an instance seen ended without a
        marker really ended without one, since markers are written before it terminates.
        """
        self._connect()
        by_sweep: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        for job_id, handle in handles.items():
            key = (handle["bucket"], handle["base"], handle["sweep_id"])
            by_sweep.setdefault(key, {})[job_id] = handle
        statuses: dict[str, JobStatus] = {}
        for (bucket, base, sweep_id), group in by_sweep.items():
            instances = self.describe_sweep_instances(sweep_id)
            markers = self._list_markers(bucket, f"{base}/markers/")
            for job_id, handle in group.items():
                statuses[job_id] = self._job_status(job_id, handle, markers, instances)
        return statuses

    def describe_sweep_instances(self, sweep_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Instances tagged with ``sweep_id`` (any sweep if None): id -> description."""
        filters = [{"Name": f"tag:{TAG_SWEEP}", "Values": [sweep_id]}] if sweep_id else []
        filters.append({"Name": "tag-key", "Values": [TAG_SWEEP]})
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Filters": filters, "MaxResults": 1000}
            if token:
                kwargs["NextToken"] = token
            page = self._ec2_call("describe_instances", **kwargs)
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    found[inst["InstanceId"]] = inst
            token = page.get("NextToken")
            if not token:
                return found

    def _list_markers(self, bucket: str, prefix: str, run: str | None = None) -> dict[tuple[str, str], dict[str, str]]:
        """``{(run, job_id): {state: key}}`` from one (paginated) listing.

        ``prefix`` is ``BASE/markers/`` (all runs), or ``BASE/markers/RUN/`` with ``run`` given.
        """
        markers: dict[tuple[str, str], dict[str, str]] = {}
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(prefix) :]
                if run is None:
                    key_run, _, name = rest.partition("/")
                else:
                    key_run, name = run, rest
                job_id, _, state = name.rpartition(".")
                if key_run and job_id:
                    markers.setdefault((key_run, job_id), {})[state] = obj["Key"]
        return markers

    def _job_status(
        self,
        job_id: str,
        handle: Mapping[str, Any],
        markers: Mapping[tuple[str, str], Mapping[str, str]],
        instances: Mapping[str, Mapping[str, Any]],
    ) -> JobStatus:
        found = markers.get((handle["run"], job_id), {})
        iid = handle["instance_id"]
        if "done" in found:
            return JobStatus(JobState.COMPLETED, host=iid)
        if "failed" in found:
            return JobStatus(JobState.FAILED, self._failed_reason(handle["bucket"], found["failed"]), host=iid)
        inst = instances.get(iid)
        if inst is None:
            if time.time() - float(handle.get("launched_at", 0)) > NOT_FOUND_GRACE_S:
                return JobStatus(JobState.FAILED, f"instance {iid} no longer exists and the job left no result")
            return JobStatus(JobState.SUBMITTED, host=iid)
        state = inst.get("State", {}).get("Name", "unknown")
        if state in ENDED_INSTANCE_STATES:
            why = inst.get("StateReason", {}).get("Message") or inst.get("StateTransitionReason") or "no reason given"
            return JobStatus(JobState.FAILED, f"instance {iid} is {state} ({why}) and the job left no result", iid)
        if "running" in found:
            return JobStatus(JobState.RUNNING, host=iid)
        return JobStatus(JobState.SUBMITTED, host=iid)

    def _failed_reason(self, bucket: str, key: str) -> str:
        if key not in self._reasons:
            try:
                body = json.loads(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                self._reasons[key] = str(body.get("reason") or "failed on the instance")
            except Exception as exc:  # noqa: BLE001 - the state is known; the reason is a bonus
                self._reasons[key] = f"failed on the instance (reason unreadable: {exc})"
        return self._reasons[key]

    # --- contract: fetch / cancel / close ---------------------------------------------------
    def fetch(
        self,
        jobs: Mapping[str, dict[str, Any]],
        local_dirs: Mapping[str, Path],
        pull_filter: PullFilter | None = None,
    ) -> None:
        """Download each job's synced files into its local output dir.

        Incremental and safe to repeat: a downloaded file gets the S3 object's LastModified as
        its mtime, so a file already there with the same size and mtime is skipped; each file is
        downloaded to a temporary name and renamed into place.
        """
        from launcher_core.remote.workspace import localize_result

        self._connect()
        for job_id, handle in jobs.items():
            if handle.get("out_prefix"):
                local_dir = Path(local_dirs[job_id])
                skip = _bare_filter(pull_filter, str(handle.get("rel") or ""))
                self._fetch_job(handle["bucket"], handle["out_prefix"], local_dir, skip)
                localize_result(local_dir / LAUNCHER_DIR / RESULT_FILE, handle, local_dir)

    def _fetch_job(
        self, bucket: str, prefix: str, dest: Path, skip: Callable[[PurePosixPath, int], bool] | None
    ) -> None:
        paginator = self._s3.get_paginator("list_objects_v2")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = PurePosixPath(obj["Key"][len(prefix) :])
                target = (root / rel).resolve()
                if not rel.parts or ".." in rel.parts or root not in target.parents:
                    log.warning("skipping S3 object with an unsafe path: %s", obj["Key"])
                    continue
                private = ".launcher" in rel.parts
                if not private and skip is not None and skip(rel, int(obj["Size"])):
                    continue
                stamp = obj["LastModified"].timestamp()
                if _same_file(target, int(obj["Size"]), stamp):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
                tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
                try:
                    self._s3.download_file(bucket, obj["Key"], str(tmp))
                    os.chmod(tmp, 0o600 if private else 0o644)
                    os.utime(tmp, (stamp, stamp))
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)

    def list_files(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, list[tuple[str, int]]]:
        """The objects each job synced to S3 (one paginated listing per job), as ``fetch`` would
        download them."""
        self._connect()
        out: dict[str, list[tuple[str, int]]] = {}
        for job_id, handle in handles.items():
            prefix = handle.get("out_prefix")
            if not prefix:
                continue
            files = out.setdefault(job_id, [])
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=handle["bucket"], Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = PurePosixPath(obj["Key"][len(prefix) :])
                    if rel.parts and ".." not in rel.parts:
                        files.append((str(rel), int(obj["Size"])))
        return out

    def read_log(self, handle: Mapping[str, Any], stream: str, offset: int = 0) -> bytes:
        """Live log of a job not pulled yet, as of the instance's last sync (``sync_interval_s``)."""
        from botocore.exceptions import ClientError

        if not handle.get("out_prefix"):
            return b""
        self._connect()
        name = "stderr.log" if stream == "stderr" else "stdout.log"
        try:
            response = self._s3.get_object(
                Bucket=handle["bucket"], Key=f"{handle['out_prefix']}.launcher/{name}", Range=f"bytes={int(offset)}-"
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "InvalidRange", "404", "416"):
                return b""
            raise
        return response["Body"].read()

    def cancel(self, handles: Mapping[str, dict[str, Any]]) -> None:
        """Stop these jobs: terminate an instance when every unfinished job on it is cancelled,
        else leave a ``.cancel`` request the instance's agent acts on at its next sync."""
        by_instance: dict[str, dict[str, Mapping[str, Any]]] = {}
        for job_id, handle in handles.items():
            if handle.get("instance_id"):
                by_instance.setdefault(str(handle["instance_id"]), {})[job_id] = handle
        if not by_instance:
            return
        self._connect()
        to_terminate = []
        for iid, jobs in sorted(by_instance.items()):
            others = self._unfinished_jobs_on(next(iter(jobs.values()))) - set(jobs)
            if not others:
                to_terminate.append(iid)
                continue
            for job_id, handle in jobs.items():
                key = f"{handle['base']}/markers/{handle['run']}/{job_id}.cancel"
                self._s3.put_object(Bucket=handle["bucket"], Key=key, Body=b"{}")
            log.info("asked instance %s to cancel %d of its jobs (%d others keep running)", iid, len(jobs), len(others))
        self.terminate_instances(to_terminate)

    def _unfinished_jobs_on(self, handle: Mapping[str, Any]) -> set[str]:
        """Jobs of the instance running ``handle``'s job that have no done/failed marker yet."""
        from botocore.exceptions import ClientError

        plan_key = f"{handle['base']}/runs/{handle['run']}/{handle['group']}/plan.json"
        try:
            plan = json.loads(self._s3.get_object(Bucket=handle["bucket"], Key=plan_key)["Body"].read())
        except ClientError:
            return set()
        markers = self._list_markers(handle["bucket"], f"{handle['base']}/markers/{handle['run']}/", handle["run"])
        finished = {job_id for (_run, job_id), states in markers.items() if {"done", "failed"} & set(states)}
        return {str(j["job_id"]) for j in plan.get("jobs", [])} - finished

    # --- optional: clean -------------------------------------------------------------------
    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """Delete each job's objects (``runs/<run>/jobs/<job_id>/``: payload and synced outputs);
        with ``sweep_handles`` (every job of the sweep, all clean after this) everything left
        under ``PREFIX/SWEEP_ID/``: code tarball, sweep payload, plans, agent logs, markers.

        Markers stay until then: cancelling jobs still running on a shared instance reads them.
        Every prefix is checked to lie inside the sweep's own prefix before any call.
        """
        from launcher_core.backends.base import CleanReport

        base = self._clean_base(request.sweep_id)
        location = f"s3://{self._bucket}"
        prefixes = {job_id: self._clean_job_prefix(job_id, h, base) for job_id, h in request.handles.items()}
        report = CleanReport()
        report.jobs[location] = len(prefixes)
        for prefix in prefixes.values():
            report.add_target(location, prefix)
        if request.sweep_handles is not None:
            for handle in request.sweep_handles.values():
                self._check_handle_base(handle, base)
            report.add_target(location, f"{base}/")
        if request.dry_run:
            return report
        self._connect()
        try:
            for job_id, prefix in prefixes.items():
                self._delete_prefix(prefix)
                report.cleaned.add(job_id)  # what is gone so far is recorded even if a later call fails
            if request.sweep_handles is not None:
                self._delete_prefix(f"{base}/")
                report.sweep_cleaned = True
        except Exception as exc:  # noqa: BLE001 - S3/network errors: report, keep what was done
            report.errors.append(f"{location}: {type(exc).__name__}: {exc}")
        return report

    def _clean_base(self, sweep_id: str) -> str:
        from launcher_core.remote.paths import CleanRefused

        if not sweep_id or "/" in sweep_id or sweep_id in (".", "..") or not sweep_id.isprintable():
            raise CleanRefused(f"refusing to clean: the sweep id {sweep_id!r} is not a plain name")
        return self._base(sweep_id)

    def _check_handle_base(self, handle: Mapping[str, Any], base: str) -> None:
        from launcher_core.remote.paths import CleanRefused

        if handle.get("bucket") != self._bucket or handle.get("base") != base:
            raise CleanRefused(
                f"refusing to clean: a job handle names bucket {handle.get('bucket')!r} and prefix "
                f"{handle.get('base')!r}, not this sweep's s3://{self._bucket}/{base}"
            )

    def _clean_job_prefix(self, job_id: str, handle: Mapping[str, Any], base: str) -> str:
        """``BASE/runs/<run>/jobs/<job_id>/`` of a handle, or CleanRefused naming the value."""
        from launcher_core.remote.paths import CleanRefused

        self._check_handle_base(handle, base)
        run = str(handle.get("run") or "")
        out = handle.get("out_prefix")
        prefix = f"{base}/runs/{run}/jobs/{job_id}/"
        bad = not run or "/" in run or run in (".", "..") or not job_id or "/" in job_id or job_id in (".", "..")
        if bad or out != f"{prefix}out/":
            raise CleanRefused(f"refusing to clean job {job_id}: its S3 prefix {out!r} is not under {prefix!r}")
        return prefix

    def _delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (paginated listing, batches of 1000); return the count."""
        paginator = self._s3.get_paginator("list_objects_v2")
        deleted = 0
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            keys = [obj["Key"] for obj in page.get("Contents", []) if obj["Key"].startswith(prefix)]
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                answer = self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
                failed = answer.get("Errors") or []
                if failed:
                    first = failed[0]
                    raise BackendError(
                        f"S3 refused to delete {len(failed)} objects under s3://{self._bucket}/{prefix} "
                        f"(first: {first.get('Key')}: {first.get('Code')} {first.get('Message')})"
                    )
                deleted += len(batch)
        return deleted

    def terminate_instances(self, instance_ids: Sequence[str]) -> None:
        """Terminate instances; ids already gone are ignored."""
        if not instance_ids:
            return
        try:
            self._ec2_call("terminate_instances", InstanceIds=list(instance_ids))
        except AwsApiError as exc:
            if exc.code != "InvalidInstanceID.NotFound":
                raise
            if len(instance_ids) > 1:  # one of them is gone already: terminate the others one by one
                for iid in instance_ids:
                    self.terminate_instances([iid])
            return
        log.info("terminated instances %s", ", ".join(instance_ids))

    def close(self) -> None:
        for client in (self._ec2, self._s3):
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._ec2 = self._s3 = None


def from_config(config: Mapping[str, Any]) -> Ec2Backend:
    """Rebuild the backend from :meth:`Ec2Backend.stored_config`: it can poll, fetch, cancel and
    clean, not launch. (A store written by an older version holds every setting: ``code_dir``
    only matters for launching and may be gone by the time results are pulled.)
    """
    return Ec2Backend(Ec2Settings.from_mapping({**config, "code_dir": None}))


def _same_file(path: Path, size: int, mtime: float) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and abs(st.st_mtime - mtime) < 1e-3


def _bare_filter(pull_filter: PullFilter | None, job_rel: str) -> Callable[[PurePosixPath, int], bool] | None:
    """``pull --bare``: which of a job's files to skip (``None``: none). Files above the size limit,
    and files an exclude pattern matches as it does in the other backends' rsync fetch: on the
    path from the sweep dir (``job_rel``, the job's subdir, first; :class:`RsyncFilter`)."""
    if pull_filter is None or not pull_filter.is_bare:
        return None
    patterns = RsyncFilter(exclude=pull_filter.exclude)
    limit = pull_filter.max_size_bytes

    def skip(rel: PurePosixPath, size: int) -> bool:
        if limit is not None and size > limit:
            return True
        return patterns.excludes(f"{job_rel}/{rel.as_posix()}" if job_rel else rel.as_posix(), listed=job_rel)

    return skip
