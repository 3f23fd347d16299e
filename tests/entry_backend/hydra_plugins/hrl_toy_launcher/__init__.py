"""Hydra face of the backend of ``hrl_toy_backend``: ``hydra/launcher=toy``.

Hydra imports every module under ``hydra_plugins`` at start-up (that registers the config node);
the launcher subclasses the project's :class:`hydra_plugins.remote_launcher.launchers.BackendLauncher`
as the built-in launchers do, so the launch loop, the state store, ``wait=false`` and the pull
daemon work unchanged.
"""
