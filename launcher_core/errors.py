"""Errors users see. Each names the offending key or value and says what would be accepted.

They are Hydra's ``CompactHydraException``s: Hydra prints them as one short message, as it prints
its own config errors, with the full traceback only under ``HYDRA_FULL_ERROR=1``. Anything else
(a real bug) keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.errors import CompactHydraException


class LauncherError(CompactHydraException):
    """Base class of every error raised by hydra-remote-launcher on purpose."""


class ConfigError(LauncherError, ValueError):
    """A launcher or sweeper setting is invalid; raised before anything is launched."""


class SweepDefinitionError(ConfigError):
    """The sweep (grid or paired groups) cannot be expanded as written."""


class BackendError(LauncherError, RuntimeError):
    """A backend could not do what was asked (connection, submission, fetch)."""


class SubmitError(BackendError):
    """Submission failed part-way: ``started`` holds the handles of the jobs that did start
    (a backend's handle class, or plain JSON dicts).

    Backends raise it so the controller can record those jobs as submitted before reporting
    the error; a relaunch then re-attaches to them instead of starting them twice.
    """

    def __init__(self, message: str, started: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.started = dict(started or {})
