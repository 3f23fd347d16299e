"""One module per backend; each exposes ``from_config(config: dict) -> Backend``.

The launch path builds backends from the Hydra launcher config; everything that runs later in
another process (the pull daemon, ``status``, ``logs``, ``cancel``) rebuilds the backend of a
sweep from the plain config dict the launcher stored in the sweep's state store (meta key
``backend_config``, never holding secrets), through :func:`backend_for_meta`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from launcher_core.backends.base import Backend
from launcher_core.errors import ConfigError

BACKEND_MODULES = {
    "local_pool": "launcher_core.backends.local_pool",
    "remote_ssh": "launcher_core.backends.remote_ssh",
    "slurm": "launcher_core.backends.slurm",
    "ec2": "launcher_core.backends.ec2",
}


def backend_from_config(name: str, config: Mapping[str, Any]) -> Backend:
    """Rebuild a backend by name from its stored config."""
    module_name = BACKEND_MODULES.get(name)
    if module_name is None:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKEND_MODULES))}")
    module = importlib.import_module(module_name)
    return module.from_config(dict(config))


def backend_for_meta(meta: Mapping[str, Any]) -> Backend:
    """The backend of a sweep, from its state store meta data."""
    return backend_from_config(str(meta["backend"]), meta.get("backend_config") or {})
