"""AWS plumbing of the ec2 backend: tags, instance states, retryable errors, the root volume."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from launcher_core.backends.ec2.settings import setting_key
from launcher_core.errors import BackendError, ConfigError

TAG_SWEEP = "hydra-launcher:sweep-id"
TAG_RUN = "hydra-launcher:run"
TAG_GROUP = "hydra-launcher:group"
RETRYABLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InternalError",
        "ServiceUnavailable",
        "Unavailable",
    }
)
ACTIVE_INSTANCE_STATES = ("pending", "running", "stopping", "stopped")
ENDED_INSTANCE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
_QUIET_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")


def root_volume_mapping(image: Mapping[str, Any], size_gb: int | None) -> list[dict[str, Any]]:
    """RunInstances ``BlockDeviceMappings`` resizing the AMI's root volume to ``size_gb`` GiB.

    Only size and DeleteOnTermination are given: type, snapshot and encryption stay the AMI's.
    The volume goes with the instance (results live in S3), and it cannot be smaller than the
    AMI's root snapshot, which EC2 would only refuse at RunInstances, after the uploads.
    """
    if size_gb is None:
        return []
    ami = image.get("ImageId", "the AMI")
    root = image.get("RootDeviceName")
    if image.get("RootDeviceType", "ebs") != "ebs" or not root:
        raise ConfigError(
            f"{setting_key('root_volume_gb')}={size_gb} needs an EBS-backed AMI, but {ami} has no EBS root device: "
            f"drop {setting_key('root_volume_gb')} or use another {setting_key('ami')}"
        )
    for mapping in image.get("BlockDeviceMappings", []):
        snapshot_gb = mapping.get("Ebs", {}).get("VolumeSize")
        if mapping.get("DeviceName") == root and snapshot_gb and size_gb < int(snapshot_gb):
            raise ConfigError(
                f"{setting_key('root_volume_gb')}={size_gb} is smaller than the root snapshot of {ami} "
                f"({snapshot_gb} GB): set it to at least {snapshot_gb} or leave it unset"
            )
    return [{"DeviceName": root, "Ebs": {"VolumeSize": size_gb, "DeleteOnTermination": True}}]


def quiet_aws_loggers() -> None:
    """botocore at DEBUG level logs signed request headers (the access key id): keep it at INFO+."""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


class AwsApiError(BackendError):
    """An AWS API call failed (after retries when the error was transient)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def api_error_text(operation: str, code: str, message: str, attempts: int) -> str:
    text = f"EC2 {operation} failed after {attempts} attempt{'s' if attempts > 1 else ''}: {code}: {message}"
    if code in ("InsufficientInstanceCapacity", "InsufficientHostCapacity"):
        text += (
            f". AWS has no capacity for this instance type here right now: try another "
            f"{setting_key('instance_type')}, another {setting_key('subnet_id')} (availability zone), or spot=false."
        )
    elif code in ("RequestLimitExceeded", "Throttling", "ThrottlingException"):
        text += f". The API kept throttling: raise {setting_key('api_retries')} or launch fewer instances at once."
    return text
