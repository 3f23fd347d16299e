"""Small checks of user settings; every failure names the full config key and the value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from launcher_core.errors import ConfigError


def check_positive(key: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key} must be {bound}, got {value!r}")


def check_optional_positive(key: str, value: Any, *, integer: bool = False) -> None:
    if value is not None:
        check_positive(key, value, integer=integer)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_vars(key: str, value: Any) -> list[tuple[str, str]]:
    """Environment variables of the jobs (``env``, ``env.vars``, ``container.env``): a mapping of
    valid names to plain values (booleans as ``true``/``false``), in order."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping NAME: value, got {value!r}")
    out = []
    for name, val in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not a valid environment variable name")
        if val is None or isinstance(val, (Mapping, list)) or "\0" in str(val):
            raise ConfigError(f"{key}.{name} must be a plain value, got {val!r}")
        out.append((name, str(val).lower() if isinstance(val, bool) else str(val)))
    return out
