"""Pre-flight of ``ec2``, before anything is uploaded or started: AWS credentials are there, the
AMI exists in the region, the bucket answers and takes a write (a marker object put and deleted
under ``s3_prefix``), the instance profile exists (IAM), and the region offers the instance type.
See docs/ec2.md ("Pre-flight").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from launcher_core.backends.ec2.settings import setting_key
from launcher_core.errors import LauncherError
from launcher_core.preflight import FAIL, OK, WARN, Check, PreflightRequest, fingerprint

if TYPE_CHECKING:
    from launcher_core.backends.ec2.backend import Ec2Backend

_DENIED = ("AccessDenied", "UnauthorizedOperation", "AccessDeniedException")


def preflight(backend: Ec2Backend, request: PreflightRequest) -> list[Check]:
    s = backend.settings
    host = f"ec2 {s.region or 'default region'}"
    key = fingerprint(
        "ec2",
        s.region,
        s.ami,
        s.s3_bucket,
        s.s3_prefix,
        s.iam_instance_profile,
        backend.instance_types_in_use(),
        s.endpoint_url,
    )
    if request.is_cached(host, key):
        return []
    try:
        backend._connect()
        host = f"ec2 {backend.region}"
    except LauncherError as exc:
        return [Check("region", host, FAIL, str(exc), f"set {setting_key('region')}", key)]
    creds = backend._session.get_credentials()
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
    for check in (_ami, _bucket, _profile, _instance_type):
        rows.append(_guarded(check, backend, host, key))
    return rows


def _guarded(check: Callable[[Ec2Backend, str, str], Check], backend: Ec2Backend, host: str, key: str) -> Check:
    """A check whose AWS call failed in an unexpected way becomes a failed row naming the call."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return check(backend, host, key)
    except (ClientError, BotoCoreError, LauncherError) as exc:
        name = check.__name__.lstrip("_").replace("_", " ")
        return Check(name, host, FAIL, f"{type(exc).__name__}: {exc}", "", key)


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) or str(getattr(exc, "code", ""))


def _ami(backend: Ec2Backend, host: str, key: str) -> Check:
    from launcher_core.errors import ConfigError

    try:
        image = backend._check_ami()
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


def _bucket(backend: Ec2Backend, host: str, key: str) -> Check:
    from botocore.exceptions import ClientError

    bucket = backend.settings.s3_bucket
    try:
        backend._s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return Check(
            "bucket",
            host,
            FAIL,
            f"{setting_key('s3_bucket')}={bucket!r} cannot be reached ({_code(exc) or exc})",
            "create the bucket (`aws s3 mb s3://NAME`) or fix the name; you need read/write access to it",
            key,
        )
    prefix = backend.settings.s3_prefix.strip("/")
    probe = f"{prefix}/.hrl-preflight-{uuid.uuid4().hex}" if prefix else f".hrl-preflight-{uuid.uuid4().hex}"
    try:
        backend._s3.put_object(Bucket=bucket, Key=probe, Body=b"")
        backend._s3.delete_object(Bucket=bucket, Key=probe)
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


def _profile(backend: Ec2Backend, host: str, key: str) -> Check:
    from botocore.exceptions import ClientError

    profile = backend.settings.iam_instance_profile
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
    iam = backend._session.client("iam", endpoint_url=backend.settings.endpoint_url or None)
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


def _instance_type(backend: Ec2Backend, host: str, key: str) -> Check:
    """Every instance type the launch starts (``instance_type``, or each job's own with
    ``resources_from``) is offered in the region: one call."""
    types = backend.instance_types_in_use()
    offers = backend._ec2_call(
        "describe_instance_type_offerings",
        LocationType="region",
        Filters=[{"Name": "instance-type", "Values": types}],
    ).get("InstanceTypeOfferings", [])
    missing = [t for t in types if t not in {o.get("InstanceType") for o in offers}]
    if not missing:
        offered = f"{', '.join(types)} {'is' if len(types) == 1 else 'are'} offered"
        return Check("instance type", host, OK, offered, "", key)
    per_job = "instance_type" in backend.settings.resources_from and missing[0] != backend.settings.instance_type
    name = "hydra.launcher.resources_from.instance_type (a job's)" if per_job else setting_key("instance_type")
    return Check(
        "instance type",
        host,
        FAIL,
        f"{name}={missing[0]!r} is not offered in {backend.region}",
        "pick a type this region offers (`aws ec2 describe-instance-type-offerings`) or another region",
        key,
    )
