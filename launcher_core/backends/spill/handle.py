"""A spill job's handle: the target it was placed on (its name in ``targets``), that target's
backend, when it was placed, and the target backend's own handle of the job (``inner``, its JSON).

Readers ask it as any handle; it answers with the inner handle's answers, the host prefixed with
the target (``lab_servers/gpu1``), so ``status``, ``report`` and ``results`` show where each job ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher_core.backends.base import JobHandle, RemoteJobPaths


@dataclass(frozen=True, kw_only=True)
class SpillHandle(JobHandle):
    target: str  # the target's name (``targets[i].name``, by default its cluster preset)
    backend: str  # the target's backend (a registry name)
    placed_at: float = 0.0  # when it was handed to the target (the queue wait counts from here)
    inner: Mapping[str, Any] = field(default_factory=dict)  # the target backend's handle (JSON)

    def inner_handle(self) -> JobHandle:
        """The target backend's own handle of the job, as its class."""
        from launcher_core.backends.registry import descriptors

        found = descriptors().get(self.backend)
        if found is None:
            from launcher_core.backends.base import PlainHandle

            return PlainHandle.from_json(dict(self.inner))
        return found.handle(dict(self.inner))

    def host_label(self) -> str | None:
        return where(self.target, self.inner_handle().host_label())

    def describe(self) -> str | None:
        inner = self.inner_handle()
        return where(self.target, inner.describe() or inner.host_label())

    def remote_paths(self) -> RemoteJobPaths | None:
        return self.inner_handle().remote_paths()

    def job_dir(self) -> str | None:
        return self.inner_handle().job_dir()

    def placement(self) -> str | None:
        return self.target

    def dependency_task(self) -> str | None:
        return None  # the targets are different schedulers: a stage waits for its upstream jobs


def where(target: str, place: str | None) -> str:
    """``target/place`` (the target alone when the place is not known yet)."""
    return f"{target}/{place}" if place else target


def target_of(handle: Any) -> str | None:
    """The target a stored spill handle names (None: not a spill handle)."""
    if isinstance(handle, SpillHandle):
        return handle.target
    if isinstance(handle, Mapping) and "target" in handle and "inner" in handle:
        return str(handle["target"])
    return None
