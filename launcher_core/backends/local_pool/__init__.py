"""``local_pool``: a sweep's jobs as forked child processes on this machine (:mod:`.backend`).

Design: docs/local_pool.md
"""

from launcher_core.backends.local_pool.backend import (
    LocalPoolBackend,
    from_config,
    kill_stale_handle,
    local_pool_gpus,
    local_pool_settings,
)

__all__ = ["LocalPoolBackend", "from_config", "kill_stale_handle", "local_pool_gpus", "local_pool_settings"]
