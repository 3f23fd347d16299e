"""The spill launcher's settings, checked before anything starts (``ConfigError`` names the key)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from launcher_core.errors import ConfigError


@dataclass(frozen=True)
class TargetSettings:
    """One entry of ``hydra.launcher.targets``."""

    name: str
    cluster: str
    max_jobs: int
    overrides: tuple[str, ...] = ()
    max_queue_wait_min: float | None = None
    max_cost_usd: float | None = None
    price_per_hour_usd: float | None = None
    position: int = 0  # its place in ``targets``

    @property
    def key(self) -> str:
        """How errors name it: ``hydra.launcher.targets[1]``."""
        return f"hydra.launcher.targets[{self.position}]"


@dataclass(frozen=True)
class SpillSettings:
    targets: tuple[TargetSettings, ...]
    require_all: bool = False
    retry_elsewhere: bool = False
    poll_interval_s: float = 1.0
    skip_completed: bool = False
    preflight: bool = True
    # what LaunchOptions reads of every launcher's settings (a spill launch always waits)
    wait: bool = True
    auto_pull: bool = False
    auto_pull_interval_s: float = 30.0
    notify: str | None = None


def spill_settings(params: Mapping[str, Any]) -> SpillSettings:
    """``hydra.launcher`` of ``hydra/launcher=spill``, checked."""
    raw = _plain(params.get("targets") or [])
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            "hydra.launcher.targets: give at least one target, e.g. "
            "[{cluster: local_gpus, max_jobs: 4}, {cluster: slurm_cpu, max_jobs: 64}]"
        )
    targets = tuple(_target(entry, i) for i, entry in enumerate(raw))
    seen: dict[str, int] = {}
    for t in targets:
        if t.name in seen:
            raise ConfigError(
                f"{t.key}: the name {t.name!r} is also targets[{seen[t.name]}]'s; give one of them "
                "another name (name: ...)"
            )
        seen[t.name] = t.position
    interval = params.get("poll_interval_s", 1.0)
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval <= 0:
        raise ConfigError(f"hydra.launcher.poll_interval_s must be a number > 0, got {interval!r}")
    return SpillSettings(
        targets=targets,
        require_all=_flag(params, "require_all", False),
        retry_elsewhere=_flag(params, "retry_elsewhere", False),
        poll_interval_s=float(interval),
        skip_completed=_flag(params, "skip_completed", False),
        preflight=_flag(params, "preflight", True),
    )


_TARGET_KEYS = (
    "cluster",
    "max_jobs",
    "name",
    "overrides",
    "max_queue_wait_min",
    "max_cost_usd",
    "price_per_hour_usd",
)


def _target(entry: Any, position: int) -> TargetSettings:
    key = f"hydra.launcher.targets[{position}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{key} must be a mapping like {{cluster: NAME, max_jobs: N}}, got {entry!r}")
    unknown = sorted(set(entry) - set(_TARGET_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not a target setting (known: {', '.join(_TARGET_KEYS)})")
    cluster = entry.get("cluster")
    if not isinstance(cluster, str) or not cluster.strip():
        raise ConfigError(f"{key}.cluster: name a cluster preset (see `launcher-core cluster list`), got {cluster!r}")
    max_jobs = entry.get("max_jobs")
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
        raise ConfigError(f"{key}.max_jobs must be an integer >= 1 (jobs at once on {cluster}), got {max_jobs!r}")
    name = entry.get("name") or cluster
    if not isinstance(name, str) or "/" in name or not name.strip():
        raise ConfigError(f"{key}.name must be a word without '/', got {name!r}")
    overrides = entry.get("overrides") or []
    if isinstance(overrides, str) or not isinstance(overrides, Sequence):
        raise ConfigError(f"{key}.overrides must be a list of key=value settings, got {overrides!r}")
    return TargetSettings(
        name=name,
        cluster=cluster,
        max_jobs=max_jobs,
        overrides=tuple(str(o) for o in overrides),
        max_queue_wait_min=_positive(entry, "max_queue_wait_min", key),
        max_cost_usd=_positive(entry, "max_cost_usd", key),
        price_per_hour_usd=_positive(entry, "price_per_hour_usd", key, allow_zero=True),
        position=position,
    )


def _positive(entry: Mapping[str, Any], name: str, key: str, allow_zero: bool = False) -> float | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}.{name} must be a number {bound} (or null), got {value!r}")
    return float(value)


def _flag(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"hydra.launcher.{name} must be true or false, got {value!r}")
    return value


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain lists and dicts (interpolations resolved)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
