"""local_pool as the registry knows it (:mod:`launcher_core.backends.registry`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher_core.backends.local_pool.handle import LocalPoolHandle
from launcher_core.backends.registry import BackendDescriptor, Capabilities


def _from_config(config: Mapping[str, Any]) -> Any:
    from launcher_core.backends.local_pool.backend import from_config

    return from_config(config)


def _settings(params: Mapping[str, Any]) -> Any:
    from launcher_core.backends.local_pool.backend import local_pool_settings

    return local_pool_settings(params)


DESCRIPTOR = BackendDescriptor(
    name="local_pool",
    launcher_class="LocalPoolLauncher",
    from_config=_from_config,
    settings=_settings,
    for_preflight=lambda settings: None,  # nothing to check on this machine
    capabilities=lambda config: Capabilities(results_local=True),
    watch_group=lambda config: "this machine",  # pid files on this machine: one backend reads them all
    handle_type=LocalPoolHandle,
    no_remote_copy="local sweep: the jobs ran here, the sweep dir is the only copy",
)
