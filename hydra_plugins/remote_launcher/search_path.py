"""Cluster presets from anywhere: ``+cluster=NAME`` finds, after the app's own ``conf/cluster/``,
the user's presets (``$XDG_CONFIG_HOME/hydra-remote-launcher/cluster/``, ``launcher-core cluster
add``) and then the ones shipped with this package (built from the repository's ``conf/cluster/``).

Kept to the standard library, Hydra's plugin base and :mod:`launcher_core.presets` (standard
library only): Hydra imports it at every start-up.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from launcher_core.presets import APP_NAME, SHIPPED_DIR, user_config_dir


class RemoteLauncherSearchPathPlugin(SearchPathPlugin):
    """Appends the user's presets, then the shipped ones: the app's config dir (searched first)
    wins over both, the user's over the shipped."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        user = user_config_dir()
        if (user / "cluster").is_dir():
            search_path.append(f"{APP_NAME}-user", f"file://{user}")
        search_path.append(APP_NAME, f"file://{SHIPPED_DIR}")
