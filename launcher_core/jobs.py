"""The job model and the one contract every backend implements.

A sweep is a list of :class:`JobSpec` (what to run) that the controller turns into rows of the
state store (what happened). Backends only ever see specs and the handles they returned
themselves, so the controller, the pull daemon, ``status`` and ``cancel`` never care which
backend ran a job.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class JobState(str, enum.Enum):
    PENDING = "pending"  # known, not yet handed to the backend
    SUBMITTED = "submitted"  # the backend accepted it (queued, not known to run yet)
    RUNNING = "running"
    COMPLETED = "completed"  # finished, results still on the backend side (remote) or local
    FAILED = "failed"
    CANCELLED = "cancelled"
    PULLED = "pulled"  # completed or failed and its files are in the local sweep dir

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        return self in (JobState.SUBMITTED, JobState.RUNNING)


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.PULLED})

# Subdirectory of every job's output dir holding the launcher's own files.
LAUNCHER_DIR = ".launcher"
RESULT_FILE = "result.pkl"
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
PID_FILE = "pid"


def job_id_for(sweep_id: str, overrides: Sequence[str]) -> str:
    """Stable id of a job: the same sweep and the same overrides always give the same id.

    Overrides are hashed in order and separated by a byte that cannot occur in an override,
    so ``["a=1,b"]`` and ``["a=1", "b"]`` never collide.
    """
    digest = hashlib.sha256()
    digest.update(sweep_id.encode())
    for override in overrides:
        digest.update(b"\x00")
        digest.update(override.encode())
    return digest.hexdigest()[:16]


@dataclass
class JobSpec:
    """One job of a sweep as the controller knows it before launch.

    The composed config is built on first use of :attr:`config` by ``config_factory``, and
    not kept by the controller in between: a sweep of thousands of jobs would otherwise hold
    thousands of DictConfigs (~150 KB each), and ``local_pool`` forks every job from that
    heap. ``local_pool`` composes in the forked child; remote backends when writing payloads.
    """

    job_id: str
    idx: int  # hydra.job.num
    overrides: list[str]
    output_dir: Path  # absolute local output dir (hydra.runtime.output_dir)
    config_factory: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    _config: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def config(self) -> Any:
        """The job's composed DictConfig (None for specs built without a factory)."""
        if self._config is None and self.config_factory is not None:
            self._config = self.config_factory()
        return self._config

    @config.setter
    def config(self, value: Any) -> None:
        self._config = value

    def release_config(self) -> None:
        """Drop the composed config; the next use of :attr:`config` composes it again."""
        if self.config_factory is not None:
            self._config = None

    @property
    def launcher_dir(self) -> Path:
        return self.output_dir / LAUNCHER_DIR

    @property
    def result_path(self) -> Path:
        return self.launcher_dir / RESULT_FILE


@dataclass
class JobStatus:
    """What a backend reports about one job in :meth:`Backend.poll`."""

    state: JobState
    exit_reason: str | None = None
    host: str | None = None


@dataclass(frozen=True)
class PullFilter:
    """Which files ``fetch`` may skip (``pull --bare``): larger than ``max_size_bytes`` or
    matching one of the rsync-style ``exclude`` patterns. Launcher files are never skipped."""

    max_size_bytes: int | None = None
    exclude: tuple[str, ...] = ()

    @property
    def is_bare(self) -> bool:
        return self.max_size_bytes is not None or bool(self.exclude)


@dataclass
class SweepInfo:
    """Sweep-level facts a backend may need in :meth:`Backend.prepare`."""

    sweep_id: str
    sweep_dir: Path
    code_dir: Path
    task_name: str


@runtime_checkable
class Backend(Protocol):
    """The contract: prepare once, submit in batches, poll many at once, fetch, cancel.

    ``handle`` values are whatever the backend needs to find a job again later (a PID and host,
    a SLURM job id, an instance id); they must be JSON-serialisable because they are stored in
    the state store and used by another process (the pull daemon) after a restart.

    Optional members a backend may have:

    * ``detached: bool`` — jobs keep running without the launching process; a relaunch
      re-attaches to them instead of submitting them again, and Ctrl-C does not cancel them.
    * ``poll_interval_s: float`` — how often the launch loop polls.
    * ``wait(timeout_s) -> None`` — block until a job may have changed state (or the timeout
      passed); the launch loop calls it between polls instead of sleeping.
    * ``stored_config() -> dict`` — the (secret-free) settings :func:`from_config` of the
      backend's module needs to rebuild it in another process.
    * ``read_log(handle, stream, offset) -> bytes`` — live log bytes from ``offset`` on, for
      ``launcher-core logs`` on jobs not pulled yet (``stream`` is "stdout" or "stderr").
    * ``clean(handles, *, sweep_id, sweep_handles=None, dry_run=False) -> CleanReport`` —
      delete the backend-side files of jobs already pulled home (``launcher-core clean``, ``pull
      --clean``); with ``sweep_handles`` (every job of the sweep, all clean after this call) also
      the sweep-level leftovers (snapshot, payloads, batch files, the remote sweep dir). Must
      refuse (:class:`launcher_core.clean.CleanRefused`) any path outside the sweep's own remote
      dirs before deleting anything, report in ``cleaned`` only jobs whose files are gone, and be
      safe to repeat. ``dry_run`` contacts nothing and fills only the targets. Backends without
      remote copies (local_pool, slurm on a shared file system) have nothing to clean.
    """

    name: str

    def prepare(self, sweep: SweepInfo) -> None:
        """Once per sweep: sync code, create remote dirs, start connections."""

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, dict[str, Any]]:
        """Start (or queue) the jobs; return ``{job_id: handle}`` for every job started."""

    def poll(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, JobStatus]:
        """States of many jobs in one round trip per host / scheduler call. A job left out is
        taken as unchanged (a backend may skip jobs still queued on its side)."""

    def fetch(
        self,
        jobs: Mapping[str, dict[str, Any]],
        local_dirs: Mapping[str, Path],
        pull_filter: PullFilter | None = None,
    ) -> None:
        """Bring the files of finished jobs into their local output dirs (incrementally: files
        already there and unchanged are not transferred again). Must be safe to repeat after
        an interruption at any point: a file is either absent, the old one, or complete."""

    def cancel(self, handles: Mapping[str, dict[str, Any]]) -> None:
        """Stop the given jobs; they are marked cancelled by the caller."""

    def close(self) -> None:
        """Release connections and local resources."""
