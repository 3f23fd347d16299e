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

    # mappings under hydra.launcher whose values are secrets (job environment variables)
    secret_keys: tuple[str, ...] = ()

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
        from launcher_core.retry import retry_settings

        retry_settings(self.params)  # max_retries, retry_on, retry_mem_factor: checked for every launcher
        # Hydra's sweeper composes every job again to validate it (~100 ms each); the sweeper and
        # this launcher share the context, so both now use the fast composer (same configs).
        from launcher_core.runtime.compose import use_fast_sweep_composition

        use_fast_sweep_composition(hydra_context)
        # validated settings are kept by the launcher; what Hydra writes gets no secrets
        from launcher_core.redact import redact_launcher_secrets

        redact_launcher_secrets(config, self.secret_keys)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the bad ``hydra.launcher.*`` key; launch nothing."""

    @abstractmethod
    def make_backend(self) -> Any:
        """The ``launcher_core`` backend this launcher drives."""

    def launch_settings(self) -> Any:
        """Validated settings carrying ``wait``, ``skip_completed``, ``poll_interval_s``,
        ``preflight``, ``auto_pull``, ``auto_pull_interval_s`` and ``notify`` (and optionally
        ``auto_pull_give_up_h``); None for launchers that only have ``skip_completed`` in their
        params."""
        return None

    def launch_options(self) -> Any:
        from launcher_core.controller import LaunchOptions
        from launcher_core.retry import retry_settings

        settings = self.launch_settings()
        retry = retry_settings(self.params)
        if settings is None:
            return LaunchOptions(skip_completed=bool(self.params.get("skip_completed", False)), retry=retry)
        from launcher_core.collect.autopull import DEFAULT_GIVE_UP_H, check_give_up, check_settings

        check_settings(settings.auto_pull, settings.auto_pull_interval_s, settings.notify, settings.wait)
        # optional: settings of a backend written before the setting existed do not carry it
        give_up_h = getattr(settings, "auto_pull_give_up_h", DEFAULT_GIVE_UP_H)
        check_give_up(give_up_h)
        return LaunchOptions(
            wait=settings.wait,
            skip_completed=settings.skip_completed,
            poll_interval_s=settings.poll_interval_s,
            preflight=settings.preflight,
            auto_pull=settings.auto_pull,
            auto_pull_interval_s=float(settings.auto_pull_interval_s),
            auto_pull_give_up_h=float(give_up_h),
            notify=settings.notify,
            retry=retry,
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self._launch_batch(job_overrides, initial_job_idx)

    def _launch_batch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, code_dir: Any = None
    ) -> Sequence[JobReturn]:
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
            code_dir=code_dir,
        )


class LocalPoolLauncher(BackendLauncher):
    """``hydra/launcher=local_pool``: forked worker processes on this machine."""

    secret_keys = ("env_vars",)

    def validate(self) -> None:
        from launcher_core.backends.local_pool import local_pool_settings

        self.settings = local_pool_settings(self.params)

    def make_backend(self) -> Any:
        from launcher_core.backends.local_pool import LocalPoolBackend, local_pool_gpus

        timeout = self.settings.timeout_s
        return LocalPoolBackend(
            n_jobs=self.settings.n_jobs,  # null: one per CPU core, or per GPU slot with gpus
            timeout_s=None if timeout is None else float(timeout),
            kill_grace_s=float(self.settings.kill_grace_s),
            task_function=self.task_function,
            hydra_context=self.hydra_context,
            env_vars=self.settings.env_vars,
            gpus=local_pool_gpus(self.settings),
        )


class SlurmArrayLauncher(BackendLauncher):
    """``hydra/launcher=slurm``: job arrays submitted with sbatch (see ``launcher_core.backends.slurm``)."""

    secret_keys = ("env_vars", "env", "container.env")

    def validate(self) -> None:
        from launcher_core.backends.slurm import SlurmOptions

        self.options = SlurmOptions.from_params(self.params)  # OmegaConf values resolved there
        container = self.options.container
        if container is not None and not self.options.login_host and not self.options.dry_run:
            # jobs will run from this file system: the image must be there (remote with login_host;
            # a dry run only writes scripts, possibly for another machine)
            from launcher_core.container import check_local_image

            check_local_image(container, "hydra.launcher.container.image")

    def make_backend(self) -> Any:
        from launcher_core.backends.slurm import SlurmBackend

        return SlurmBackend(self.options, task_function=self.task_function, hydra_context=self.hydra_context)

    def launch_settings(self) -> Any:
        return self.options

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if not self.options.dry_run:
            return super().launch(job_overrides, initial_job_idx)
        from launcher_core.controller import dry_run_batch

        assert self.config is not None and self.hydra_context is not None
        return dry_run_batch(
            backend=self.make_backend(),
            hydra_context=self.hydra_context,
            config=self.config,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
        )


class Ec2Launcher(BackendLauncher):
    """``hydra/launcher=ec2``: EC2 instances started per sweep, code and results through S3."""

    secret_keys = ("env_vars", "env")

    def validate(self) -> None:
        from launcher_core.backends.ec2 import Ec2Settings

        self.settings = Ec2Settings.from_mapping(self.params)

    def make_backend(self) -> Any:
        from launcher_core.backends.ec2 import Ec2Backend

        return Ec2Backend(self.settings, task_function=self.task_function, hydra_context=self.hydra_context)

    def launch_settings(self) -> Any:
        return self.settings


class RemoteSSHLauncher(BackendLauncher):
    """``hydra/launcher=remote_ssh``: detached jobs on SSH hosts, outputs pulled back."""

    secret_keys = ("env_vars", "env.vars", "container.env")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._snapshot_tag: str | None = None

    def _settings(self) -> Any:
        from omegaconf import OmegaConf

        from launcher_core.backends.remote_ssh import RemoteSSHSettings

        plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in self.params.items()}
        return RemoteSSHSettings.from_mapping(plain)

    def validate(self) -> None:
        self._settings()

    def launch_settings(self) -> Any:
        return self._settings()

    def make_backend(self) -> Any:
        from launcher_core.backends.remote_ssh import RemoteSSHBackend
        from launcher_core.remote.workspace import new_snapshot_tag

        if self._snapshot_tag is None:  # one code snapshot for every batch of this launch
            self._snapshot_tag = new_snapshot_tag()
        return RemoteSSHBackend(
            self._settings(),
            task_function=self.task_function,
            hydra_context=self.hydra_context,
            snapshot_tag=self._snapshot_tag,
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from pathlib import Path

        assert self.config is not None
        # the project to ship: hydra.launcher.code_dir, else where the app was started from
        settings = self._settings()
        code_dir = settings.code_dir or str(self.config.hydra.runtime.cwd)
        self._check_entry_script_ships(Path(code_dir), settings)
        return self._launch_batch(job_overrides, initial_job_idx, code_dir=Path(code_dir))

    @staticmethod
    def _check_entry_script_ships(code_dir: Any, settings: Any) -> None:
        import sys
        from pathlib import Path

        from launcher_core.remote.codesync import check_filters_keep, filter_args

        if not Path(code_dir).is_dir() or not sys.argv or not sys.argv[0].endswith(".py"):
            return
        filters = filter_args(settings.rsync_include, settings.rsync_exclude)
        check_filters_keep(Path(code_dir), [Path(sys.argv[0])], filters, "hydra.launcher.rsync_exclude")


class SpillLauncher(BackendLauncher):
    """``hydra/launcher=spill``: one sweep over several targets, each a cluster preset whose own
    launcher builds its backend (see ``launcher_core.backends.spill``)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._children: list[tuple[Any, Launcher]] = []  # (target settings, the target's launcher)

    def validate(self) -> None:
        """Every target's preset found, its launcher's settings checked the way a launch of that
        preset checks them, and its launcher set up: all before anything starts."""
        from launcher_core.backends.spill import spill_settings

        self.settings = spill_settings(self.params)
        self._children = [(t, self._target_launcher(t)) for t in self.settings.targets]

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self._redact_target_secrets(config)

    def _redact_target_secrets(self, config: DictConfig) -> None:
        """A target's ``overrides`` that set one of its launcher's secret keys (``env_vars.TOKEN=...``)
        are written by Hydra as ``REDACTED`` (in ``.hydra/hydra.yaml`` and ``multirun.yaml``), and a
        command-line ``hydra.launcher.targets=...`` holding one is recorded without its value."""
        from omegaconf import OmegaConf, open_dict, read_write

        from launcher_core.redact import REDACTED, redact_override

        secrets: list[str] = []
        with read_write(config.hydra), open_dict(config.hydra):
            for position, (_settings, launcher) in enumerate(self._children):
                keys = getattr(launcher, "secret_keys", ())
                node = OmegaConf.select(config, f"hydra.launcher.targets.{position}.overrides")
                for i, line in enumerate(list(node or [])):
                    bare = str(line) if str(line).startswith("hydra.") else f"hydra.launcher.{line}"
                    key, _, value = str(line).partition("=")
                    if keys and value and redact_override(bare, keys) != bare:
                        node[i] = f"{key}={REDACTED}"
                        secrets.append(value)
            # the override line stays one a job can compose again: only the values are replaced
            overrides = config.hydra.overrides.hydra
            for i, line in enumerate(OmegaConf.to_container(overrides, resolve=False) if secrets else []):
                redacted = str(line)
                for value in secrets:
                    redacted = redacted.replace(value, REDACTED)
                if redacted != line:
                    overrides[i] = redacted

    def _target_launcher(self, target: Any) -> Launcher:
        import copy

        from hydra.core.config_store import ConfigStore
        from hydra.core.plugins import Plugins
        from omegaconf import OmegaConf, open_dict

        from launcher_core.clusters import checked_preset
        from launcher_core.errors import ConfigError

        assert self.config is not None and self.hydra_context is not None
        label = f"{target.key} (cluster {target.cluster})"
        try:
            # the preset's own checks say "cluster <label>: ...": "cluster local (hydra.launcher.targets[0])"
            preset_label = f"{target.cluster} ({target.key})"
            cfg, name, _checked = checked_preset(
                target.cluster, target.overrides, _app_conf_dir(self.config), preset_label
            )
        except ConfigError as exc:  # e.g. no such preset: say which target names it
            if target.key in str(exc):
                raise
            raise ConfigError(f"{label}: {exc}") from exc
        if name == "spill":
            raise ConfigError(f"{label}: a target cannot itself be a spill launcher")
        try:
            schema = ConfigStore.instance().load(f"hydra/launcher/{name}.yaml").node
            node = OmegaConf.merge(schema, OmegaConf.select(cfg, "hydra.launcher") or {})
        except Exception as exc:  # noqa: BLE001 - an unknown key or a bad value of the preset: name it
            raise ConfigError(f"{label}: {exc}") from exc
        child_config = copy.deepcopy(self.config)
        with open_dict(child_config):
            child_config.hydra.launcher = node
        try:
            return Plugins.instance().instantiate_launcher(
                hydra_context=self.hydra_context, task_function=self.task_function, config=child_config
            )
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from exc

    def launch_settings(self) -> Any:
        return self.settings

    def make_backend(self) -> Any:
        from launcher_core.backends.spill import SpillBackend, Target
        from launcher_core.backends.spill.backend import check_target

        targets = []
        for settings, launcher in self._children:
            backend = launcher.make_backend()  # type: ignore[attr-defined]
            options = launcher.launch_options()  # type: ignore[attr-defined]
            interval = backend.poll_interval_s if backend.poll_interval_s is not None else options.poll_interval_s
            if not backend.detached:
                interval = min(interval, self.settings.poll_interval_s)
            target = Target(settings=settings, backend=backend, interval_s=float(interval))
            check_target(target)
            targets.append(target)
        return SpillBackend(
            targets, retry_elsewhere=self.settings.retry_elsewhere, require_all=self.settings.require_all
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from pathlib import Path

        assert self.config is not None
        return self._launch_batch(job_overrides, initial_job_idx, code_dir=Path(str(self.config.hydra.runtime.cwd)))


def _app_conf_dir(config: DictConfig) -> Any:
    """The app's own config dir (its ``cluster/`` presets come first), when it is a directory."""
    from pathlib import Path

    for source in config.hydra.runtime.get("config_sources") or []:
        if source.get("provider") == "main" and source.get("schema") == "file":
            return Path(str(source.get("path")))
    return None
