"""The one contract every backend implements, required and optional parts both typed.

A backend subclasses :class:`Backend`: it must say how to prepare, submit, poll, fetch and
cancel; the optional capabilities have defaults here that mean "not supported", so the
controller, the pull daemon, ``status``, ``logs``, ``cancel`` and ``clean`` call them directly
and never probe with ``getattr``. ``tests/test_backend_contract.py`` runs the same behavioural
tests against every backend.

``handle`` values are whatever a backend needs to find a job again later (a PID and host, a
Slurm job id, an instance id); they are JSON-serialisable because they are stored in the state
store and used by another process (the pull daemon) after a restart.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from launcher_core.jobs import JobSpec, JobStatus, PullFilter, SweepInfo

if TYPE_CHECKING:
    from launcher_core.preflight import Check, PreflightRequest

Handle = dict[str, Any]


@dataclass
class CleanReport:
    """What a backend deleted (or, in a dry run, would delete)."""

    targets: dict[str, list[str]] = field(default_factory=dict)  # location -> paths / S3 prefixes
    jobs: dict[str, int] = field(default_factory=dict)  # location -> number of jobs
    cleaned: set[str] = field(default_factory=set)  # job ids whose backend-side files are gone
    sweep_cleaned: bool = False  # the sweep-level leftovers are gone too
    notes: list[str] = field(default_factory=list)  # what was kept, and why
    errors: list[str] = field(default_factory=list)  # locations that failed (the others went on)
    nothing_to_clean: str | None = None  # why this backend has no remote copies at all

    def add_target(self, location: str, path: str) -> None:
        self.targets.setdefault(location, []).append(path)


@dataclass(frozen=True)
class CleanRequest:
    """What :meth:`Backend.clean` was asked to delete."""

    handles: Mapping[str, Handle]
    sweep_id: str
    sweep_handles: Mapping[str, Handle] | None = None  # every job of the sweep: sweep-level files too
    dry_run: bool = False


class Backend(abc.ABC):
    """Prepare once, submit in batches, poll many at once, fetch, cancel; optionally more."""

    name: ClassVar[str]
    #: jobs keep running without the launching process: a relaunch re-attaches to them instead of
    #: submitting them again, and Ctrl-C does not cancel them
    detached: ClassVar[bool] = False
    #: jobs run from this machine's file system (not a copy shipped elsewhere): the controller
    #: freezes the code dir for them (``SweepInfo.code_snapshot``)
    runs_local_code: bool = False
    #: how often the launch loop polls (None: the launcher's own ``poll_interval_s``)
    poll_interval_s: float | None = None

    # --- required -------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, sweep: SweepInfo) -> None:
        """Once per sweep: sync code, create remote dirs, start connections."""

    @abc.abstractmethod
    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, Handle]:
        """Start (or queue) the jobs; return ``{job_id: handle}`` for every job started."""

    @abc.abstractmethod
    def poll(self, handles: Mapping[str, Handle]) -> Mapping[str, JobStatus]:
        """States of many jobs in one round trip per host / scheduler call. A job left out is
        taken as unchanged (a backend may skip jobs still queued on its side)."""

    @abc.abstractmethod
    def fetch(
        self,
        jobs: Mapping[str, Handle],
        local_dirs: Mapping[str, Path],
        pull_filter: PullFilter | None = None,
    ) -> None:
        """Bring the files of finished jobs into their local output dirs (incrementally: files
        already there and unchanged are not transferred again). Must be safe to repeat after an
        interruption at any point: a file is either absent, the old one, or complete. A bare pull
        (``pull_filter``) may skip big or excluded files, never ``.launcher/`` files. Every
        ``JobReturn`` that comes home names local paths (``working_dir``, ``output_dir``)."""

    @abc.abstractmethod
    def cancel(self, handles: Mapping[str, Handle]) -> None:
        """Stop the given jobs; they are marked cancelled by the caller."""

    # --- optional, with "not supported" defaults ----------------------------------------------
    def resolve_resources(self, specs: Sequence[JobSpec]) -> None:  # noqa: B027 - optional: nothing to read
        """Before anything is created or contacted: read each job's own resources from its config
        (``resources_from``, into ``spec.resources``) and refuse (``ConfigError`` naming the job and
        the key) a job whose resources are invalid or cannot be met anywhere. Default: none."""

    def reattachable(self, handle: Mapping[str, Any]) -> bool:
        """Whether a job an earlier, dead launch handed over can be re-attached (polled and fetched
        again) rather than started anew. Detached backends always can; others say per job."""
        return self.detached

    def retry_resources(self, spec: JobSpec, mem_factor: float) -> dict[str, Any]:
        """The resources of the next attempt of a job that ran out of memory
        (``retry_on: [out_of_memory]``): ``mem_factor`` times its memory where the backend has a
        memory setting. Default: the same resources."""
        return dict(spec.resources)

    def close(self) -> None:  # noqa: B027 - optional, nothing to release by default
        """Release connections and local resources."""

    def wait(self, timeout_s: float) -> None:
        """Block until a job may have changed state or ``timeout_s`` passed (the launch loop
        calls it between polls)."""
        time.sleep(timeout_s)

    def stored_config(self) -> dict[str, Any]:
        """The secret-free settings the backend module's ``from_config`` needs to rebuild this
        backend in another process (the pull daemon, ``status``, ``cancel``)."""
        return {}

    def read_log(self, handle: Mapping[str, Any], stream: str, offset: int = 0) -> bytes | None:
        """Live log bytes from ``offset`` on for ``launcher-core logs`` on jobs not pulled yet
        (``stream`` is "stdout" or "stderr"); None when the backend cannot read them remotely."""
        return None

    def list_files(self, handles: Mapping[str, Handle]) -> Mapping[str, list[tuple[str, int]]] | None:
        """The backend-side files of finished jobs, ``{job_id: [(path relative to the job's output
        dir, size in bytes), ...]}`` (what a full fetch would bring), for ``launcher-core files`` on
        jobs not pulled yet or pulled bare. None: this backend keeps no copy it can list."""
        return None

    def preflight(self, request: PreflightRequest) -> list[Check]:
        """Check, before anything is submitted, that every host that gets jobs (``request.n_jobs``;
        None: every host) can run them: one round trip per host, skipping hosts
        ``request.is_cached`` reports as passed. Rows that fail stop the launch
        (:func:`launcher_core.preflight.run_preflight`). The default: nothing to check."""
        return []

    def dry_run(self, specs: Sequence[JobSpec]) -> Mapping[str, Any]:
        """``dry_run=true``: write what would be submitted, submit nothing; per job a value naming
        what would run it (it becomes the job's return value)."""
        from launcher_core.errors import ConfigError

        raise ConfigError(f"hydra.launcher.dry_run: the {self.name} launcher has no dry run")

    def clean(
        self,
        handles: Mapping[str, Handle],
        *,
        sweep_id: str,
        sweep_handles: Mapping[str, Handle] | None = None,
        dry_run: bool = False,
    ) -> CleanReport:
        """Delete the backend-side files of jobs already pulled home; with ``sweep_handles``
        (every job of the sweep, all clean after this call) also the sweep-level leftovers.
        Backends implement :meth:`clean_backend_files`."""
        return self.clean_backend_files(CleanRequest(handles, sweep_id, sweep_handles, dry_run))

    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """What :meth:`clean` does on this backend. Must refuse
        (:class:`launcher_core.remote.paths.CleanRefused`) any path outside the sweep's own remote
        dirs before deleting anything, report in ``cleaned`` only jobs whose files are gone, and be
        safe to repeat; ``dry_run`` contacts nothing and fills only the targets. The default: this
        backend keeps no remote copies."""
        return CleanReport(nothing_to_clean=f"the {self.name} backend keeps no remote copies")


def sweep_payload_for(sweep: SweepInfo, task_function: Any) -> bytes:
    """The sweep payload of jobs submitted now (:mod:`launcher_core.runtime.payload`): the task
    function (by reference where it can be), the launch's code record and the composer's
    templates as they are now (a later batch of a multirun may bring new ones), from which each
    job composes its own config where it runs. The Hydra context stays here: the job side
    builds its own from the job's config."""
    from launcher_core.runtime import payload

    composer_state = sweep.composer.node_state() if sweep.composer is not None else None
    data, needs = payload.build(task_function, composer_state, sweep.code_record, sweep.code_dir)
    sweep.payload_needs = needs
    return data
