"""The job model and the one contract every backend implements.

A sweep is a list of :class:`JobSpec` (what to run) that the controller turns into rows of the
state store (what happened). Backends (:mod:`launcher_core.backends.base`) only ever see specs
and the handles they returned themselves, so the controller, the pull daemon, ``status`` and
``cancel`` never care which backend ran a job.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the launcher's own files in every job's output dir, defined once with the job side
from launcher_core.runtime.markers import LAUNCHER_DIR as LAUNCHER_DIR
from launcher_core.runtime.markers import PID_FILE as PID_FILE
from launcher_core.runtime.markers import RESULT_FILE as RESULT_FILE
from launcher_core.runtime.markers import STDERR_FILE as STDERR_FILE
from launcher_core.runtime.markers import STDOUT_FILE as STDOUT_FILE


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


def job_id_for(sweep_id: str, idx: int, overrides: Sequence[str]) -> str:
    """Id of the job at position ``idx`` (``hydra.job.num``) of a sweep: a job is its place in the
    sweep, not its set of overrides, so ``+t=2,2,2`` (or a sweeper proposing the same values
    twice) gives separate jobs. The same sweep, position and overrides always give the same id,
    which is what a relaunch and ``skip_completed`` match on.
    """
    return _job_hash(sweep_id, f"\x01{int(idx)}".encode(), overrides)


def legacy_job_id_for(sweep_id: str, overrides: Sequence[str]) -> str:
    """The id earlier versions gave a job (sweep and overrides only, so jobs with the same
    overrides shared it). Kept to resume sweeps whose state store holds such ids
    (:meth:`launcher_core.state.StateStore.adopt_earlier_ids`)."""
    return _job_hash(sweep_id, b"", overrides)


def _job_hash(sweep_id: str, position: bytes, overrides: Sequence[str]) -> str:
    """Overrides are hashed in order and separated by a byte that cannot occur in an override,
    so ``["a=1,b"]`` and ``["a=1", "b"]`` never collide; the position is hashed apart from them."""
    digest = hashlib.sha256()
    digest.update(sweep_id.encode())
    digest.update(position)
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
    # per-job resources read from its config at launch (``resources_from``; launcher_core.resources)
    resources: dict[str, Any] = field(default_factory=dict, compare=False)
    # which run of the job this is: 1, then 2, ... when an attempt was lost (launcher_core.retry)
    attempt: int = field(default=1, compare=False)

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


class Ending(str, enum.Enum):
    """How an attempt of a job ended: the one vocabulary of the controller, the pull daemon,
    ``status`` and ``results`` (docs/guarantees.md, "Jobs lost to the machine run again")."""

    COMPLETED = "completed"
    TASK_FAILED = "task failed"  # the task raised, or exited non-zero on its own
    TIMED_OUT = "timed out"
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out of memory"
    LOST = "lost"  # gone for a reason outside the task (its LossCause says which)
    UNKNOWN = "unknown"  # cannot be told now (an unreachable host): may still be running


class LossCause(str, enum.Enum):
    """Why a lost job's process is gone."""

    NODE_FAILURE = "node failure"
    BOOT_FAILURE = "boot failure"
    PREEMPTED = "preempted"
    INSTANCE_TERMINATED = "instance terminated by AWS"
    TERMINATED_OUTSIDE = "instance terminated outside the launcher"
    HOST_REBOOTED = "host rebooted"
    RUNNER_DIED = "runner died"


@dataclass
class JobStatus:
    """What a backend reports about one job in :meth:`Backend.poll`.

    ``ending`` says how a terminal job ended when the backend knows better than its state
    (lost, out of memory); left None it follows from the state (:meth:`classified`)."""

    state: JobState
    exit_reason: str | None = None
    host: str | None = None
    ending: Ending | None = None
    cause: LossCause | None = None  # with Ending.LOST

    def classified(self) -> Ending | None:
        """How the job ended (None while it has not)."""
        if self.ending is not None:
            return self.ending
        return ending_of(self.state, self.exit_reason)

    def label(self) -> str | None:
        """The stored form of :meth:`classified`: ``lost: node failure``, ``out of memory``, ..."""
        return ending_label(self.classified(), self.cause)

    @classmethod
    def lost(cls, cause: LossCause, reason: str, host: str | None = None) -> JobStatus:
        """A job whose process is known to be gone for ``cause``: a FAILED state with the
        backend's own reason, so a launch that does not retry reports it exactly as before."""
        return cls(JobState.FAILED, reason, host, Ending.LOST, cause)


def ending_of(state: JobState, exit_reason: str | None) -> Ending | None:
    """The ending a state implies when the backend said nothing more."""
    if state is JobState.COMPLETED:
        return Ending.COMPLETED
    if state is JobState.CANCELLED:
        return Ending.CANCELLED
    if state is not JobState.FAILED:
        return None
    reason = exit_reason or ""
    if reason.startswith("timeout"):
        return Ending.TIMED_OUT
    if reason.startswith("out of memory"):
        return Ending.OUT_OF_MEMORY
    return Ending.TASK_FAILED


def ending_label(ending: Ending | None, cause: LossCause | None = None) -> str | None:
    if ending is None:
        return None
    return f"{ending.value}: {cause.value}" if ending is Ending.LOST and cause is not None else ending.value


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
    # the launch's frozen copy of code_dir, for backends whose jobs run from this file system
    # (``Backend.runs_local_code``); jobs import from it
    code_snapshot: Path | None = None
    # what each job's ``.launcher/code.json`` says (written by the job when it starts)
    code_record: dict[str, Any] | None = None
    # the batch's SweepComposer: its ``node_state()`` goes into the sweep payload, and jobs
    # compose their configs from it where they run
    composer: Any = None
    # what the job side needs to load the sweep payload (runtime.payload.PayloadNeeds), known
    # before the pre-flight checks the hosts against it
    payload_needs: Any = None
