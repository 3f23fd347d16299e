"""``hydra.launcher`` of the ec2 launcher, validated; errors name the key."""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from launcher_core.backends.ec2.schema import Ec2LauncherConf
from launcher_core.errors import ConfigError
from launcher_core.resources import check_resources_from
from launcher_core.resources import instance_type as instance_type_value
from launcher_core.settings import ENV_VARS, one_spelling, setting_names, settings_from_mapping
from launcher_core.validation import env_vars

RESERVED_TAG_PREFIXES = ("aws:", "hydra-launcher:")
CREDENTIAL_ENV_NAMES = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_SECRET_KEY"}
)
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_AWS_ID = {"security_group_ids": re.compile(r"^sg-[0-9a-f]+$"), "subnet_id": re.compile(r"^subnet-[0-9a-f]+$")}
#: what ``resources_from`` may set per job on ec2: jobs are grouped by instance type
RESOURCES = {"instance_type": instance_type_value}
#: the settings a backend rebuilt from the state store needs to poll, fetch, cancel and clean
#: (where the bucket and the instances are, how to call AWS); ``ami`` is checked by every build.
#: Never ``env_vars`` (``env``), ``setup_commands``, ``tags`` or anything else only starting instances reads.
STORED_KEYS = (
    "ami",
    "s3_bucket",
    "s3_prefix",
    "region",
    "endpoint_url",
    "api_retries",
    "api_retry_base_s",
    "poll_interval_s",
)


@dataclass
class Ec2Settings(Ec2LauncherConf):
    """``hydra.launcher`` of the ec2 launcher, validated. Its keys and defaults are those of
    ``Ec2LauncherConf`` (the one settings source); this class adds the checks and helpers."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Ec2Settings:
        """Build and validate from ``hydra.launcher`` (DictConfig or dict); errors name the key."""
        settings = settings_from_mapping(cls, values, "ec2")
        settings.validate()
        return settings

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (what :func:`from_mapping` takes back)."""
        names = set(setting_names(Ec2LauncherConf))
        return {k: v for k, v in dataclasses.asdict(self).items() if k in names}

    def stored_config(self) -> dict[str, Any]:
        """What the sweep's state store keeps (:data:`STORED_KEYS`): enough for
        :func:`from_mapping` to rebuild a backend that polls, fetches, cancels and cleans."""
        return {key: getattr(self, key) for key in STORED_KEYS}

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
        self.resources_from = check_resources_from(self.resources_from, RESOURCES)


def setting_key(name: str) -> str:
    """The user-facing key of a setting, for messages."""
    return f"hydra.launcher.{name}"


def _validate_required(s: Ec2Settings) -> None:
    if not isinstance(s.ami, str) or not _AMI.match(s.ami):
        raise ConfigError(
            f"{setting_key('ami')} is required: the id of a Linux AMI in your region (ami-...), got {s.ami!r}"
        )
    if not isinstance(s.s3_bucket, str) or not _BUCKET.match(s.s3_bucket):
        raise ConfigError(
            f"{setting_key('s3_bucket')} is required: the name of an existing S3 bucket that both this machine and "
            f"the instances can use, got {s.s3_bucket!r}"
        )
    for name in ("instance_type", "python"):
        value = getattr(s, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{setting_key(name)} must be a non-empty string, got {value!r}")
    try:
        if not shlex.split(s.python):
            raise ValueError("empty")
    except ValueError as exc:
        raise ConfigError(
            f"{setting_key('python')} must be a command like 'python3', got {s.python!r} ({exc})"
        ) from exc


def _check_number(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0, strict: bool = True) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{setting_key(name)} must be {kind}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{setting_key(name)} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


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
            raise ConfigError(f"{setting_key(name)} must be true or false, got {getattr(s, name)!r}")
    if s.max_price is not None:
        _check_number("max_price", s.max_price)
        if not s.spot:
            raise ConfigError(
                f"{setting_key('max_price')} is set but {setting_key('spot')} is false: set spot=true or drop max_price"
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
            f"{setting_key('remote_dir')} must be an absolute directory other than '/', without '~', '$', quotes or "
            f"'..', e.g. /var/tmp/hydra-remote-launcher; got {remote!r}"
        )
    if not isinstance(s.s3_prefix, str) or ".." in s.s3_prefix.split("/") or not s.s3_prefix.isprintable():
        raise ConfigError(
            f"{setting_key('s3_prefix')} must be a plain key prefix like 'team/sweeps', got {s.s3_prefix!r}"
        )
    if s.endpoint_url is not None and not re.match(r"^https?://[^\s]+$", str(s.endpoint_url)):
        raise ConfigError(f"{setting_key('endpoint_url')} must be an http(s) URL, got {s.endpoint_url!r}")
    for name in ("setup_commands", "code_excludes", "security_group_ids"):
        value = getattr(s, name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{setting_key(name)} must be a list of non-empty strings, got {value!r}")
    for name, pattern in _AWS_ID.items():
        values = getattr(s, name)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not pattern.match(str(value)):
                raise ConfigError(f"{setting_key(name)}: {value!r} is not a valid id ({pattern.pattern})")
    if s.code_dir is not None and not Path(s.code_dir).expanduser().is_dir():
        raise ConfigError(f"{setting_key('code_dir')} must be an existing directory, got {s.code_dir!r}")


def _validate_env_and_tags(s: Ec2Settings) -> None:
    given = one_spelling(ENV_VARS, s.env_vars, "env", s.env)
    s.env_vars = dict(env_vars(setting_key(given.key), given.value))
    if given.key == "env":
        s.env = dict(s.env_vars)
    for name in s.env_vars:
        if name.upper() in CREDENTIAL_ENV_NAMES:
            raise ConfigError(
                f"{setting_key(given.key)}.{name}: credentials are never shipped to instances; give them an IAM role "
                f"with {setting_key('iam_instance_profile')} instead"
            )
    if not isinstance(s.tags, dict):
        raise ConfigError(f"{setting_key('tags')} must be a mapping key: value, got {s.tags!r}")
    for key, value in s.tags.items():
        if not isinstance(key, str) or not key or len(key) > 128 or key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise ConfigError(
                f"{setting_key('tags')}: {key!r} is not allowed (1-128 characters, not starting with aws: or "
                "hydra-launcher:)"
            )
        if len(str(value)) > 256:
            raise ConfigError(f"{setting_key('tags')}.{key}: values are limited to 256 characters")
