"""The launcher: validate ``hydra.launcher``, build the backend; the base class does the rest."""

from __future__ import annotations

from typing import Any

from hydra_plugins.hrl_toy_launcher import config as _config  # noqa: F401  (registers the config node)

from hydra_plugins.remote_launcher.launchers import BackendLauncher


class ToyLauncher(BackendLauncher):
    """``hydra/launcher=toy``: detached local processes, outputs in ``remote_dir`` until pulled."""

    def validate(self) -> None:
        from hrl_toy_backend.settings import ToySettings

        self.settings = ToySettings.from_mapping(self.params)

    def make_backend(self) -> Any:
        from hrl_toy_backend.backend import ToyBackend

        return ToyBackend(self.settings, task_function=self.task_function)

    def launch_settings(self) -> Any:
        return self.settings
