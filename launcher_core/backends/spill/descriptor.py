"""spill as the registry knows it (:mod:`launcher_core.backends.registry`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher_core.backends.registry import BackendDescriptor, Capabilities
from launcher_core.backends.spill.handle import SpillHandle


def _from_config(config: Mapping[str, Any]) -> Any:
    from launcher_core.backends.spill.backend import from_config

    return from_config(config)


def _settings(params: Mapping[str, Any]) -> Any:
    from launcher_core.backends.spill.settings import spill_settings

    return spill_settings(params)


def _capabilities(config: Mapping[str, Any]) -> Capabilities:
    """Detached when some target's jobs outlive the launch (a relaunch re-attaches them and
    ``pull`` collects them); results are local only when every target writes them here. From a
    stored config (each target's backend and config) or a launcher config (each target's preset)."""
    found = [_target_capabilities(t) for t in config.get("targets") or []]
    return Capabilities(
        detached=any(c.detached for c in found),
        results_local=bool(found) and all(c.results_local for c in found),
        remote_copy=any(c.remote_copy for c in found),
    )


def _target_capabilities(target: Mapping[str, Any]) -> Capabilities:
    from launcher_core.backends.registry import descriptor

    if "backend" in target:  # stored by a launch
        return descriptor(str(target["backend"])).capabilities(target.get("config") or {})
    from launcher_core import clusters
    from launcher_core.errors import ConfigError

    try:  # a launcher config (a pipeline stage's): its cluster preset says
        cfg = clusters.apply_overrides(
            clusters.load(clusters.resolve(str(target["cluster"]))), target.get("overrides") or []
        )
        name = clusters.launcher_of(cfg, str(target["cluster"]))
        return descriptor(name).capabilities(clusters.launcher_params(cfg))
    except (ConfigError, KeyError):
        return Capabilities()  # not known here: nothing is assumed shared or collectable


def _for_preflight(settings: Any) -> Any:
    """``launcher-core cluster test`` of a spill preset: every target's own pre-flight, each row
    shown (a failing target is reported, not skipped); None when no target has anything to check."""
    from launcher_core import clusters
    from launcher_core.backends.spill.backend import SpillBackend, Target

    targets = []
    for t in settings.targets:
        _cfg, launcher, checked = clusters.checked_preset(t.cluster, t.overrides, None, f"{t.key} ({t.cluster})")
        backend = clusters.backend_for(launcher, checked)
        if backend is not None:
            targets.append(Target(settings=t, backend=backend, interval_s=1.0))
    return SpillBackend(targets, require_all=True) if targets else None


DESCRIPTOR = BackendDescriptor(
    name="spill",
    launcher_class="SpillLauncher",
    from_config=_from_config,
    settings=_settings,
    for_preflight=_for_preflight,
    capabilities=_capabilities,
    handle_type=SpillHandle,
    remote_hint="one target (a spill stage's jobs run on several file systems)",
    no_remote_copy="",
)
