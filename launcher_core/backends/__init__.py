"""The backends: one package each, listed once in :mod:`launcher_core.backends.registry`.

The launch path builds backends from the Hydra launcher config; everything that runs later in
another process (the pull daemon, ``status``, ``logs``, ``cancel``) rebuilds the backend of a
sweep from the plain config dict the launcher stored in the sweep's state store (meta key
``backend_config``, never holding secrets), through :func:`backend_for_meta`.
"""

from __future__ import annotations

from launcher_core.backends.base import Backend
from launcher_core.backends.registry import backend_for_meta, backend_from_config

__all__ = ["Backend", "backend_for_meta", "backend_from_config"]
