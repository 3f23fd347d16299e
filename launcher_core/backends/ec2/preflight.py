"""Pre-flight of ``ec2``, before anything is uploaded or started: AWS credentials are there, the
AMI exists in the region, the bucket answers and takes a write (a marker object put and deleted
under ``s3_prefix``), the instance profile exists (IAM), and the region offers the instance type.
See docs/ec2.md ("Pre-flight").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from launcher_core.backends.ec2.fleet import Fleet
from launcher_core.backends.ec2.settings import Ec2Settings, setting_key
from launcher_core.errors import LauncherError
from launcher_core.preflight import FAIL, OK, WARN, Check, PreflightRequest, fingerprint

_DENIED = ("AccessDenied", "UnauthorizedOperation", "AccessDeniedException")


@dataclass
class _Target:
    """What every check asks about: the fleet (AWS client and settings) and the instance types."""

    fleet: Fleet
    types: list[str]

    @property
    def settings(self) -> Ec2Settings:
        return self.fleet.settings


def preflight(fleet: Fleet, instance_types: Sequence[str], request: PreflightRequest) -> list[Check]:
    """The checks of a launch starting ``instance_types`` with ``fleet``'s settings."""
    s = fleet.settings
    aws = fleet.aws
    host = f"ec2 {s.region or 'default region'}"
    key = fingerprint(
        "ec2",
        s.region,
        s.ami,
        s.s3_bucket,
        s.s3_prefix,
        s.iam_instance_profile,
        list(instance_types),
        s.endpoint_url,
    )
    if request.is_cached(host, key):
        return []
    try:
        aws.connect()
        host = f"ec2 {aws.region}"
    except LauncherError as exc:
        return [Check("region", host, FAIL, str(exc), f"set {setting_key('region')}", key)]
    creds = aws.session.get_credentials()
    if creds is None:
        return [
            Check(
                "credentials",
                host,
                FAIL,
                "no AWS credentials found (environment, ~/.aws/credentials, SSO, instance role)",
                "run `aws configure` (or `aws sso login`), or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                key,
            )
        ]
    rows = [Check("credentials", host, OK, f"from {getattr(creds, 'method', 'boto3')}", "", key)]
    target = _Target(fleet, list(instance_types))
    for check in (_ami, _bucket, _profile, _instance_type):
        rows.append(_guarded(check, target, host, key))
    return rows


def _guarded(check: Callable[[_Target, str, str], Check], target: _Target, host: str, key: str) -> Check:
    """A check whose AWS call failed in an unexpected way becomes a failed row naming the call."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return check(target, host, key)
    except (ClientError, BotoCoreError, LauncherError) as exc:
        name = check.__name__.lstrip("_").replace("_", " ")
        return Check(name, host, FAIL, f"{type(exc).__name__}: {exc}", "", key)


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) or str(getattr(exc, "code", ""))


def _ami(target: _Target, host: str, key: str) -> Check:
    from launcher_core.errors import ConfigError

    try:
        image = target.fleet.describe_ami()
    except ConfigError as exc:
        return Check(
            "ami",
            host,
            FAIL,
            str(exc),
            f"use an AMI id of this region (AMIs are per region), or set {setting_key('region')} to the AMI's",
            key,
        )
    return Check("ami", host, OK, f"{image.get('ImageId')} ({image.get('Name') or 'no name'})", "", key)


def _bucket(target: _Target, host: str, key: str) -> Check:
    from botocore.exceptions import ClientError

    bucket = target.settings.s3_bucket
    s3 = target.fleet.aws.s3
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return Check(
            "bucket",
            host,
            FAIL,
            f"{setting_key('s3_bucket')}={bucket!r} cannot be reached ({_code(exc) or exc})",
            "create the bucket (`aws s3 mb s3://NAME`) or fix the name; you need read/write access to it",
            key,
        )
    prefix = target.settings.s3_prefix.strip("/")
    probe = f"{prefix}/.hrl-preflight-{uuid.uuid4().hex}" if prefix else f".hrl-preflight-{uuid.uuid4().hex}"
    try:
        s3.put_object(Bucket=bucket, Key=probe, Body=b"")
        s3.delete_object(Bucket=bucket, Key=probe)
    except ClientError as exc:
        return Check(
            "bucket",
            host,
            FAIL,
            f"{setting_key('s3_bucket')}={bucket!r} is not writable under {prefix or '/'} ({_code(exc) or exc})",
            f"grant s3:PutObject and s3:DeleteObject on arn:aws:s3:::{bucket}/{prefix}/* to your credentials",
            key,
        )
    return Check("bucket", host, OK, f"s3://{bucket}/{prefix} is writable", "", key)


def _profile(target: _Target, host: str, key: str) -> Check:
    from botocore.exceptions import ClientError

    profile = target.settings.iam_instance_profile
    if not profile:
        return Check(
            "instance profile",
            host,
            WARN,
            f"{setting_key('iam_instance_profile')} is not set: instances cannot reach S3 or terminate themselves",
            "",
            key,
        )
    name = profile.rsplit("/", 1)[-1] if profile.startswith("arn:") else profile
    iam = target.fleet.aws.client("iam")
    try:
        iam.get_instance_profile(InstanceProfileName=name)
    except ClientError as exc:
        code = _code(exc)
        if code in _DENIED:
            return Check("instance profile", host, WARN, f"not checked: {code} on iam:GetInstanceProfile", "", key)
        return Check(
            "instance profile",
            host,
            FAIL,
            f"{setting_key('iam_instance_profile')}={profile!r} does not exist ({code or exc})",
            "create it (docs/ec2.md, Requirements: S3 on the bucket, ec2:TerminateInstances) or fix the name",
            key,
        )
    finally:
        iam.close()
    return Check("instance profile", host, OK, name, "", key)


def _instance_type(target: _Target, host: str, key: str) -> Check:
    """Every instance type the launch starts (``instance_type``, or each job's own with
    ``resources_from``) is offered in the region: one call."""
    types = target.types
    offered = target.fleet.offered_types(types)
    missing = [t for t in types if t not in offered]
    if not missing:
        ok = f"{', '.join(types)} {'is' if len(types) == 1 else 'are'} offered"
        return Check("instance type", host, OK, ok, "", key)
    s = target.settings
    per_job = "instance_type" in s.resources_from and missing[0] != s.instance_type
    name = "hydra.launcher.resources_from.instance_type (a job's)" if per_job else setting_key("instance_type")
    return Check(
        "instance type",
        host,
        FAIL,
        f"{name}={missing[0]!r} is not offered in {target.fleet.aws.region}",
        "pick a type this region offers (`aws ec2 describe-instance-type-offerings`) or another region",
        key,
    )
