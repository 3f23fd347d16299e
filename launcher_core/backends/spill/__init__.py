"""``spill``: one sweep over several targets (cluster presets), each job on the first target with
a free slot; jobs that wait too long in a queue move on (:mod:`.backend`).

Design: docs/spill.md
"""

from launcher_core.backends.spill.backend import SpillBackend, Target, from_config
from launcher_core.backends.spill.settings import SpillSettings, TargetSettings, spill_settings

__all__ = ["SpillBackend", "SpillSettings", "Target", "TargetSettings", "from_config", "spill_settings"]
