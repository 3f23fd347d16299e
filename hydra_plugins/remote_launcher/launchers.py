"""Hydra Launchers: thin shells that validate their config, build a backend and hand the
batch to :func:`launcher_core.controller.launch_batch`."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.remote_launcher import config as _config  # noqa: F401  (registers schemas)

log = logging.getLogger(__name__)


class BackendLauncher(Launcher):
    """Common part of every launcher of this package."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the bad ``hydra.launcher.*`` key; launch nothing."""

    @abstractmethod
    def make_backend(self) -> Any:
        """The ``launcher_core`` backend this launcher drives."""

    def launch_options(self) -> Any:
        from launcher_core.controller import LaunchOptions

        return LaunchOptions(skip_completed=bool(self.params.get("skip_completed", False)))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from launcher_core.controller import launch_batch

        assert self.config is not None and self.hydra_context is not None
        return launch_batch(
            backend_factory=self.make_backend,
            options=self.launch_options(),
            hydra_context=self.hydra_context,
            config=self.config,
            task_function=self.task_function,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
        )


class LocalPoolLauncher(BackendLauncher):
    """``hydra/launcher=local_pool``: forked worker processes on this machine."""

    def validate(self) -> None:
        from launcher_core.validation import check_optional_positive, check_positive

        check_optional_positive("hydra.launcher.n_jobs", self.params.get("n_jobs"), integer=True)
        check_optional_positive("hydra.launcher.timeout_s", self.params.get("timeout_s"))
        check_positive("hydra.launcher.kill_grace_s", self.params.get("kill_grace_s", 5.0), allow_zero=True)

    def make_backend(self) -> Any:
        import os

        from launcher_core.backends.local_pool import LocalPoolBackend

        n_jobs = self.params.get("n_jobs") or os.cpu_count() or 1
        timeout = self.params.get("timeout_s")
        return LocalPoolBackend(
            n_jobs=int(n_jobs),
            timeout_s=None if timeout is None else float(timeout),
            kill_grace_s=float(self.params.get("kill_grace_s", 5.0)),
            task_function=self.task_function,
            hydra_context=self.hydra_context,
        )
