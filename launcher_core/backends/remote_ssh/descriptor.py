"""remote_ssh as the registry knows it (:mod:`launcher_core.backends.registry`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from launcher_core.backends.registry import BackendDescriptor, Capabilities
from launcher_core.backends.remote_ssh.handle import RemoteSSHHandle


def _from_config(config: Mapping[str, Any]) -> Any:
    from launcher_core.backends.remote_ssh.backend import from_config

    return from_config(config)


def _settings(params: Mapping[str, Any]) -> Any:
    from launcher_core.backends.remote_ssh.settings import RemoteSSHSettings

    return RemoteSSHSettings.from_mapping(params)


def _for_preflight(settings: Any) -> Any:
    from launcher_core.backends.remote_ssh.backend import RemoteSSHBackend

    return RemoteSSHBackend(settings)


def _remote_location(config: Mapping[str, Any]) -> str | None:
    """One host and its remote dir hold every job's dir; several hosts split them."""
    hosts = list(config.get("hosts") or [])
    if len(hosts) != 1:
        return None
    return "remote_ssh " + json.dumps([hosts, config.get("remote_dir")], sort_keys=True, default=str)


# what a poll's connection depends on: sweeps that agree on these share one master per host in `top`
_CONNECTION_KEYS = (
    "ssh_config",
    "connect_timeout_s",
    "command_timeout_s",
    "server_alive_interval_s",
    "server_alive_count_max",
    "accept_new_host_keys",
    "batch_mode",
    "control_persist_s",
    "retries",
    "kill_grace_s",
)


def _watch_group(config: Mapping[str, Any]) -> str:
    """Handles name their host; the connection settings and the poll's grace are all that differ."""
    return json.dumps({k: config.get(k) for k in _CONNECTION_KEYS}, sort_keys=True, default=str)


DESCRIPTOR = BackendDescriptor(
    name="remote_ssh",
    launcher_class="RemoteSSHLauncher",
    from_config=_from_config,
    settings=_settings,
    for_preflight=_for_preflight,
    capabilities=lambda config: Capabilities(detached=True, remote_copy=True),
    handle_type=RemoteSSHHandle,
    remote_location=_remote_location,
    remote_hint="the same single host and remote_dir",
    watch_group=_watch_group,
)
