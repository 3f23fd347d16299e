"""AWS plumbing of the ec2 backend: the client (session, EC2 and S3 clients, retries, the
credential guard), tags, instance states, retryable errors, the root volume."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from launcher_core.backends.ec2.settings import Ec2Settings, setting_key
from launcher_core.errors import BackendError, ConfigError

TAG_SWEEP = "hydra-launcher:sweep-id"
TAG_RUN = "hydra-launcher:run"
TAG_GROUP = "hydra-launcher:group"
TAG_INTENT = "hydra-launcher:intent"  # the submission intent (launcher_core.intents) that started it
# put on an instance just before the launcher itself terminates it (cancel, a failed launch, stray
# cleanup): its unfinished jobs are then never taken as lost to a termination from outside
TAG_TERMINATED_BY = "hydra-launcher:terminated-by"
TERMINATED_BY_LAUNCHER = "launcher"
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

log = logging.getLogger("launcher_core.ec2")


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
    elif code == "IdempotentParameterMismatch":
        text += (
            ". An instance for these jobs was requested by the interrupted launch and AWS does not list it "
            "yet: run the same command again in a minute, and it is found and re-attached."
        )
    elif code in ("RequestLimitExceeded", "Throttling", "ThrottlingException"):
        text += f". The API kept throttling: raise {setting_key('api_retries')} or launch fewer instances at once."
    return text


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` when it has none)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class AwsClient:
    """One region's boto3 session with its EC2 and S3 clients, made on first use.

    EC2 calls go through :meth:`call`, which retries throttling, capacity and connection errors
    itself (botocore does not: a retried RunInstances keeps its ClientToken); S3 calls use
    botocore's standard retries. :meth:`check_no_secrets` is the guard every upload passes.
    """

    def __init__(self, settings: Ec2Settings, session: Any = None) -> None:
        self._settings = settings
        self._session = session
        self._ec2: Any = None
        self._s3: Any = None
        self._secrets: list[bytes] | None = None

    def connect(self) -> None:
        """Make the session and clients (once); ConfigError when no region is known."""
        if self._ec2 is not None:
            return
        import boto3
        from botocore.config import Config

        quiet_aws_loggers()
        session = self._session or boto3.session.Session(region_name=self._settings.region)
        if not session.region_name:
            raise ConfigError(
                f"{setting_key('region')} is not set and boto3 has no default region "
                "(AWS_DEFAULT_REGION or ~/.aws/config)"
            )
        self._session = session
        # EC2 calls are retried by call() (with ClientToken idempotency), not by botocore.
        ec2_cfg = Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60)
        s3_cfg = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=120)
        endpoint = self._settings.endpoint_url or None
        self._ec2 = session.client("ec2", endpoint_url=endpoint, config=ec2_cfg)
        self._s3 = session.client("s3", endpoint_url=endpoint, config=s3_cfg)

    @property
    def session(self) -> Any:
        """The boto3 session (credentials, region)."""
        self.connect()
        return self._session

    @property
    def region(self) -> str:
        return str(self.session.region_name)

    @property
    def s3(self) -> Any:
        """The S3 client."""
        self.connect()
        return self._s3

    def client(self, service: str, config: Any = None) -> Any:
        """A new client of the session for ``service`` at the configured endpoint (the caller closes it)."""
        return self.session.client(service, endpoint_url=self._settings.endpoint_url or None, config=config)

    def call(self, operation: str, **kwargs: Any) -> Any:
        """Call EC2, retrying throttling and capacity errors with exponential backoff and jitter."""
        from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

        self.connect()
        attempts = self._settings.api_retries
        for attempt in range(1, attempts + 1):
            try:
                return getattr(self._ec2, operation)(**kwargs)
            except ClientError as exc:
                code = error_code(exc) or "Unknown"
                message = exc.response.get("Error", {}).get("Message", str(exc))
                if code not in RETRYABLE_CODES or attempt == attempts:
                    raise AwsApiError(api_error_text(operation, code, message, attempt), code) from exc
                log.warning("EC2 %s: %s (attempt %d of %d); retrying", operation, code, attempt, attempts)
            except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
                if attempt == attempts:
                    raise AwsApiError(f"EC2 {operation} failed after {attempt} attempts: {exc}") from exc
                log.warning("EC2 %s: %s (attempt %d of %d); retrying", operation, exc, attempt, attempts)
            delay = min(self._settings.api_retry_base_s * 2 ** (attempt - 1), 30.0)
            time.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _credential_strings(self) -> list[bytes]:
        if self._secrets is None:
            creds = self.session.get_credentials()
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

    def close(self) -> None:
        """Close the clients; the next call makes new ones (the session stays)."""
        for client in (self._ec2, self._s3):
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._ec2 = self._s3 = None
