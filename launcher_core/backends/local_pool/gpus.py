"""local_pool's GPUs: which GPUs of this machine its jobs may use (``gpus``), how many each job
takes (``gpus_per_job`` or its own config through ``resources_from``) and the claims, through the
machine-wide locks of :mod:`launcher_core.runtime.gpus` (the same ones remote_ssh's runner takes).

Design: docs/local_pool.md ("GPUs")
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobSpec
from launcher_core.resources import check_resources_from, gpu_count, read_job_resources
from launcher_core.runtime import gpus as gpu_locks

#: what ``resources_from`` may set per job on local_pool
RESOURCES = {"gpus_per_job": gpu_count}
_KEY = "hydra.launcher"


@dataclass(frozen=True)
class GpuSettings:
    """The GPU keys of ``hydra.launcher``, checked (``gpus`` as written: ``auto``, a count or ids)."""

    gpus: str | int | tuple[int, ...]
    gpus_per_job: int = 1
    jobs_per_gpu: int = 1
    gpu_lock_dir: str | None = None
    resources_from: tuple[tuple[str, str], ...] = ()

    @property
    def per_job(self) -> bool:
        return bool(self.resources_from)


def gpu_settings(settings: Any) -> GpuSettings | None:
    """The GPU part of local_pool's settings, checked; None when ``gpus`` is not set (jobs see
    every GPU, as without this feature), then the other GPU keys must be left alone."""
    resources_from = check_resources_from(settings.resources_from, RESOURCES, _KEY)
    if settings.gpus is None:
        if resources_from:
            raise ConfigError(f"{_KEY}.resources_from.gpus_per_job needs {_KEY}.gpus (auto, a count or GPU ids)")
        return None
    return GpuSettings(
        gpus=_check_gpus(settings.gpus),
        gpus_per_job=_integer("gpus_per_job", settings.gpus_per_job, 0),
        jobs_per_gpu=_integer("jobs_per_gpu", settings.jobs_per_gpu, 1),
        gpu_lock_dir=_lock_dir(settings.gpu_lock_dir),
        resources_from=tuple(resources_from.items()),
    )


def _integer(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{_KEY}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_gpus(value: Any) -> str | int | tuple[int, ...]:
    key = f"{_KEY}.gpus"
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{key} must be auto, a count >= 1 or a list of GPU ids, got {value!r} (null: no GPUs)")
        return value
    if isinstance(value, (list, tuple)) and value:
        ids = tuple(value)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids) or len(set(ids)) != len(ids):
            raise ConfigError(f"{key} must list distinct GPU ids (integers >= 0, nvidia-smi's numbers), got {value!r}")
        return ids
    raise ConfigError(f"{key} must be auto, a count or a list of GPU ids like [0, 1], got {value!r}")


def _lock_dir(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip().startswith(("/", "~")):
        raise ConfigError(f"{_KEY}.gpu_lock_dir must be an absolute path, got {value!r}")
    return value


@dataclass
class LocalGpus:
    """This machine's GPUs as a sweep sees them: resolved once (:meth:`resolve`), then claimed
    per job (:meth:`claim`)."""

    settings: GpuSettings
    ids: list[int] = field(default_factory=list)
    lock_dir: Path | None = None
    line: gpu_locks.GpuLine | None = None  # this sweep's place in the machine's line for GPUs

    def resolve(self, specs: Sequence[JobSpec]) -> None:
        """Before anything starts: the GPU ids (``nvidia-smi -L`` must list them), each job's GPU
        count, and a ConfigError naming the job and the key for a job that can never fit."""
        self.ids = _machine_gpus(self.settings.gpus)
        if not self.settings.per_job and self.settings.gpus_per_job > len(self.ids):
            raise ConfigError(
                f"{_KEY}.gpus_per_job={self.settings.gpus_per_job} but {_KEY}.gpus gives {self._described()}. "
                "Nothing was started."
            )
        read_job_resources(specs, dict(self.settings.resources_from), RESOURCES)
        for spec in specs:
            if self.wanted(spec) > len(self.ids):
                path = dict(self.settings.resources_from)["gpus_per_job"]
                raise ConfigError(
                    f"job #{spec.idx} ({' '.join(spec.overrides) or 'no overrides'}): "
                    f"{_KEY}.resources_from.gpus_per_job: {path} asks for {self.wanted(spec)} GPUs, "
                    f"{_KEY}.gpus gives {self._described()}. Nothing was started."
                )
        try:
            self.lock_dir = gpu_locks.lock_dir(self.settings.gpu_lock_dir)
        except gpu_locks.GpuLockError as exc:
            raise ConfigError(f"{_KEY}.gpu_lock_dir: {exc.strerror}") from exc
        self.line = gpu_locks.GpuLine(self.lock_dir, self.ids)

    def _described(self) -> str:
        return f"{len(self.ids)} ({', '.join(map(str, self.ids))})"

    def wanted(self, spec: JobSpec) -> int:
        """GPUs the job needs: its own (``resources_from``) or ``gpus_per_job``."""
        return int(spec.resources.get("gpus_per_job", self.settings.gpus_per_job))

    @property
    def slots(self) -> int:
        """How many jobs of one GPU each can run at once."""
        return len(self.ids) * self.settings.jobs_per_gpu

    def claim(self, spec: JobSpec) -> gpu_locks.GpuClaim | None:
        """The job's GPUs, locked machine-wide, or None if they are not free now."""
        if self.lock_dir is None:
            raise RuntimeError("LocalGpus.claim() before resolve()")
        return gpu_locks.claim(self.lock_dir, self.ids, self.wanted(spec), self.settings.jobs_per_gpu, self.line)

    def stop_waiting(self) -> None:
        """Out of the machine's line: nothing of this sweep waits for GPUs any more."""
        if self.line is not None:
            self.line.leave()


def _machine_gpus(gpus: str | int | tuple[int, ...]) -> list[int]:
    """The ids ``gpus`` means on this machine, checked against what ``nvidia-smi -L`` lists."""
    key = f"{_KEY}.gpus={gpus if isinstance(gpus, (str, int)) else list(gpus)}"
    if shutil.which(gpu_locks.NVIDIA_SMI) is None:
        raise ConfigError(
            f"{key}: nvidia-smi is not on this machine's PATH, so it has no NVIDIA GPU to hand out "
            f"(set {_KEY}.gpus=null to run without GPUs). Nothing was started."
        )
    try:
        listed = gpu_locks.list_gpus()
    except OSError as exc:
        raise ConfigError(f"{key}: {exc.strerror or exc}. Nothing was started.") from exc
    if gpus == "auto":
        wanted = listed
    elif isinstance(gpus, int):
        wanted = list(range(gpus))
    else:
        wanted = sorted(gpus)
    missing = [i for i in wanted if i not in listed]
    if not wanted or missing:
        have = ", ".join(map(str, listed)) or "none"
        raise ConfigError(
            f"{key}: nvidia-smi -L lists GPUs {have}"
            + (f"; {', '.join(map(str, missing))} not among them" if missing else "")
            + ". Nothing was started."
        )
    return wanted
