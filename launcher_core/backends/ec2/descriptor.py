"""ec2 as the registry knows it (:mod:`launcher_core.backends.registry`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher_core.backends.ec2.handle import Ec2Handle
from launcher_core.backends.registry import BackendDescriptor, Capabilities


def _from_config(config: Mapping[str, Any]) -> Any:
    from launcher_core.backends.ec2.backend import from_config

    return from_config(config)


def _settings(params: Mapping[str, Any]) -> Any:
    from launcher_core.backends.ec2.settings import Ec2Settings

    return Ec2Settings.from_mapping(params)


def _for_preflight(settings: Any) -> Any:
    from launcher_core.backends.ec2.backend import Ec2Backend

    return Ec2Backend(settings)


DESCRIPTOR = BackendDescriptor(
    name="ec2",
    launcher_class="Ec2Launcher",
    from_config=_from_config,
    settings=_settings,
    for_preflight=_for_preflight,
    capabilities=lambda config: Capabilities(detached=True, remote_copy=True),
    handle_type=Ec2Handle,
)
