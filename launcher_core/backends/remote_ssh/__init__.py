"""``remote_ssh``: run a sweep's jobs detached on SSH hosts and rsync their output dirs home.

:mod:`.settings` validates ``hydra.launcher``; :mod:`.backend` is the backend, :mod:`.preflight`
its pre-flight, both reaching the hosts through :mod:`.hosts`. The workspace on
the hosts (connection, snapshot, scripts, fetch, clean) is :mod:`launcher_core.remote`.
Design: docs/remote_ssh.md
"""

from launcher_core.backends.remote_ssh.backend import RemoteSSHBackend, env_prelude, from_config
from launcher_core.backends.remote_ssh.hosts import HostPool, assign_to_hosts
from launcher_core.backends.remote_ssh.settings import HostSettings, RemoteSSHSettings

__all__ = [
    "HostPool",
    "HostSettings",
    "RemoteSSHBackend",
    "RemoteSSHSettings",
    "assign_to_hosts",
    "env_prelude",
    "from_config",
]
