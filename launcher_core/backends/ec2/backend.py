"""The ec2 backend: prepare uploads, RunInstances per group of jobs, poll, fetch, cancel and
clean through EC2 and S3.

This module is the orchestration; the work is done by :mod:`.aws` (the client and its retries),
:mod:`.store` (S3), :mod:`.fleet` (instances), :mod:`.placement` and :mod:`.plans` (what each
instance runs) and :mod:`.cleaning`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Backend, CleanReport, CleanRequest, Handle
from launcher_core.backends.ec2.aws import TAG_TERMINATED_BY, AwsClient, root_volume_mapping
from launcher_core.backends.ec2.billing import MachineHours, cached_price
from launcher_core.backends.ec2.cleaning import clean_sweep_files
from launcher_core.backends.ec2.fleet import Fleet, job_status
from launcher_core.backends.ec2.handle import Ec2Handle
from launcher_core.backends.ec2.placement import instance_groups, instance_type_of, new_run_id
from launcher_core.backends.ec2.plans import RunPlanner
from launcher_core.backends.ec2.settings import Ec2Settings
from launcher_core.backends.ec2.snapshot import build_snapshot, sha256_file, snapshot_filter
from launcher_core.backends.ec2.store import S3Store, bare_filter, group_key, log_key, marker_key, markers_prefix
from launcher_core.errors import BackendError
from launcher_core.intents import SubmitIntent, after_accepted_submission
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, JobSpec, JobStatus, PullFilter, SweepInfo

if TYPE_CHECKING:
    from launcher_core.preflight import Check, PreflightRequest

log = logging.getLogger("launcher_core.ec2")


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
        self.aws = AwsClient(settings, session)
        self.store = S3Store(self.aws, str(settings.s3_bucket), settings.s3_prefix)
        self.fleet = Fleet(self.aws, settings)
        self._task_function = task_function
        self._hydra_context = hydra_context
        self._sweep: SweepInfo | None = None
        self._snapshot_key: str | None = None
        self._block_devices: list[dict[str, Any]] = []
        self._reasons: dict[str, str] = {}
        self._types_in_use: list[str] | None = None  # instance types the jobs of this launch need
        self._entries: dict[str, dict[str, dict[str, Any]]] = {}  # group -> its jobs' entries (this submit)
        self.machine_hours = MachineHours(settings.max_runtime_s)  # what this process saw of instances

    def stored_config(self) -> dict[str, Any]:
        """The settings :func:`from_config` rebuilds this backend from (kept in the state store):
        only what polling, fetching, cancelling and cleaning need, never ``env_vars`` values or
        ``setup_commands`` (:meth:`Ec2Settings.stored_config`).

        Refuses settings holding the active credentials (anywhere, ``env_vars`` and ``setup_commands``
        included: they go to the instances), before anything writes them anywhere.
        """
        everything = json.dumps(self.settings.to_dict()).encode()
        self.check_no_secrets(everything, "hydra.launcher (env_vars, setup_commands, python, tags)")
        return self.settings.stored_config()

    @property
    def region(self) -> str:
        return self.aws.region

    def check_no_secrets(self, data: bytes, what: str) -> None:
        """Refuse to ship ``data`` if it contains the active AWS credentials."""
        self.aws.check_no_secrets(data, what)

    # --- contract: prepare ------------------------------------------------------------------
    def prepare(self, sweep: SweepInfo) -> None:
        """Check bucket, AMI and settings, then upload the code snapshot and the sweep payload.

        Everything is built and checked for credentials before the first upload, so a refusal
        leaves nothing behind. Uploads are content-addressed: a relaunch uploads nothing new.
        """
        self.aws.connect()
        self._sweep = sweep
        self.store.check_bucket()
        self._block_devices = root_volume_mapping(self.fleet.describe_ami(), self.settings.root_volume_gb)
        self.stored_config()  # refuses settings that hold credentials
        self._sweep_payload()  # refuses a payload that holds credentials before any upload
        base = self.store.base(sweep.sweep_id)
        with tempfile.TemporaryDirectory(prefix="hrl-ec2-") as tmp:
            archive = Path(tmp) / "snapshot.tar.gz"
            code_dir, count = self._build_snapshot(sweep, archive)
            self._snapshot_key = f"{base}/snapshot-{sha256_file(archive)[:16]}.tar.gz"
            if not self.store.exists(self._snapshot_key):
                self.store.upload_file(archive, self._snapshot_key)
                log.info("uploaded the code snapshot of %s (%d files) to s3://%s", code_dir, count, self.store.bucket)

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

    def _upload_sweep_payload(self, base: str) -> str:
        """The key of the sweep payload as of now (content-addressed: a batch that brought new
        config templates gets a new one, a relaunch uploads nothing new)."""
        payload = self._sweep_payload()
        key = f"{base}/sweep-{hashlib.sha256(payload).hexdigest()[:16]}.pkl"
        if not self.store.exists(key):
            self.store.put(key, payload, "the sweep payload")
        return key

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

    def preflight(self, request: PreflightRequest) -> list[Check]:
        """Credentials, AMI, bucket (a write), instance profile and instance type, before
        anything is uploaded: :mod:`.preflight`."""
        from launcher_core.backends.ec2.preflight import preflight

        return preflight(self.fleet, self.instance_types_in_use(), request)

    # --- per-job resources ------------------------------------------------------------------
    def resolve_resources(self, specs: Sequence[JobSpec]) -> None:
        """``resources_from.instance_type``: each job's instance type from its config (checked to
        look like one; whether the region offers it is the pre-flight's question)."""
        from launcher_core.backends.ec2.settings import RESOURCES
        from launcher_core.resources import read_job_resources

        read_job_resources(specs, self.settings.resources_from, RESOURCES)
        self._types_in_use = sorted({instance_type_of(spec, self.settings.instance_type) for spec in specs})

    def instance_types_in_use(self) -> list[str]:
        """The instance types the launch starts (``instance_type``, or the jobs' own)."""
        return self._types_in_use or [self.settings.instance_type]

    # --- contract: submit -------------------------------------------------------------------
    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, Ec2Handle]:
        """Upload the sweep payload and one plan per instance (its job table), start the
        instances; all of them or none."""
        sweep = self._sweep
        if sweep is None or self._snapshot_key is None:
            raise BackendError("ec2 backend: prepare() must run before submit()")
        if not jobs:
            return {}
        s = self.settings
        typed = instance_groups(jobs, s.instance_type, s.jobs_per_instance, s.max_instances)
        groups = {f"g{n:03d}": group for n, (_type, group) in enumerate(typed)}
        types = {name: instance_type for name, (instance_type, _group) in zip(groups, typed)}
        payload_key = self._upload_sweep_payload(self.store.base(sweep.sweep_id))
        planner = RunPlanner(s, self.store, sweep, new_run_id(), self._snapshot_key, payload_key)
        entries = planner.job_entries(groups)
        self._entries = {name: {spec.job_id: entries[spec.job_id] for spec in group} for name, group in groups.items()}
        plans = {name: planner.plan(name, group, entries) for name, group in groups.items()}
        for name, body in plans.items():  # every plan checked before the first upload
            self.check_no_secrets(body, f"the plan of instance group {name} (job overrides)")
        plan_keys: dict[str, str] = {}
        for name, body in plans.items():
            plan_keys[name] = group_key(planner.base, planner.run, name, "plan.json")
            self.store.put(plan_keys[name], body, f"the plan of instance group {name}")
        launched = self._launch_all(planner, plan_keys, types)
        log.info(
            "started %d EC2 instances for %d jobs (sweep %s, run %s)",
            len(launched),
            len(jobs),
            sweep.sweep_id,
            planner.run,
        )
        now = time.time()
        return {
            spec.job_id: planner.handle(entries[spec.job_id], name, launched[name], types[name], now)
            for name, group in groups.items()
            for spec in group
        }

    def _launch_all(
        self, planner: RunPlanner, plan_keys: Mapping[str, str], types: Mapping[str, str]
    ) -> dict[str, str]:
        """Start one instance per group (group -> instance id); on any failure terminate the
        ones already started and re-raise."""
        launched: dict[str, str] = {}
        keys: list[str] = []
        try:
            for name, plan_key in plan_keys.items():
                user_data = planner.user_data(name, plan_key)
                intent = self._record_intent(planner, name, types[name])
                keys.append(intent.key)
                launched[name] = self.fleet.launch(
                    sweep_id=planner.sweep.sweep_id,
                    run=planner.run,
                    group=name,
                    user_data=user_data,
                    instance_type=types[name],
                    block_devices=self._block_devices,
                    intent=intent.tag,
                )
                after_accepted_submission()  # test hook (a kill before the state store records the instance)
        except BaseException:
            if self.fleet.undo_launch(list(launched.values())):
                self.intents.discard(keys[: len(launched)])  # terminated: nothing of theirs to find again
            raise
        return launched

    def _record_intent(self, planner: RunPlanner, group: str, instance_type: str) -> SubmitIntent:
        """Record the group's instance before RunInstances (:mod:`launcher_core.intents`): its
        ``hydra-launcher:intent`` tag and its ClientToken are the intent's key (the key of an
        earlier, interrupted request for the same jobs that EC2 does not list: if AWS accepted that
        one after all, it refuses this one, IdempotentParameterMismatch, instead of starting a
        second instance)."""
        entries = self._entries[group]
        now = time.time()
        handles = {j: planner.handle(entry, group, "", instance_type, now) for j, entry in entries.items()}
        key = self.intents.key_for(handles)
        intent = SubmitIntent(key, key, handles)
        self.intents.record(intent)
        return intent

    def accepted(self, intents: Sequence[SubmitIntent]) -> Mapping[str, Ec2Handle]:
        """The instances of these intents EC2 started (in any state: one that already ran its jobs
        and terminated tells so through their markers), found by their intent tag in one
        DescribeInstances: the handles of their jobs."""
        if not intents:
            return {}
        by_tag = self.fleet.instances_by_intent([i.tag for i in intents])
        found: dict[str, Ec2Handle] = {}
        for intent in intents:
            iid = by_tag.get(intent.tag)
            if iid is not None:
                for job_id, h in intent.handles.items():
                    found[job_id] = dataclasses.replace(Ec2Handle.of(h), instance_id=iid, host=iid)
        return found

    # --- contract: poll ---------------------------------------------------------------------
    def poll(self, handles: Mapping[str, Handle]) -> Mapping[str, JobStatus]:
        """Per sweep: one DescribeInstances (by tag), then one listing of its marker objects.

        Instances are described *before* markers are listed: an instance seen ended without a
        marker really ended without one, since markers are written before it terminates.
        """
        self.aws.connect()
        by_sweep: dict[tuple[str, str, str], dict[str, Ec2Handle]] = {}
        for job_id, handle in Ec2Handle.typed(handles).items():
            key = (handle.bucket, handle.base, handle.sweep_id)
            by_sweep.setdefault(key, {})[job_id] = handle
        statuses: dict[str, JobStatus] = {}
        for (bucket, base, sweep_id), group in by_sweep.items():
            instances = self.fleet.describe_sweep_instances(sweep_id)
            self.machine_hours.observe(instances)
            markers = self.store.list_markers(bucket, markers_prefix(base))
            for job_id, handle in group.items():
                statuses[job_id] = job_status(job_id, handle, markers, instances, self._failed_reason)
        return statuses

    def describe_sweep_instances(self, sweep_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Instances tagged with ``sweep_id`` (any sweep if None): id -> description."""
        return self.fleet.describe_sweep_instances(sweep_id)

    def _failed_reason(self, bucket: str, key: str) -> str:
        if key not in self._reasons:
            try:
                body = self.store.get_json(bucket, key)
                self._reasons[key] = str(body.get("reason") or "failed on the instance")
            except Exception as exc:  # noqa: BLE001 - the state is known; the reason is a bonus
                self._reasons[key] = f"failed on the instance (reason unreadable: {exc})"
        return self._reasons[key]

    # --- contract: fetch / cancel / close ---------------------------------------------------
    def fetch(
        self,
        jobs: Mapping[str, Handle],
        local_dirs: Mapping[str, Path],
        pull_filter: PullFilter | None = None,
    ) -> None:
        """Download each job's synced files into its local output dir (incremental and safe to
        repeat: :meth:`S3Store.download`)."""
        from launcher_core.remote.workspace import localize_result

        self.aws.connect()
        for job_id, handle in Ec2Handle.typed(jobs).items():
            if handle.out_prefix:
                local_dir = Path(local_dirs[job_id])
                skip = bare_filter(pull_filter, str(handle.rel or ""))
                self.store.download(handle.bucket, handle.out_prefix, local_dir, skip)
                localize_result(local_dir / LAUNCHER_DIR / RESULT_FILE, handle, local_dir)

    def list_files(self, handles: Mapping[str, Handle]) -> Mapping[str, list[tuple[str, int]]]:
        """The objects each job synced to S3 (one paginated listing per job), as ``fetch`` would
        download them."""
        self.aws.connect()
        out: dict[str, list[tuple[str, int]]] = {}
        for job_id, handle in Ec2Handle.typed(handles).items():
            if handle.out_prefix:
                out.setdefault(job_id, []).extend(self.store.list_files(handle.bucket, handle.out_prefix))
        return out

    def read_log(self, handle: Handle, stream: str, offset: int = 0) -> bytes:
        """Live log of a job not pulled yet, as of the instance's last sync (``sync_interval_s``)."""
        job = Ec2Handle.of(handle) if handle else None
        if job is None or not job.out_prefix:
            return b""
        return self.store.read_from(job.bucket, log_key(job.out_prefix, stream), offset)

    def cancel(self, handles: Mapping[str, Handle]) -> None:
        """Stop these jobs: terminate an instance when every unfinished job on it is cancelled,
        else leave a ``.cancel`` request the instance's agent acts on at its next sync."""
        by_instance: dict[str, dict[str, Ec2Handle]] = {}
        for job_id, handle in Ec2Handle.typed(handles).items():
            if handle.instance_id:
                by_instance.setdefault(handle.instance_id, {})[job_id] = handle
        if not by_instance:
            return
        self.aws.connect()
        to_terminate = []
        for iid, jobs in sorted(by_instance.items()):
            others = self._unfinished_jobs_on(next(iter(jobs.values()))) - set(jobs)
            if not others:
                to_terminate.append(iid)
                continue
            for job_id, handle in jobs.items():
                self.store.put_marker(handle.bucket, marker_key(handle.base, handle.run, job_id, "cancel"))
            log.info("asked instance %s to cancel %d of its jobs (%d others keep running)", iid, len(jobs), len(others))
        self.terminate_instances(to_terminate)

    def _unfinished_jobs_on(self, handle: Ec2Handle) -> set[str]:
        """Jobs of the instance running ``handle``'s job that have no done/failed marker yet."""
        from botocore.exceptions import ClientError

        bucket, base, run = handle.bucket, handle.base, handle.run
        try:
            plan = self.store.get_json(bucket, group_key(base, run, handle.group, "plan.json"))
        except ClientError:
            return set()
        markers = self.store.list_markers(bucket, markers_prefix(base, run), run)
        finished = {job_id for (_run, job_id), states in markers.items() if {"done", "failed"} & set(states)}
        return {str(j["job_id"]) for j in plan.get("jobs", [])} - finished

    # --- optional: withdraw, billing ---------------------------------------------------------------
    def withdraw(self, handles: Mapping[str, Handle]) -> set[str]:
        """Take back jobs no instance has started: an instance still ``pending`` (it has not run
        its user-data, so no agent started anything) all of whose jobs are asked for and none of
        whose jobs left a marker is terminated (tagged as terminated by the launcher), and its
        jobs are returned once a second look at the markers shows none of them started (EC2
        cannot terminate "only while pending": an agent that marked a job running in between
        keeps its jobs out of the answer). A ``running`` instance is left alone, as its agent may
        have started a job, and so is one with jobs not asked for. Safe to repeat: an instance
        already terminated by the launcher before any of its jobs left a marker returns its jobs
        again (while EC2 still lists it: about an hour).

        Calls: one DescribeInstances, one GET of each such instance's plan, and one marker
        listing per run before and after the terminations."""
        by_instance: dict[str, dict[str, Ec2Handle]] = {}
        typed = Ec2Handle.typed(handles)
        for job_id, handle in typed.items():
            if handle.instance_id:
                by_instance.setdefault(handle.instance_id, {})[job_id] = handle
        if not by_instance:
            return set()
        self.aws.connect()
        instances = self.fleet.describe_jobs_instances({h.sweep_id for h in typed.values()})
        self.machine_hours.observe(instances)
        candidates: dict[str, tuple[Ec2Handle, set[str], bool]] = {}  # iid -> (a handle, its jobs, pending)
        for iid, jobs in by_instance.items():
            inst = instances.get(iid, {})
            state = inst.get("State", {}).get("Name")
            tags = {t.get("Key"): t.get("Value") for t in inst.get("Tags", [])}
            ours_ended = state in ("shutting-down", "terminated") and TAG_TERMINATED_BY in tags
            if state != "pending" and not ours_ended:
                continue
            handle = next(iter(jobs.values()))
            on_it = self._jobs_on(handle)
            if on_it and on_it <= set(jobs):
                candidates[iid] = (handle, on_it, state == "pending")
        unstarted = self._unstarted(candidates)
        self.terminate_instances(sorted(i for i in unstarted if candidates[i][2]))  # the pending ones
        confirmed = self._unstarted({i: c for i, c in candidates.items() if i in unstarted})
        if confirmed:
            log.info("withdrew the jobs of %d EC2 instances that had not started them", len(confirmed))
        return {job_id for iid in confirmed for job_id in candidates[iid][1]}

    def _jobs_on(self, handle: Ec2Handle) -> set[str]:
        """The jobs of the instance running ``handle``'s job, from its plan (empty: unreadable)."""
        from botocore.exceptions import ClientError

        try:
            plan = self.store.get_json(handle.bucket, group_key(handle.base, handle.run, handle.group, "plan.json"))
        except ClientError:
            return set()
        return {str(j["job_id"]) for j in plan.get("jobs", [])}

    def _unstarted(self, candidates: Mapping[str, tuple[Ec2Handle, set[str], bool]]) -> set[str]:
        """The instances none of whose jobs left a marker of its agent (running, done, failed;
        a ``cancel`` request is the launcher's own): one listing per run."""
        listed: dict[tuple[str, str, str], Mapping[tuple[str, str], Mapping[str, str]]] = {}
        out = set()
        for iid, (handle, on_it, _pending) in candidates.items():
            key = (handle.bucket, handle.base, handle.run)
            if key not in listed:
                prefix = markers_prefix(handle.base, handle.run)
                listed[key] = self.store.list_markers(handle.bucket, prefix, handle.run)
            if not any(set(listed[key].get((handle.run, job_id), {})) - {"cancel"} for job_id in on_it):
                out.add(iid)
        return out

    def billed_hours(self, handles: Mapping[str, Handle]) -> float:
        """Machine-hours of the distinct instances of these jobs so far, from the DescribeInstances
        of the poll just made (one of its own when there was none within ``poll_interval_s``):
        each from its LaunchTime to its end, at least a minute (the approximation:
        :mod:`.billing`)."""
        launched: dict[str, float] = {}
        typed = Ec2Handle.typed(handles)
        for handle in typed.values():
            if handle.instance_id:
                launched.setdefault(handle.instance_id, float(handle.launched_at or 0) or time.time())
        if not launched:
            return 0.0
        instances = self.machine_hours.described(launched, self.settings.poll_interval_s)
        if instances is None:  # not just described by a poll
            self.aws.connect()
            instances = self.fleet.describe_jobs_instances({h.sweep_id for h in typed.values()})
        return self.machine_hours.hours(launched, instances)

    def hourly_price_usd(self) -> float | None:
        """Spot: the newest spot price history entry of the instance type (Linux/UNIX; in the
        subnet's zone when ``subnet_id`` is set; the dearest of the launch's instance types and
        zones otherwise), or None when EC2 gives none. On-demand: None (the user gives the
        price). Asked once per process."""
        s = self.settings
        if not s.spot:
            return None
        types = sorted(self.instance_types_in_use())
        self.aws.connect()
        key = (s.endpoint_url, self.region, tuple(types), s.subnet_id)
        return cached_price(key, lambda: self.fleet.spot_price(types))

    def terminate_instances(self, instance_ids: Sequence[str]) -> None:
        """Terminate instances; ids already gone are ignored."""
        self.fleet.terminate(instance_ids)

    # --- optional: clean -------------------------------------------------------------------
    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """Delete the S3 objects of cleaned jobs, and of the whole sweep once every job is clean:
        :func:`.cleaning.clean_sweep_files`."""
        return clean_sweep_files(self.store, request)

    def close(self) -> None:
        self.aws.close()


def from_config(config: Mapping[str, Any]) -> Ec2Backend:
    """Rebuild the backend from :meth:`Ec2Backend.stored_config`: it can poll, fetch, cancel and
    clean, not launch. (A store written by an older version holds every setting: ``code_dir``
    only matters for launching and may be gone by the time results are pulled.)
    """
    return Ec2Backend(Ec2Settings.from_mapping({**config, "code_dir": None}))
