"""The backend as the registry knows it; the entry point names :data:`DESCRIPTOR`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher_core.backends.registry import BackendDescriptor, Capabilities


def _from_config(config: Mapping[str, Any]) -> Any:
    from hrl_toy_backend.backend import from_config

    return from_config(config)


def _settings(params: Mapping[str, Any]) -> Any:
    from hrl_toy_backend.settings import ToySettings

    return ToySettings.from_mapping(params)


def _describe_handle(handle: Mapping[str, Any]) -> str | None:
    return f"pid {handle['pid']}" if handle.get("pid") else None


def _remote_location(config: Mapping[str, Any]) -> str | None:
    """Every job's dir is under the one ``remote_dir``."""
    remote_dir = config.get("remote_dir")
    return f"toy {remote_dir}" if remote_dir else None


DESCRIPTOR = BackendDescriptor(
    name="toy",
    launcher_class="ToyLauncher",
    from_config=_from_config,
    settings=_settings,
    for_preflight=lambda settings: None,  # nothing to check before submitting
    capabilities=lambda config: Capabilities(detached=True, remote_copy=True),
    describe_handle=_describe_handle,
    remote_location=_remote_location,
)
