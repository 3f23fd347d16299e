"""Jobs lost to the machine run again; jobs that fail on their own do not.

Every launcher has the same three keys (declared in each backend's schema):

* ``max_retries`` (default 2): how many times a job may be run again after an attempt of it was
  lost (:class:`~launcher_core.jobs.Ending`; node failure, reboot, spot interruption, ...);
  0 turns retries off, exactly as before they existed;
* ``retry_on`` (default ``[]``): endings retried besides ``lost``; the one allowed is
  ``out_of_memory`` (not retried by default: it would fail again);
* ``retry_mem_factor`` (default 1.5): with ``retry_on: [out_of_memory]``, the memory of the next
  attempt is the last one's times this factor (where the backend has a memory setting).

A new attempt is the same job (id, output dir, config, the launch's frozen code), started on the
same backend only once the previous attempt is known dead; it reads its number in
``HYDRA_LAUNCHER_ATTEMPT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.jobs import Ending
from launcher_core.runtime.worker import ATTEMPT_ENV as ATTEMPT_ENV  # what a job reads: 1, 2, ...

DEFAULT_MAX_RETRIES = 2
_OPT_IN = {"out_of_memory": Ending.OUT_OF_MEMORY}


@dataclass(frozen=True)
class RetrySettings:
    """When a job whose attempt ended is run again."""

    max_retries: int = DEFAULT_MAX_RETRIES
    retry_on: frozenset[Ending] = field(default_factory=frozenset)  # besides Ending.LOST
    retry_mem_factor: float = 1.5

    def retries(self, ending: Ending | None, attempt: int) -> bool:
        """Whether a job whose attempt number ``attempt`` ended so is run again."""
        if ending is None or attempt > self.max_retries:
            return False
        return ending is Ending.LOST or ending in self.retry_on

    def not_retried_note(self, ending: Ending | None) -> str | None:
        """What to tell the user about an ending that is retried only on request."""
        if ending is Ending.OUT_OF_MEMORY and ending not in self.retry_on:
            return (
                "not retried: it would run out of memory again; raise hydra.launcher.mem_gb, or set "
                "hydra.launcher.retry_on=[out_of_memory] to retry with retry_mem_factor times the memory"
            )
        return None


NO_RETRIES = RetrySettings(max_retries=0)


def retry_settings(params: Mapping[str, Any]) -> RetrySettings:
    """The retry keys of ``hydra.launcher`` (``params``), checked; ``ConfigError`` names the key."""
    max_retries = params.get("max_retries", DEFAULT_MAX_RETRIES)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"hydra.launcher.max_retries must be an integer >= 0, got {max_retries!r}")
    raw = params.get("retry_on") or []
    if isinstance(raw, (str, bytes, Mapping)) or not hasattr(raw, "__iter__"):  # a list or a ListConfig
        raise ConfigError(f"hydra.launcher.retry_on must be a list (allowed: out_of_memory), got {raw!r}")
    retry_on = set()
    for item in list(raw):
        if item not in _OPT_IN:
            raise ConfigError(
                f"hydra.launcher.retry_on: {item!r} cannot be retried on request (allowed: out_of_memory; "
                "lost jobs are always retried while max_retries > 0)"
            )
        retry_on.add(_OPT_IN[item])
    factor = params.get("retry_mem_factor", 1.5)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise ConfigError(f"hydra.launcher.retry_mem_factor must be a number >= 1, got {factor!r}")
    return RetrySettings(max_retries, frozenset(retry_on), float(factor))
