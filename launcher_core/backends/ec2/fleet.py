"""The instances of an ec2 sweep: the AMI check, RunInstances (tags, spot, root volume,
user-data), finding them by tag, terminating them, and what an instance's state says about the
jobs on it."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from launcher_core.backends.ec2.aws import (
    ENDED_INSTANCE_STATES,
    TAG_GROUP,
    TAG_INTENT,
    TAG_RUN,
    TAG_SWEEP,
    TAG_TERMINATED_BY,
    TERMINATED_BY_LAUNCHER,
    AwsApiError,
    AwsClient,
)
from launcher_core.backends.ec2.handle import Ec2Handle
from launcher_core.backends.ec2.settings import Ec2Settings, setting_key
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState, JobStatus, LossCause
from launcher_core.runtime.ec2_agent import SPOT_INTERRUPTION

log = logging.getLogger("launcher_core.ec2")

# An instance may be missing from DescribeInstances right after RunInstances (eventual consistency).
NOT_FOUND_GRACE_S = 300.0
# Why EC2 ended an instance (its StateReason code): a terminate call (from anyone: the console,
# another tool, a script of the user; the launcher tags the ones it terminates itself) ...
USER_TERMINATED = "Client.UserInitiatedShutdown"
# ... and AWS's own reasons (spot interruption, hardware retirement, internal errors). The
# instance's own shutdown (Client.InstanceInitiatedShutdown: the user-data's budget guard, the
# agent powering off when it could not mark its jobs) is neither: its jobs failed.
AWS_REASON_PREFIX = "Server."


class Fleet:
    """The EC2 calls of one backend, all through :meth:`AwsClient.call` (retried)."""

    def __init__(self, aws: AwsClient, settings: Ec2Settings) -> None:
        self.aws = aws
        self.settings = settings

    def describe_ami(self) -> dict[str, Any]:
        """The AMI's description (DescribeImages); ConfigError if it does not exist here."""
        ami = self.settings.ami
        try:
            images = self.aws.call("describe_images", ImageIds=[ami]).get("Images", [])
        except AwsApiError as exc:
            if not str(exc.code).startswith("InvalidAMIID"):
                raise ConfigError(f"{setting_key('ami')}={ami!r}: {exc}") from exc
            images = []
        if not images:
            raise ConfigError(f"{setting_key('ami')}={ami!r} does not exist in region {self.aws.region}")
        return dict(images[0])

    def offered_types(self, types: Sequence[str]) -> set[str]:
        """Which of ``types`` the region offers (one DescribeInstanceTypeOfferings)."""
        offers = self.aws.call(
            "describe_instance_type_offerings",
            LocationType="region",
            Filters=[{"Name": "instance-type", "Values": list(types)}],
        ).get("InstanceTypeOfferings", [])
        return {str(o.get("InstanceType")) for o in offers}

    def launch(
        self,
        *,
        sweep_id: str,
        run: str,
        group: str,
        user_data: str,
        instance_type: str,
        block_devices: Sequence[Mapping[str, Any]],
        intent: str | None = None,
    ) -> str:
        """Start the instance of one group (:func:`run_instances_args`); its id."""
        args = run_instances_args(
            self.settings,
            sweep_id=sweep_id,
            run=run,
            group=group,
            user_data=user_data,
            instance_type=instance_type,
            block_devices=block_devices,
            intent=intent,
        )
        instance_id = str(self.aws.call("run_instances", **args)["Instances"][0]["InstanceId"])
        log.info("instance %s (%s) started for group %s of run %s", instance_id, instance_type, group, run)
        return instance_id

    def describe_sweep_instances(self, sweep_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Instances tagged with ``sweep_id`` (any sweep if None): id -> description."""
        filters = [{"Name": f"tag:{TAG_SWEEP}", "Values": [sweep_id]}] if sweep_id else []
        filters.append({"Name": "tag-key", "Values": [TAG_SWEEP]})
        return self._describe(filters)

    def instances_by_intent(self, intents: Sequence[str]) -> dict[str, str]:
        """``{intent tag: instance id}`` of the instances tagged with these intents, in any state:
        one DescribeInstances (paginated; AWS takes up to 200 values per filter)."""
        wanted = sorted(set(intents))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 200):
            described = self._describe([{"Name": f"tag:{TAG_INTENT}", "Values": wanted[start : start + 200]}])
            for iid, inst in described.items():
                tags = {t.get("Key"): t.get("Value") for t in inst.get("Tags", [])}
                found.setdefault(str(tags.get(TAG_INTENT)), iid)
        return found

    def describe_jobs_instances(self, sweep_ids: set[str]) -> dict[str, dict[str, Any]]:
        """The instances of these sweeps in one DescribeInstances (by the sweep tag; every
        launcher instance when the jobs come from several sweeps)."""
        return self.describe_sweep_instances(next(iter(sweep_ids)) if len(sweep_ids) == 1 else None)

    def spot_price(self, instance_types: Sequence[str]) -> float | None:
        """The spot price of these instance types now (Linux/UNIX), in the zone of ``subnet_id``
        when it is set, the dearest type and zone otherwise (:func:`.billing.latest_spot_price`);
        None when EC2 gives none. One DescribeSubnets (with ``subnet_id``), one
        DescribeSpotPriceHistory from now on (EC2 answers with the price in effect then)."""
        from datetime import datetime, timezone

        from launcher_core.backends.ec2.billing import LINUX_PRODUCTS, latest_spot_price

        zone = None
        if self.settings.subnet_id:
            subnets = self.aws.call("describe_subnets", SubnetIds=[self.settings.subnet_id]).get("Subnets", [])
            zone = str(subnets[0].get("AvailabilityZone") or "") or None if subnets else None
        kwargs: dict[str, Any] = {
            "InstanceTypes": list(instance_types),
            "ProductDescriptions": list(LINUX_PRODUCTS),
            "StartTime": datetime.now(timezone.utc),
        }
        if zone:
            kwargs["AvailabilityZone"] = zone
        history: list[dict[str, Any]] = []
        for _page in range(20):  # a page per zone and product at most: bounded all the same
            page = self.aws.call("describe_spot_price_history", **kwargs)
            history += page.get("SpotPriceHistory", [])
            kwargs["NextToken"] = page.get("NextToken")
            if not kwargs["NextToken"]:
                break
        return latest_spot_price(history, instance_types, zone)

    def _describe(self, filters: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """DescribeInstances with ``filters``, every page: id -> description."""
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Filters": filters, "MaxResults": 1000}
            if token:
                kwargs["NextToken"] = token
            page = self.aws.call("describe_instances", **kwargs)
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    found[inst["InstanceId"]] = inst
            token = page.get("NextToken")
            if not token:
                return found

    def terminate(self, instance_ids: Sequence[str]) -> None:
        """Terminate instances, each tagged first as terminated by the launcher (so no poll, of
        this process or another, takes its unfinished jobs as lost); ids already gone are ignored."""
        if not instance_ids:
            return
        self._tag_terminated_by_launcher(instance_ids)
        try:
            self.aws.call("terminate_instances", InstanceIds=list(instance_ids))
        except AwsApiError as exc:
            if exc.code != "InvalidInstanceID.NotFound":
                raise
            if len(instance_ids) > 1:  # one of them is gone already: terminate the others one by one
                for iid in instance_ids:
                    self.terminate([iid])
            return
        log.info("terminated instances %s", ", ".join(instance_ids))

    def _tag_terminated_by_launcher(self, instance_ids: Sequence[str]) -> None:
        """The ``hydra-launcher:terminated-by`` tag on instances about to be terminated; ids
        already gone are skipped. Any other error is raised: nothing is terminated untagged."""
        tags = [{"Key": TAG_TERMINATED_BY, "Value": TERMINATED_BY_LAUNCHER}]
        try:
            self.aws.call("create_tags", Resources=list(instance_ids), Tags=tags)
        except AwsApiError as exc:
            if exc.code != "InvalidInstanceID.NotFound":
                raise
            if len(instance_ids) > 1:  # one of them is gone already: tag the others one by one
                for iid in instance_ids:
                    self._tag_terminated_by_launcher([iid])

    def undo_launch(self, instance_ids: Sequence[str]) -> bool:
        """A launch failed half way: terminate what it started, without hiding the original error.
        Whether they were terminated."""
        if not instance_ids:
            return True
        log.error("launch failed: terminating the %d instances this launch started", len(instance_ids))
        try:
            self.terminate(instance_ids)
        except Exception as exc:  # noqa: BLE001 - reported; the launch error is what propagates
            log.error(
                "could not terminate %s (%s): terminate them yourself or run "
                "`python -m launcher_core.backends.ec2 cleanup --terminate`",
                ", ".join(instance_ids),
                exc,
            )
            return False
        return True


def run_instances_args(
    s: Ec2Settings,
    *,
    sweep_id: str,
    run: str,
    group: str,
    user_data: str,
    instance_type: str,
    block_devices: Sequence[Mapping[str, Any]],
    intent: str | None = None,
) -> dict[str, Any]:
    """RunInstances arguments of one instance: tagged with its sweep, run, group and intent (how
    it is found again), self-terminating, IMDSv2 only, spot when asked for, idempotent by
    ClientToken (the intent's key, recorded before the call: the same in every retry)."""
    tags = {
        "Name": f"hydra-{sweep_id}-{group}"[:255],
        **{k: str(v) for k, v in s.tags.items()},
        TAG_SWEEP: sweep_id,
        TAG_RUN: run,
        TAG_GROUP: group,
        **({TAG_INTENT: intent} if intent else {}),
    }
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    args: dict[str, Any] = {
        "ImageId": s.ami,
        "InstanceType": instance_type,
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
        "ClientToken": f"hrl-{intent}" if intent else f"hrl-{run}-{group}",
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
    if block_devices:
        args["BlockDeviceMappings"] = copy.deepcopy(list(block_devices))
    if s.spot:
        args["InstanceMarketOptions"] = _spot_options(s.max_price)
    return args


def _spot_options(max_price: float | None) -> dict[str, Any]:
    options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    if max_price is not None:
        options["MaxPrice"] = f"{max_price:g}"
    return {"MarketType": "spot", "SpotOptions": options}


def job_status(
    job_id: str,
    handle: Ec2Handle,
    markers: Mapping[tuple[str, str], Mapping[str, str]],
    instances: Mapping[str, Mapping[str, Any]],
    failed_reason: Callable[[str, str], str],
) -> JobStatus:
    """A job's state from its markers (``{(run, job_id): {state: key}}``) and its instance's
    description, listed *after* the instances were described: an instance seen ended without a
    marker really ended without one. ``failed_reason(bucket, key)`` reads a ``.failed`` marker."""
    found = markers.get((handle.run, job_id), {})
    iid = handle.instance_id
    if "done" in found:
        return JobStatus(JobState.COMPLETED, host=iid)
    if "failed" in found:
        reason = failed_reason(handle.bucket, found["failed"])
        if SPOT_INTERRUPTION in reason:  # its agent stopped it (or never started it) on a spot notice
            return JobStatus.lost(LossCause.INSTANCE_TERMINATED, reason, iid)
        return JobStatus(JobState.FAILED, reason, host=iid)
    inst = instances.get(iid)
    if inst is None:
        if time.time() - float(handle.launched_at or 0) > NOT_FOUND_GRACE_S:
            reason = f"instance {iid} no longer exists and the job left no result"
            return JobStatus.lost(LossCause.INSTANCE_TERMINATED, reason)
        return JobStatus(JobState.SUBMITTED, host=iid)
    state = inst.get("State", {}).get("Name", "unknown")
    if state in ENDED_INSTANCE_STATES:
        why = inst.get("StateReason", {}).get("Message") or inst.get("StateTransitionReason") or "no reason given"
        reason = f"instance {iid} is {state} ({why}) and the job left no result"
        cause = loss_cause(inst)
        if cause is not None:
            return JobStatus.lost(cause, reason, iid)
        return JobStatus(JobState.FAILED, reason, iid)
    if "running" in found:
        return JobStatus(JobState.RUNNING, host=iid)
    return JobStatus(JobState.SUBMITTED, host=iid)


def loss_cause(instance: Mapping[str, Any]) -> LossCause | None:
    """Why an ended instance's unfinished jobs are lost to the machine (run again), or None when
    they failed: AWS ended it (state reason ``Server.*``: a spot interruption, a hardware
    retirement), or a terminate call the launcher did not make did (``Client.UserInitiatedShutdown``
    on an instance without the launcher's ``hydra-launcher:terminated-by`` tag: the console,
    another tool). Not the instance's own shutdown (``Client.InstanceInitiatedShutdown``), nor
    the launcher's own terminations (cancel, a failed launch, stray cleanup)."""
    code = str(instance.get("StateReason", {}).get("Code") or "")
    if code.startswith(AWS_REASON_PREFIX):
        return LossCause.INSTANCE_TERMINATED
    tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
    if code == USER_TERMINATED and TAG_TERMINATED_BY not in tags:
        return LossCause.TERMINATED_OUTSIDE
    return None
