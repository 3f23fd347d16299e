"""Where cluster presets live: shipped with the package (the repository's ``conf/cluster/``), and
the user's own (``$XDG_CONFIG_HOME/hydra-remote-launcher/cluster/``, ``launcher-core cluster add``).

Standard library only: the Hydra face's search-path plugin imports it at every Hydra start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "hydra-remote-launcher"
SHIPPED_DIR = Path(__file__).resolve().parent / "conf"  # holds cluster/*.yaml (a build copies them)


def user_config_dir() -> Path:
    """``$XDG_CONFIG_HOME/hydra-remote-launcher`` (default ``~/.config/...``); holds ``cluster/``."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"  # XDG: relative values are ignored
    return root / APP_NAME
