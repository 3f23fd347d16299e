"""One settings source per launcher: the Hydra structured config.

Each launcher's settings are declared once, as the config dataclass registered in Hydra's
ConfigStore (``hydra_plugins.remote_launcher.config``): its fields and defaults are the only list
of keys there is. A backend's validated settings class derives from that dataclass and adds only
checks and helpers; :func:`settings_from_mapping` builds it from ``hydra.launcher`` (a DictConfig
at launch time, or the plain dict the state store keeps for the pull daemon) and rejects an
unknown key the same way on every launcher, naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from launcher_core.errors import ConfigError

S = TypeVar("S")


def plain(values: Any) -> Any:
    """Plain Python containers from a (possibly OmegaConf) value, recursively."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(values, (DictConfig, ListConfig)):
        return OmegaConf.to_container(values, resolve=True)
    if isinstance(values, Mapping):
        return {k: plain(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [plain(v) for v in values]
    return values


def setting_names(cls: type) -> list[str]:
    """The user-facing keys of a settings dataclass (``_target_`` and other ``_`` names left out)."""
    return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def reject_unknown(cls: type, values: Mapping[str, Any], launcher: str, prefix: str = "hydra.launcher") -> None:
    """A ConfigError naming the first key of ``values`` that ``cls`` does not declare."""
    known = set(setting_names(cls))
    unknown = sorted(str(k) for k in values if k not in known and not str(k).startswith("_"))
    if unknown:
        raise ConfigError(
            f"{prefix}.{unknown[0]} is not a setting of the {launcher} launcher; known settings: "
            + ", ".join(sorted(known))
        )


def settings_from_mapping(
    cls: type[S], values: Mapping[str, Any], launcher: str, prefix: str = "hydra.launcher"
) -> S:
    """``cls`` (a dataclass) from ``values``: unknown keys refused, missing keys at their
    declared defaults. Checking the values is the caller's (the settings class's) job."""
    values = plain(values)
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix} must be a mapping of settings, got {values!r}")
    reject_unknown(cls, values, launcher, prefix)
    known = set(setting_names(cls))
    return cls(**{k: v for k, v in values.items() if k in known})
