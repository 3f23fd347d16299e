"""The settings of ``hydra/launcher=slurm`` as the launcher takes them: :class:`SlurmOptions`,
every check of :class:`~.settings.SlurmSettings` plus a trial rendering of the site's
``sbatch_template``, so that a template error stops the launch before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher_core.backends.slurm.sbatch import probe_template
from launcher_core.backends.slurm.settings import IGNORED_SUBMITIT_KEYS, RESOURCES, SlurmSettings
from launcher_core.settings import settings_from_mapping

__all__ = ["IGNORED_SUBMITIT_KEYS", "RESOURCES", "SlurmOptions"]


@dataclass
class SlurmOptions(SlurmSettings):
    """Validated ``hydra.launcher`` settings of ``hydra/launcher=slurm``: the keys and defaults of
    :class:`SlurmArrayLauncherConf`, checked. After :meth:`from_params`, ``container`` is a
    :class:`~launcher_core.container.Container` or None and the list/dict settings are plain."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], prefix: str = "hydra.launcher") -> SlurmOptions:
        """Check every setting; raise ``ConfigError`` naming the bad (or unknown) key before
        anything is launched. ``params``: ``hydra.launcher`` or a stored config (plain or OmegaConf)."""
        opts = settings_from_mapping(cls, params, "slurm", prefix)
        opts.check(prefix)
        if opts.sbatch_template is not None:
            probe_template(opts)  # a template error stops the launch here, before anything is written
        opts.note_ignored(prefix)
        return opts
