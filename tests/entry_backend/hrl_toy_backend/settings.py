"""``hydra.launcher`` of ``hydra/launcher=toy``: the one list of its keys and defaults.

The Hydra config node (``hydra_plugins.hrl_toy_launcher.config.ToyLauncherConf``) derives from
:class:`ToySettings` and adds only its ``_target_``. No ``from __future__ import annotations``:
OmegaConf reads these annotations at runtime, hence ``Optional``.
"""

# ruff: noqa: UP045
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from launcher_core.errors import ConfigError
from launcher_core.settings import settings_from_mapping
from launcher_core.validation import check_positive

NAME = "toy"


@dataclass
class ToySettings:
    # required: the dir standing for the other machine (absolute; jobs write their output dirs there)
    remote_dir: Optional[str] = None
    # Python command of the jobs; null = the launching interpreter
    python: Optional[str] = None
    # seconds between SIGTERM and SIGKILL when a job's process group is cancelled
    kill_grace_s: float = 2.0
    # false: return once every job started; `launcher-core pull` collects them
    wait: bool = True
    skip_completed: bool = False
    poll_interval_s: float = 0.5
    preflight: bool = True
    auto_pull: bool = False
    auto_pull_interval_s: float = 30.0
    notify: Optional[str] = None

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> "ToySettings":
        """Validated settings (a ``ConfigError`` naming the key); unknown keys are refused."""
        settings = settings_from_mapping(cls, params, NAME)
        if not isinstance(settings.remote_dir, str) or not os.path.isabs(settings.remote_dir):
            raise ConfigError(f"hydra.launcher.remote_dir must be an absolute path, got {settings.remote_dir!r}")
        check_positive("hydra.launcher.kill_grace_s", settings.kill_grace_s, allow_zero=True)
        check_positive("hydra.launcher.poll_interval_s", settings.poll_interval_s)
        return settings

    def stored(self) -> dict[str, Any]:
        """What another process needs to rebuild the backend (no secrets here)."""
        return {
            "remote_dir": self.remote_dir,
            "python": self.python,
            "kill_grace_s": self.kill_grace_s,
            "poll_interval_s": self.poll_interval_s,
        }
