"""One settings source per launcher: the Hydra structured config.

Each launcher's settings are declared once, as the config dataclass registered in Hydra's
ConfigStore (``hydra_plugins.remote_launcher.config``): its fields and defaults are the only list
of keys there is. A backend's validated settings class derives from that dataclass and adds only
checks and helpers; :func:`settings_from_mapping` builds it from ``hydra.launcher`` (a DictConfig
at launch time, or the plain dict the state store keeps for the pull daemon) and rejects an
unknown key the same way on every launcher, naming it.

What several launchers can do has one key on all of them (:data:`ENV_VARS`, :data:`SETUP_COMMANDS`,
``python``, ``container``); an earlier spelling is still read through :func:`one_spelling`, which
notes it once as deprecated and refuses it beside a different value under the new key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from launcher_core.errors import ConfigError

S = TypeVar("S")
log = logging.getLogger("launcher_core.settings")


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


# --- one vocabulary across launchers -------------------------------------------------------------
#: the keys every launcher that has the concept spells the same way (docs/launchers.md, "Settings
#: every launcher spells the same")
ENV_VARS = "env_vars"  # environment variables of every job: {NAME: value}
SETUP_COMMANDS = "setup_commands"  # shell lines run where the jobs run, in the shell that then starts them


@dataclass(frozen=True)
class Spelling:
    """A setting's value and the key it was given under: messages name the key the user wrote."""

    key: str
    value: Any


class DeprecationNotes:
    """One log line per old key per process (a launch is one process), however often the settings
    are built: ``hydra.launcher.env.vars is deprecated: use hydra.launcher.env_vars``."""

    def __init__(self) -> None:
        self.given: set[str] = set()

    def note(self, old: str, new: str) -> None:
        line = f"{old} is deprecated: use {new}"
        if line not in self.given:
            self.given.add(line)
            log.warning(line)


NOTES = DeprecationNotes()


def is_unset(value: Any) -> bool:
    """A new key left at its empty default (``null``, ``{}``, ``[]``, ``""``)."""
    return value is None or (isinstance(value, (Mapping, list, tuple, str)) and not value)


def one_spelling(
    new: str,
    new_value: Any,
    old: str,
    old_value: Any,
    *,
    prefix: str = "hydra.launcher",
    deprecated: bool = True,
    notes: DeprecationNotes = NOTES,
) -> Spelling:
    """The value of a setting that also has an older spelling ``old``: the new key's, else the old
    key's (noted once as deprecated unless ``deprecated`` is false: another tool's spelling kept on
    purpose). An old list key defaults to null, so an explicit empty one (``setup=[]`` to clear
    what a preset sets under the new key) counts as given; an old mapping defaults to ``{}`` (Hydra
    adds ``+...env.NAME=value`` to a mapping only), so empty is not given. Both given with
    different values is a ConfigError naming both keys (never the values: they may be secrets)."""
    if old_value is None or (isinstance(old_value, Mapping) and not old_value):
        return Spelling(new, new_value)
    if not is_unset(new_value) and plain(new_value) != plain(old_value):
        raise ConfigError(
            f"{prefix}.{old} and {prefix}.{new} are the same setting and both are set, to different values: "
            f"keep {prefix}.{new} only ({old} is its {'old' if deprecated else 'other'} spelling)"
        )
    if deprecated:
        notes.note(f"{prefix}.{old}", f"{prefix}.{new}")
    return Spelling(old, old_value)
