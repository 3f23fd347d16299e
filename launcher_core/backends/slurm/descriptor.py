"""slurm as the registry knows it (:mod:`launcher_core.backends.registry`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from launcher_core.backends.registry import BackendDescriptor, Capabilities
from launcher_core.backends.slurm.handle import SlurmHandle


def _from_config(config: Mapping[str, Any]) -> Any:
    from launcher_core.backends.slurm.backend import from_config

    return from_config(config)


def _settings(params: Mapping[str, Any]) -> Any:
    from launcher_core.backends.slurm.options import SlurmOptions

    return SlurmOptions.from_params(params)


def _for_preflight(settings: Any) -> Any:
    from launcher_core.backends.slurm.backend import SlurmBackend

    return SlurmBackend(settings)


def _capabilities(config: Mapping[str, Any]) -> Capabilities:
    """On a shared file system the jobs write into the local sweep dir; through ``login_host``
    the sweep dir is mirrored on the cluster and fetched."""
    remote = bool(config.get("login_host"))
    return Capabilities(detached=True, results_local=not remote, remote_copy=remote)


def _remote_location(config: Mapping[str, Any]) -> str | None:
    """Every job's dir of a ``login_host`` sweep is on that cluster's file system."""
    login_host = config.get("login_host")
    return f"slurm {login_host}" if login_host else None


def _dependency_chain(config: Mapping[str, Any]) -> str | None:
    """Stages on one cluster (this machine's, or one login node's) are chained with dependencies."""
    return f"slurm {config.get('login_host') or ''}"


def _watch_group(config: Mapping[str, Any]) -> str:
    """One cluster (this machine's, or one login node's with its set-up): one sacct for all its sweeps."""
    return json.dumps([config.get(k) for k in ("login_host", "ssh_config", "login_setup")], default=str)


DESCRIPTOR = BackendDescriptor(
    name="slurm",
    launcher_class="SlurmArrayLauncher",
    from_config=_from_config,
    settings=_settings,
    for_preflight=_for_preflight,
    capabilities=_capabilities,
    handle_type=SlurmHandle,
    remote_location=_remote_location,
    remote_hint="the same login_host",
    dependency_chain=_dependency_chain,
    watch_group=_watch_group,
)
