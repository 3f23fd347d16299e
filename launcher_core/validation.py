"""Small checks of user settings; every failure names the full config key and the value."""

from __future__ import annotations

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
