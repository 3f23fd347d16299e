"""Compose job configs for a sweep with as few full Hydra compositions as possible.

Hydra composes every job config from scratch (``load_sweep_config``: search path, defaults
tree, merging of every YAML file), at ~100 ms per job. In a sweep most jobs differ from each
other only by plain value overrides (``lr=0.1``), which Hydra applies *after* composition, in
order, with ``ConfigLoaderImpl._apply_overrides_to_config``. So jobs that share every other
override (config group choices, hydra overrides, deletions) share the composed config up to
that point. We compose that "template" once per distinct set of structural overrides and
replay exactly Hydra's last steps on a copy for each job: apply the value overrides, record
``hydra.overrides.task`` and recompute ``hydra.job.override_dirname``.
``tests/test_compose.py`` proves the result equals Hydra's own composition node for node.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def _overrides_dirname(cfg: DictConfig, app_overrides: Sequence[Override]) -> str:
    from hydra._internal.config_loader_impl import get_overrides_dirname

    dirname_cfg = cfg.hydra.job.config.override_dirname
    return get_overrides_dirname(
        overrides=list(app_overrides),
        kv_sep=dirname_cfg.kv_sep,
        item_sep=dirname_cfg.item_sep,
        exclude_keys=dirname_cfg.exclude_keys,
    )


class SweepComposer:
    """Composes the config of each job exactly as ``ConfigLoader.load_sweep_config`` would."""

    def __init__(self, hydra_context: HydraContext, master_config: DictConfig) -> None:
        self._loader = hydra_context.config_loader
        self._master = master_config
        self._parser = OverridesParser.create(config_loader=self._loader)
        self._templates: dict[tuple[str, ...], DictConfig] = {}
        self._group_cache: dict[str, bool] = {}
        self.full_compositions = 0

    def _is_group(self, key: str) -> bool:
        if key not in self._group_cache:
            repo = getattr(self._loader, "repository", None)
            self._group_cache[key] = bool(repo is not None and repo.group_exists(key))
        return self._group_cache[key]

    def _is_value_override(self, override: Override) -> bool:
        """True for overrides Hydra applies after composition and that we can replay."""
        if override.is_hydra_override() or override.is_delete() or override.is_sweep_override():
            return False
        return isinstance(override.value(), dict) or not self._is_group(override.key_or_group)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self._parser.parse_overrides(list(overrides))
        structural = tuple(o.input_line for o in parsed if not self._is_value_override(o))
        template = self._templates.get(structural)
        if template is None:
            template = self._full_compose(list(structural))
            self._templates[structural] = template
        return self._replay(template, parsed)

    def _full_compose(self, overrides: list[str]) -> DictConfig:
        self.full_compositions += 1
        return self._loader.load_sweep_config(self._master, overrides)

    def _replay(self, template: DictConfig, parsed: list[Override]) -> DictConfig:
        cfg = copy.deepcopy(template)
        OmegaConf.copy_cache(from_config=self._master, to_config=cfg)
        value_overrides = [o for o in parsed if self._is_value_override(o)]
        if not value_overrides:
            return cfg
        ConfigLoaderImpl._apply_overrides_to_config(value_overrides, cfg)
        app_overrides = [o for o in parsed if not o.is_hydra_override()]
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in app_overrides]
            cfg.hydra.job.override_dirname = _overrides_dirname(cfg, app_overrides)
        return cfg


def set_job_identity(cfg: DictConfig, idx: int) -> None:
    """Set ``hydra.job.num`` and ``hydra.job.id`` the way Hydra's launchers do."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx


def job_output_dir(cfg: DictConfig) -> str:
    """The output dir ``run_job`` will use for this config (sweep dir / evaluated subdir)."""
    import os

    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.instance()
    previous: Any = hydra_cfg.cfg
    hydra_cfg.set_config(cfg)
    try:
        sweep_dir = str(OmegaConf.select(cfg, "hydra.sweep.dir"))
        subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    finally:
        hydra_cfg.cfg = previous
    return os.path.abspath(os.path.join(sweep_dir, subdir))
