"""``ec2``: run a sweep's jobs on EC2 instances that terminate themselves when done; code,
payloads, outputs and state markers travel through S3, credentials never leave this machine.

Design: docs/ec2.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import gzip
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import secrets
import shlex
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from launcher_core.backends.base import Backend
from launcher_core.errors import BackendError, ConfigError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, JobSpec, JobState, JobStatus, PullFilter, SweepInfo
from launcher_core.remote.workspace import runtime_cwd

log = logging.getLogger("launcher_core.ec2")

TAG_SWEEP = "hydra-launcher:sweep-id"
TAG_RUN = "hydra-launcher:run"
TAG_GROUP = "hydra-launcher:group"
RESERVED_TAG_PREFIXES = ("aws:", "hydra-launcher:")
CREDENTIAL_ENV_NAMES = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_SECRET_KEY"}
)
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
# An instance may be missing from DescribeInstances right after RunInstances (eventual consistency).
NOT_FOUND_GRACE_S = 300.0
DEFAULT_EXCLUDES = (
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
    "node_modules",
    "*.egg-info",
    "outputs",
    "multirun",
    ".launcher",
    ".env",
)
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AWS_ID = {"security_group_ids": re.compile(r"^sg-[0-9a-f]+$"), "subnet_id": re.compile(r"^subnet-[0-9a-f]+$")}
_QUIET_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")


# --- settings ------------------------------------------------------------------------------
@dataclass
class Ec2Settings:
    """Validated ``hydra.launcher`` settings of the ec2 launcher (see ``Ec2LauncherConf``)."""

    ami: str | None = None
    s3_bucket: str | None = None
    region: str | None = None
    instance_type: str = "t3.medium"
    key_name: str | None = None
    iam_instance_profile: str | None = None
    security_group_ids: list[str] = field(default_factory=list)
    subnet_id: str | None = None
    s3_prefix: str = "hydra-remote-launcher"
    spot: bool = False
    max_price: float | None = None
    root_volume_gb: int | None = None
    jobs_per_instance: int = 1
    max_instances: int = 10
    max_runtime_min: float = 720.0
    setup_commands: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    endpoint_url: str | None = None
    wait: bool = True
    python: str = "python3"
    remote_dir: str = "/var/tmp/hydra-remote-launcher"
    code_dir: str | None = None
    code_excludes: list[str] = field(default_factory=list)
    max_code_mb: float = 200.0
    sync_interval_s: float = 60.0
    poll_interval_s: float = 10.0
    kill_grace_s: float = 20.0
    api_retries: int = 6
    api_retry_base_s: float = 1.0
    skip_completed: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Ec2Settings:
        """Build and validate from ``hydra.launcher`` (DictConfig or dict); errors name the key."""
        plain = _plain(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in plain if k not in known and not k.startswith("_"))
        if unknown:
            raise ConfigError(
                f"hydra.launcher.{unknown[0]} is not a setting of the ec2 launcher; known settings: "
                + ", ".join(sorted(known))
            )
        settings = cls(**{k: v for k, v in plain.items() if k in known})
        settings.validate()
        return settings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def python_cmd(self) -> list[str]:
        return shlex.split(self.python)

    @property
    def max_runtime_s(self) -> int:
        return max(1, math.ceil(self.max_runtime_min * 60))

    def validate(self) -> None:
        _validate_required(self)
        _validate_numbers(self)
        _validate_strings(self)
        _validate_env_and_tags(self)


def _plain(values: Any) -> Any:
    """Plain Python containers from a (possibly OmegaConf) mapping, recursively."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(values, (DictConfig, ListConfig)):
        return OmegaConf.to_container(values, resolve=True)
    if isinstance(values, Mapping):
        return {k: _plain(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [_plain(v) for v in values]
    return values


def _key(name: str) -> str:
    return f"hydra.launcher.{name}"


def _validate_required(s: Ec2Settings) -> None:
    if not isinstance(s.ami, str) or not _AMI.match(s.ami):
        raise ConfigError(f"{_key('ami')} is required: the id of a Linux AMI in your region (ami-...), got {s.ami!r}")
    if not isinstance(s.s3_bucket, str) or not _BUCKET.match(s.s3_bucket):
        raise ConfigError(
            f"{_key('s3_bucket')} is required: the name of an existing S3 bucket that both this machine and "
            f"the instances can use, got {s.s3_bucket!r}"
        )
    for name in ("instance_type", "python"):
        value = getattr(s, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{_key(name)} must be a non-empty string, got {value!r}")
    try:
        if not shlex.split(s.python):
            raise ValueError("empty")
    except ValueError as exc:
        raise ConfigError(f"{_key('python')} must be a command like 'python3', got {s.python!r} ({exc})") from exc


def _check_number(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0, strict: bool = True) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{_key(name)} must be {kind}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{_key(name)} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def _validate_numbers(s: Ec2Settings) -> None:
    _check_number("jobs_per_instance", s.jobs_per_instance, integer=True)
    _check_number("max_instances", s.max_instances, integer=True)
    _check_number("api_retries", s.api_retries, integer=True)
    if s.root_volume_gb is not None:
        _check_number("root_volume_gb", s.root_volume_gb, integer=True)
    for name in ("max_runtime_min", "sync_interval_s", "poll_interval_s", "max_code_mb"):
        _check_number(name, getattr(s, name))
    for name in ("kill_grace_s", "api_retry_base_s"):
        _check_number(name, getattr(s, name), strict=False)
    for name in ("spot", "wait", "skip_completed"):
        if not isinstance(getattr(s, name), bool):
            raise ConfigError(f"{_key(name)} must be true or false, got {getattr(s, name)!r}")
    if s.max_price is not None:
        _check_number("max_price", s.max_price)
        if not s.spot:
            raise ConfigError(
                f"{_key('max_price')} is set but {_key('spot')} is false: set spot=true or drop max_price"
            )


def _validate_strings(s: Ec2Settings) -> None:
    remote = s.remote_dir
    if (
        not isinstance(remote, str)
        or not remote.startswith("/")
        or remote.rstrip("/") == ""
        or any(c in remote for c in "~$`\\\"'")
        or not remote.isprintable()
        or ".." in PurePosixPath(remote).parts
    ):
        raise ConfigError(
            f"{_key('remote_dir')} must be an absolute directory other than '/', without '~', '$', quotes or "
            f"'..', e.g. /var/tmp/hydra-remote-launcher; got {remote!r}"
        )
    if not isinstance(s.s3_prefix, str) or ".." in s.s3_prefix.split("/") or not s.s3_prefix.isprintable():
        raise ConfigError(f"{_key('s3_prefix')} must be a plain key prefix like 'team/sweeps', got {s.s3_prefix!r}")
    if s.endpoint_url is not None and not re.match(r"^https?://[^\s]+$", str(s.endpoint_url)):
        raise ConfigError(f"{_key('endpoint_url')} must be an http(s) URL, got {s.endpoint_url!r}")
    for name in ("setup_commands", "code_excludes", "security_group_ids"):
        value = getattr(s, name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{_key(name)} must be a list of non-empty strings, got {value!r}")
    for name, pattern in _AWS_ID.items():
        values = getattr(s, name)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not pattern.match(str(value)):
                raise ConfigError(f"{_key(name)}: {value!r} is not a valid id ({pattern.pattern})")
    if s.code_dir is not None and not Path(s.code_dir).expanduser().is_dir():
        raise ConfigError(f"{_key('code_dir')} must be an existing directory, got {s.code_dir!r}")


def _validate_env_and_tags(s: Ec2Settings) -> None:
    if not isinstance(s.env, dict):
        raise ConfigError(f"{_key('env')} must be a mapping NAME: value, got {s.env!r}")
    for name, value in s.env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigError(f"{_key('env')}: {name!r} is not a valid environment variable name")
        if name.upper() in CREDENTIAL_ENV_NAMES:
            raise ConfigError(
                f"{_key('env')}.{name}: credentials are never shipped to instances; give them an IAM role "
                f"with {_key('iam_instance_profile')} instead"
            )
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{_key('env')}.{name} must be a string, got {value!r}")
    if not isinstance(s.tags, dict):
        raise ConfigError(f"{_key('tags')} must be a mapping key: value, got {s.tags!r}")
    for key, value in s.tags.items():
        if not isinstance(key, str) or not key or len(key) > 128 or key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise ConfigError(
                f"{_key('tags')}: {key!r} is not allowed (1-128 characters, not starting with aws: or hydra-launcher:)"
            )
        if len(str(value)) > 256:
            raise ConfigError(f"{_key('tags')}.{key}: values are limited to 256 characters")


# --- code snapshot -------------------------------------------------------------------------
def _excluded(rel: PurePosixPath, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if "/" in pattern.strip("/"):
            if fnmatch.fnmatch(rel.as_posix(), pattern.strip("/")):
                return True
        elif fnmatch.fnmatch(rel.name, pattern.strip("/")):
            return True
    return False


def _walk_files(root: Path, patterns: Sequence[str], skip: Sequence[Path]) -> Iterator[tuple[Path, PurePosixPath]]:
    """Regular files under ``root`` (sorted, so the archive is reproducible), minus excludes."""
    skip_resolved = {p.resolve() for p in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = PurePosixPath(here.relative_to(root).as_posix())
        dirnames[:] = sorted(
            d for d in dirnames if not _excluded(rel_dir / d, patterns) and (here / d).resolve() not in skip_resolved
        )
        for name in sorted(filenames):
            path = here / name
            if path.is_file() and not _excluded(rel_dir / name, patterns):
                yield path, rel_dir / name


def build_snapshot(
    code_dir: Path,
    archive: Path,
    *,
    excludes: Sequence[str],
    skip: Sequence[Path],
    max_bytes: int,
    check: Callable[[bytes, str], None],
) -> int:
    """Write ``code/`` (the user's code) and ``lib/`` (the job-side package,
    :func:`launcher_core.runtime.shipped_files`) into a reproducible tar.gz.

    ``check`` sees every file's content before it is added (the credential guard). Returns the
    number of files. Raises ``ConfigError`` when the code dir is larger than ``max_bytes``.
    """
    from launcher_core.runtime import shipped_files

    code_files = [
        (path, PurePosixPath("code") / rel)
        for path, rel in _walk_files(code_dir, [*DEFAULT_EXCLUDES, *excludes], skip)
    ]
    lib_files = [(path, PurePosixPath("lib") / rel) for path, rel in shipped_files()]
    total = count = 0
    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, name in [*code_files, *lib_files]:
            data = path.read_bytes()
            total += len(data) if name.parts[0] == "code" else 0
            if total > max_bytes:
                raise ConfigError(
                    f"the code dir {code_dir} is larger than {_key('max_code_mb')}="
                    f"{max_bytes / 2**20:g} MB: exclude data with {_key('code_excludes')} or point "
                    f"{_key('code_dir')} at the code only"
                )
            check(data, f"file {path}")
            st = path.stat()
            info = tarfile.TarInfo(name.as_posix())
            info.size = len(data)
            info.mode = (st.st_mode & 0o755) | 0o600
            info.mtime = int(st.st_mtime)
            tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- job placement -------------------------------------------------------------------------
def plan_groups(jobs: Sequence[JobSpec], jobs_per_instance: int, max_instances: int) -> list[list[JobSpec]]:
    """Split jobs over instances: ``ceil(N / jobs_per_instance)`` of them, at most ``max_instances``.

    When the cap bites, the jobs are spread evenly (contiguous, sizes differ by at most one) and
    each instance works through its longer queue ``jobs_per_instance`` at a time.
    """
    if not jobs:
        return []
    wanted = math.ceil(len(jobs) / jobs_per_instance)
    if wanted <= max_instances:
        return [list(jobs[i : i + jobs_per_instance]) for i in range(0, len(jobs), jobs_per_instance)]
    size, extra = divmod(len(jobs), max_instances)
    groups, start = [], 0
    for n in range(max_instances):
        end = start + size + (1 if n < extra else 0)
        groups.append(list(jobs[start:end]))
        start = end
    return groups


_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


def _omega_literal(text: str) -> str:
    """A string OmegaConf keeps verbatim (no ``${...}`` interpolation).

    OmegaConf reads ``\\${`` as an escaped ``${`` and, right before ``${`` only, ``\\\\`` as one
    backslash: so a run of backslashes there is doubled, then the ``${`` escaped. Elsewhere
    backslashes are literal and stay as they are.
    """
    return _INTERPOLATION_START.sub(lambda m: m.group(1) * 2 + "\\${", text)


# job entry keys only this machine uses (to localise fetched results); not sent to instances
_LOCAL_ONLY = ("rel", "remote_cwd", "local_cwd")


def instance_config(config: Any, *, sweep_dir: str, subdir: str, code_dir: str) -> Any:
    """The job config as the instance must see it: sweep dir, subdir and cwd of the instance.

    The local sweep dir often interpolates ``${now:...}``; resolving that on the instance would
    give another dir, so the instance-side values are written as literals.
    """
    from omegaconf import open_dict, read_write

    cfg = copy.deepcopy(config)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.sweep.dir = _omega_literal(sweep_dir)
        cfg.hydra.sweep.subdir = _omega_literal(subdir)
        cfg.hydra.runtime.cwd = _omega_literal(code_dir)
    return cfg


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
            f"{_key('root_volume_gb')}={size_gb} needs an EBS-backed AMI, but {ami} has no EBS root device: "
            f"drop {_key('root_volume_gb')} or use another {_key('ami')}"
        )
    for mapping in image.get("BlockDeviceMappings", []):
        snapshot_gb = mapping.get("Ebs", {}).get("VolumeSize")
        if mapping.get("DeviceName") == root and snapshot_gb and size_gb < int(snapshot_gb):
            raise ConfigError(
                f"{_key('root_volume_gb')}={size_gb} is smaller than the root snapshot of {ami} "
                f"({snapshot_gb} GB): set it to at least {snapshot_gb} or leave it unset"
            )
    return [{"DeviceName": root, "Ebs": {"VolumeSize": size_gb, "DeleteOnTermination": True}}]


def _new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


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


# --- the backend ---------------------------------------------------------------------------
class Ec2Backend(Backend):
    """Runs jobs on EC2 instances; see the module docstring for the flow and the S3 layout."""

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

    def stored_config(self) -> dict[str, Any]:
        """The settings :func:`from_config` rebuilds this backend from (kept in the state store).

        Refuses settings holding the active credentials, before anything writes them anywhere.
        """
        config = self.settings.to_dict()
        self.check_no_secrets(json.dumps(config).encode(), "hydra.launcher (env, setup_commands, python, tags)")
        return config

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
                f"{_key('region')} is not set and boto3 has no default region (AWS_DEFAULT_REGION or ~/.aws/config)"
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
                    raise AwsApiError(_api_error_text(operation, code, message, attempt), code) from exc
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
                    f"through {_key('iam_instance_profile')}, never through copied keys."
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
        payload = self._sweep_payload()
        base = self._base(sweep.sweep_id)
        with tempfile.TemporaryDirectory(prefix="hrl-ec2-") as tmp:
            archive = Path(tmp) / "snapshot.tar.gz"
            code_dir, count = self._build_snapshot(sweep, archive)
            self._snapshot_key = f"{base}/snapshot-{_sha256_file(archive)[:16]}.tar.gz"
            if not self._exists(self._snapshot_key):
                self._s3.upload_file(str(archive), self._bucket, self._snapshot_key)
                log.info("uploaded the code snapshot of %s (%d files) to s3://%s", code_dir, count, self._bucket)
        self._sweep_payload_key = f"{base}/sweep-{hashlib.sha256(payload).hexdigest()[:16]}.pkl"
        if not self._exists(self._sweep_payload_key):
            self._put(self._sweep_payload_key, payload, "the sweep payload")

    def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_bucket(Bucket=self.settings.s3_bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise ConfigError(
                f"{_key('s3_bucket')}={self.settings.s3_bucket!r} cannot be used ({code or exc}): create the "
                "bucket or fix the name; this machine and the instance role need read/write access to it"
            ) from exc

    def _check_ami(self) -> dict[str, Any]:
        """The AMI's description (DescribeImages); ConfigError if it does not exist here."""
        try:
            images = self._ec2_call("describe_images", ImageIds=[self.settings.ami]).get("Images", [])
        except AwsApiError as exc:
            if not str(exc.code).startswith("InvalidAMIID"):
                raise ConfigError(f"{_key('ami')}={self.settings.ami!r}: {exc}") from exc
            images = []
        if not images:
            raise ConfigError(f"{_key('ami')}={self.settings.ami!r} does not exist in region {self.region}")
        return dict(images[0])

    def _build_snapshot(self, sweep: SweepInfo, archive: Path) -> tuple[Path, int]:
        code_dir = Path(self.settings.code_dir).expanduser().resolve() if self.settings.code_dir else sweep.code_dir
        count = build_snapshot(
            Path(code_dir),
            archive,
            excludes=self.settings.code_excludes,
            skip=[sweep.sweep_dir],
            max_bytes=int(self.settings.max_code_mb * 2**20),
            check=self.check_no_secrets,
        )
        return Path(code_dir), count

    @property
    def _bucket(self) -> str:
        return str(self.settings.s3_bucket)

    def _sweep_payload(self) -> bytes:
        from launcher_core.runtime.worker import sweep_payload_bytes

        if self._task_function is None:
            raise BackendError(
                "this ec2 backend was rebuilt from a stored config: it can poll, fetch and cancel, not launch"
            )
        data = sweep_payload_bytes(self._task_function, self._hydra_context)
        self.check_no_secrets(data, "the sweep payload (task function, Hydra config and context)")
        return data

    # --- contract: submit -------------------------------------------------------------------
    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, dict[str, Any]]:
        """Upload payloads and plans, start the instances; all of them or none."""
        sweep = self._sweep
        if sweep is None or self._snapshot_key is None or self._sweep_payload_key is None:
            raise BackendError("ec2 backend: prepare() must run before submit()")
        if not jobs:
            return {}
        run = _new_run_id()
        base = self._base(sweep.sweep_id)
        groups = plan_groups(jobs, self.settings.jobs_per_instance, self.settings.max_instances)
        names = [f"g{n:03d}" for n in range(len(groups))]
        entries = self._upload_job_payloads(sweep, base, run, dict(zip(names, groups)))
        plan_keys = {
            name: self._upload_plan(sweep, base, run, name, group, entries) for name, group in zip(names, groups)
        }
        launched: dict[str, str] = {}
        try:
            for name in names:
                launched[name] = self._launch(sweep, base, run, name, plan_keys[name])
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

    def _upload_job_payloads(
        self, sweep: SweepInfo, base: str, run: str, groups: Mapping[str, Sequence[JobSpec]]
    ) -> dict[str, dict[str, Any]]:
        from launcher_core.runtime.worker import job_payload_bytes

        entries: dict[str, dict[str, Any]] = {}
        uploads: list[tuple[str, bytes, str]] = []
        for name, group in groups.items():
            remote_sweep, workspace = self._remote_paths(sweep, run, name)
            for spec in group:
                subdir = os.path.relpath(spec.output_dir, sweep.sweep_dir)
                if subdir == ".." or subdir.startswith("../") or os.path.isabs(subdir):
                    raise ConfigError(
                        f"job #{spec.idx}: its output dir {spec.output_dir} is outside the sweep dir "
                        f"{sweep.sweep_dir}; the ec2 launcher needs hydra.sweep.subdir inside hydra.sweep.dir"
                    )
                if spec.config is None:
                    raise BackendError(f"job #{spec.idx} has no composed config")
                remote_out = f"{remote_sweep}/{PurePosixPath(*Path(subdir).parts)}"
                cfg = instance_config(spec.config, sweep_dir=remote_sweep, subdir=subdir, code_dir=f"{workspace}/code")
                job_prefix = f"{base}/runs/{run}/jobs/{spec.job_id}"
                data = job_payload_bytes(cfg, spec.idx, f"{remote_out}/.launcher/result.pkl")
                spec.release_config()  # it is in the payload now: do not hold thousands of configs
                self.check_no_secrets(data, f"the payload of job #{spec.idx}")  # all checked before any upload
                uploads.append((f"{job_prefix}/job.pkl", data, f"the payload of job #{spec.idx}"))
                entries[spec.job_id] = {
                    "job_id": spec.job_id,
                    "idx": spec.idx,
                    "payload_key": f"{job_prefix}/job.pkl",
                    "output_dir": remote_out,
                    "out_prefix": f"{job_prefix}/out/",
                    # what fetch needs to point the pulled JobReturn at local paths
                    "rel": PurePosixPath(*Path(subdir).parts).as_posix(),
                    "remote_cwd": f"{workspace}/code",
                    "local_cwd": runtime_cwd(spec.config),
                }
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda u: self._put(*u), uploads))
        return entries

    def _upload_plan(
        self,
        sweep: SweepInfo,
        base: str,
        run: str,
        group: str,
        specs: Sequence[JobSpec],
        entries: Mapping[str, dict[str, Any]],
    ) -> str:
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
        key = f"{base}/runs/{run}/{group}/plan.json"
        self._put(key, json.dumps(plan, indent=1).encode(), f"the plan of instance group {group}")
        return key

    def render_user_data(self, sweep: SweepInfo, base: str, run: str, group: str, plan_key: str) -> str:
        """The user-data of one instance: the full script, or the S3 fetch stub if it is > 16 KB."""
        from launcher_core import ec2_userdata as ud

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
            **common, bootstrap=bootstrap, env=self.settings.env, setup_commands=self.settings.setup_commands
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
            raise ConfigError(f"even the user-data fetch stub exceeds 16 KB: shorten {_key('python')}")
        return stub

    def _launch(self, sweep: SweepInfo, base: str, run: str, group: str, plan_key: str) -> str:
        user_data = self.render_user_data(sweep, base, run, group, plan_key)
        response = self._ec2_call("run_instances", **self._run_instances_args(sweep, run, group, user_data))
        instance_id = str(response["Instances"][0]["InstanceId"])
        log.info("instance %s started for group %s of run %s", instance_id, group, run)
        return instance_id

    def _run_instances_args(self, sweep: SweepInfo, run: str, group: str, user_data: str) -> dict[str, Any]:
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
            "InstanceType": s.instance_type,
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
                self._fetch_job(handle["bucket"], handle["out_prefix"], local_dir, pull_filter)
                localize_result(local_dir / LAUNCHER_DIR / RESULT_FILE, handle, local_dir)

    def _fetch_job(self, bucket: str, prefix: str, dest: Path, pull_filter: PullFilter | None) -> None:
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
                if not private and pull_filter is not None and _filtered_out(rel, int(obj["Size"]), pull_filter):
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
    def clean(
        self,
        handles: Mapping[str, dict[str, Any]],
        *,
        sweep_id: str,
        sweep_handles: Mapping[str, dict[str, Any]] | None = None,
        dry_run: bool = False,
    ) -> Any:
        """Delete each job's objects (``runs/<run>/jobs/<job_id>/``: payload and synced outputs);
        with ``sweep_handles`` (every job of the sweep, all clean after this) everything left
        under ``PREFIX/SWEEP_ID/``: code tarball, sweep payload, plans, agent logs, markers.

        Markers stay until then: cancelling jobs still running on a shared instance reads them.
        Every prefix is checked to lie inside the sweep's own prefix before any call.
        """
        from launcher_core.backends.base import CleanReport

        base = self._clean_base(sweep_id)
        location = f"s3://{self._bucket}"
        prefixes = {job_id: self._clean_job_prefix(job_id, h, base) for job_id, h in handles.items()}
        report = CleanReport()
        report.jobs[location] = len(prefixes)
        for prefix in prefixes.values():
            report.add_target(location, prefix)
        if sweep_handles is not None:
            for handle in sweep_handles.values():
                self._check_handle_base(handle, base)
            report.add_target(location, f"{base}/")
        if dry_run:
            return report
        self._connect()
        try:
            for job_id, prefix in prefixes.items():
                self._delete_prefix(prefix)
                report.cleaned.add(job_id)  # what is gone so far is recorded even if a later call fails
            if sweep_handles is not None:
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
    """Rebuild the backend from :meth:`Ec2Backend.stored_config`: it can poll, fetch and cancel.

    ``code_dir`` only matters for launching and may be gone by the time results are pulled.
    """
    return Ec2Backend(Ec2Settings.from_mapping({**config, "code_dir": None}))


def _same_file(path: Path, size: int, mtime: float) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and abs(st.st_mtime - mtime) < 1e-3


def _filtered_out(rel: PurePosixPath, size: int, pull_filter: PullFilter) -> bool:
    """``pull --bare``: skip files above the size limit or matching an rsync-style exclude."""
    if pull_filter.max_size_bytes is not None and size > pull_filter.max_size_bytes:
        return True
    for pattern in pull_filter.exclude:
        bare = pattern.strip("/")
        if "/" in bare:
            parents = [rel.parents[i].as_posix() for i in range(len(rel.parts) - 1)]
            if any(fnmatch.fnmatch(p, bare) for p in [rel.as_posix(), *parents]):
                return True
        elif any(fnmatch.fnmatch(part, bare) for part in rel.parts):
            return True
    return False


def _api_error_text(operation: str, code: str, message: str, attempts: int) -> str:
    text = f"EC2 {operation} failed after {attempts} attempt{'s' if attempts > 1 else ''}: {code}: {message}"
    if code in ("InsufficientInstanceCapacity", "InsufficientHostCapacity"):
        text += (
            f". AWS has no capacity for this instance type here right now: try another "
            f"{_key('instance_type')}, another {_key('subnet_id')} (availability zone), or spot=false."
        )
    elif code in ("RequestLimitExceeded", "Throttling", "ThrottlingException"):
        text += f". The API kept throttling: raise {_key('api_retries')} or launch fewer instances at once."
    return text


# --- stray instances -----------------------------------------------------------------------
@dataclass
class StrayInstance:
    """An instance of this launcher still alive although no job of ours needs it."""

    instance_id: str
    sweep_id: str
    state: str
    launch_time: str
    why: str


def find_stray_instances(backend: Ec2Backend, home: Path | None = None) -> list[StrayInstance]:
    """Instances tagged by this launcher that belong to an unknown sweep or run no active job.

    An instance is needed while its sweep's state store shows an active (pending, submitted or
    running) job on it; everything else (sweep finished, sweep dir deleted, never recorded in
    this machine's sweep index) is reported.
    """
    from launcher_core.state import SweepIndex

    index = SweepIndex(home)
    try:
        sweep_dirs = {sweep_id: sweep_dir for sweep_id, sweep_dir, _b, _t in index.sweeps()}
    finally:
        index.close()
    active: dict[str, set[str] | None] = {}
    stray = []
    for iid, inst in sorted(backend.describe_sweep_instances().items()):
        state = inst.get("State", {}).get("Name", "unknown")
        sweep_id = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get(TAG_SWEEP, "")
        if state not in ACTIVE_INSTANCE_STATES:
            continue
        if sweep_id not in active:
            active[sweep_id] = _instances_with_active_jobs(sweep_dirs.get(sweep_id))
        needed_by = active[sweep_id]
        if needed_by is not None and iid in needed_by:
            continue
        why = _stray_reason(sweep_id in sweep_dirs, needed_by is not None)
        stray.append(StrayInstance(iid, sweep_id, state, str(inst.get("LaunchTime", "")), why))
    return stray


def _stray_reason(known_sweep: bool, has_store: bool) -> str:
    if not known_sweep:
        return "unknown sweep (not in this machine's sweep index)"
    if not has_store:
        return "the sweep has no state store any more"
    return "no active job of the sweep runs on it"


def _instances_with_active_jobs(sweep_dir: Path | None) -> set[str] | None:
    """Instance ids of the sweep's active jobs; None when there is no state store to ask."""
    from launcher_core.state import StateStore

    if sweep_dir is None or not StateStore.exists_in(sweep_dir):
        return None
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        job_rows = store.jobs(states=[JobState.PENDING, JobState.SUBMITTED, JobState.RUNNING])
    return {str(r.handle["instance_id"]) for r in job_rows if r.handle and r.handle.get("instance_id")}


def cleanup(backend: Ec2Backend, *, terminate: bool = False, home: Path | None = None) -> list[StrayInstance]:
    """Report (and with ``terminate`` also terminate) stray instances; see :func:`find_stray_instances`."""
    stray = find_stray_instances(backend, home)
    if terminate and stray:
        backend.terminate_instances([s.instance_id for s in stray])
    return stray


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m launcher_core.backends.ec2 cleanup [--terminate]``: list (or end) stray instances."""
    parser = argparse.ArgumentParser(prog="python -m launcher_core.backends.ec2")
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser("cleanup", help="list instances still running for finished or unknown sweeps")
    clean.add_argument("--terminate", action="store_true", help="terminate them too")
    clean.add_argument("--region", default=None)
    clean.add_argument("--endpoint-url", default=None)
    args = parser.parse_args(argv)
    settings = Ec2Settings(region=args.region, endpoint_url=args.endpoint_url)
    backend = Ec2Backend(settings)
    try:
        stray = cleanup(backend, terminate=args.terminate)
    finally:
        backend.close()
    for s in stray:
        print(f"{s.instance_id}\t{s.state}\t{s.sweep_id}\t{s.launch_time}\t{s.why}")
    verb = "terminated" if args.terminate else "found"
    print(f"{verb} {len(stray)} stray instance{'s' if len(stray) != 1 else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
