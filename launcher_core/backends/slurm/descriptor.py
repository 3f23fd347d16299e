"""slurm as the registry knows it (:mod:`launcher_core.backends.registry`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher_core.backends.registry import BackendDescriptor, Capabilities


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


def _describe_handle(handle: Mapping[str, Any]) -> str | None:
    return str(handle["slurm_job_id"]) if handle.get("slurm_job_id") else None


def _remote_location(config: Mapping[str, Any]) -> str | None:
    """Every job's dir of a ``login_host`` sweep is on that cluster's file system."""
    login_host = config.get("login_host")
    return f"slurm {login_host}" if login_host else None


DESCRIPTOR = BackendDescriptor(
    name="slurm",
    launcher_class="SlurmArrayLauncher",
    from_config=_from_config,
    settings=_settings,
    for_preflight=_for_preflight,
    capabilities=_capabilities,
    describe_handle=_describe_handle,
    remote_location=_remote_location,
)
