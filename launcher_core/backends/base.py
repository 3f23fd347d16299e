"""The one contract every backend implements, required and optional parts both typed.

A backend subclasses :class:`Backend`: it must say how to prepare, submit, poll, fetch and
cancel; the optional capabilities have defaults here that mean "not supported", so the
controller, the pull daemon, ``status``, ``logs``, ``cancel`` and ``clean`` call them directly
and never probe with ``getattr``. ``tests/test_backend_contract.py`` runs the same behavioural
tests against every backend.

A handle is whatever a backend needs to find a job again later (a PID file and host, a Slurm job
id, an instance id): one :class:`JobHandle` class per backend, a frozen dataclass whose fields are
the keys of the JSON the state store keeps, so that another process (the pull daemon, ``status``)
rebuilds it after a restart. Code outside a backend never reads a handle's keys: it asks the handle
(:meth:`JobHandle.describe`, :meth:`JobHandle.remote_paths`, ...) or the backend's descriptor. A
backend may still return plain JSON dicts from ``submit``: the state store keeps them as they are
and readers see them through :class:`PlainHandle`.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from launcher_core.intents import IntentJournal, NoJournal, SubmitIntent
from launcher_core.jobs import JobSpec, JobStatus, PullFilter, SweepInfo

if TYPE_CHECKING:
    from launcher_core.machines import Observation
    from launcher_core.preflight import Check, PreflightRequest

HandleT = TypeVar("HandleT", bound="JobHandle")
ONLY_WITH = "hrl_only_with"  # field metadata: the key is written only while this field is not None


def written_with(gate: str) -> Any:
    """A field (default None) whose key the JSON has only while the field ``gate`` is set (itself,
    or the field that says the group applies: slurm's ``login_host``)."""
    return field(default=None, metadata={ONLY_WITH: gate})


@dataclass(frozen=True)
class RemoteJobPaths:
    """Where a job ran on another machine and where its files go here: what fetching its dir and
    :func:`launcher_core.remote.workspace.localize_result` need. Paths there are ``remote_*``."""

    remote_sweep_dir: str | None = None
    remote_job_dir: str | None = None
    rel: str | None = None  # the job's subdir of the sweep dir (the same there and here)
    remote_dir: str | None = None  # the workspace there (snapshots and sweep dirs), when it has one
    remote_cwd: str | None = None  # the jobs' working dir there (the code snapshot)
    local_cwd: str | None = None  # what a JobReturn naming remote_cwd is pointed at here
    local_sweep_dir: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RemoteJobPaths:
        """From a plain JSON handle that uses these keys (as the built-in backends' handles do)."""
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass(frozen=True, kw_only=True)
class JobHandle:
    """What finds one job again: a frozen dataclass per backend whose fields, in order, are the keys
    of its JSON in the state store. Keys of a stored handle the class does not know are kept in
    ``extra`` and written after the fields; fields with defaults that a stored handle lacks are
    remembered in ``absent`` and left out again, so a stored handle round-trips unchanged."""

    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The handle as the state store keeps it (JSON types only)."""
        values = self.__dict__
        absent = self.absent
        out = {
            name: values[name]
            for name, gate in _json_plan(type(self))
            if (gate is None or values[gate] is not None) and name not in absent
        }
        if self.extra:
            out.update(self.extra)
        return out

    @classmethod
    def from_json(cls: type[HandleT], data: Mapping[str, Any]) -> HandleT:
        """The handle from its stored JSON; a ``BackendError`` names the keys it lacks."""
        names, required = _json_keys(cls)
        missing = required - data.keys()
        if missing:
            from launcher_core.errors import BackendError

            raise BackendError(f"a {cls.__name__} needs the keys {sorted(missing)}; this one has {sorted(data)}")
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra, absent=names - data.keys())

    @classmethod
    def of(cls: type[HandleT], value: Handle) -> HandleT:
        """``value`` as this class: itself, or parsed from its JSON (another process's handle)."""
        if isinstance(value, cls):
            return value
        return cls.from_json(value.to_json() if isinstance(value, JobHandle) else value)

    @classmethod
    def typed(cls: type[HandleT], handles: Mapping[str, Handle]) -> dict[str, HandleT]:
        """Every handle of ``handles`` as this class; an empty one (a job with no handle) is left out."""
        return {job_id: cls.of(h) for job_id, h in handles.items() if h}

    # --- what readers outside the backend ask ---------------------------------------------------------
    def host_label(self) -> str | None:
        """The host the state store records for the job when it is submitted (None: none yet)."""
        return None

    def describe(self) -> str | None:
        """What ``status`` shows as "where" (a Slurm job id, an instance id; None: the job's host)."""
        return None

    def remote_paths(self) -> RemoteJobPaths | None:
        """The job's paths on the machine it ran on (None: it ran in the local sweep dir)."""
        return None

    def job_dir(self) -> str | None:
        """The job's output dir where it ran (None: here)."""
        paths = self.remote_paths()
        return paths.remote_job_dir if paths is not None and paths.remote_job_dir else None

    def dependency_task(self) -> str | None:
        """The job's task as a scheduler's dependency names it (None: no such scheduler)."""
        return None

    def placement(self) -> str | None:
        """The part of a sweep over several places the job was placed on (a spill target; the
        ``where`` column of ``results``). None: the sweep has one place."""
        return None


@functools.cache
def _json_fields(cls: type[JobHandle]) -> tuple[Field[Any], ...]:
    return tuple(f for f in fields(cls) if f.name not in ("extra", "absent"))


@functools.cache
def _json_plan(cls: type[JobHandle]) -> tuple[tuple[str, str | None], ...]:
    """(key, the field that must be set for it to be written, if any) per field, in order."""
    return tuple((f.name, f.metadata.get(ONLY_WITH)) for f in _json_fields(cls))


@functools.cache
def _json_keys(cls: type[JobHandle]) -> tuple[frozenset[str], frozenset[str]]:
    """(every key of the class's JSON, the keys a stored handle must have)."""
    found = _json_fields(cls)
    required = {f.name for f in found if f.default is MISSING and f.default_factory is MISSING}
    return frozenset(f.name for f in found), frozenset(required)


@dataclass(frozen=True, kw_only=True)
class PlainHandle(JobHandle):
    """The handle of a backend that returns plain JSON dicts (no handle class of its own), read
    with the keys the built-in backends use for the same things (``host``, ``remote_job_dir``, ...)."""

    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlainHandle:
        return cls(data=dict(data))

    def host_label(self) -> str | None:
        return self.data.get("host")

    def remote_paths(self) -> RemoteJobPaths | None:
        return RemoteJobPaths.from_json(self.data)


Handle = JobHandle | Mapping[str, Any]  # a backend's handle, or its JSON as the state store keeps it


def as_job_handle(value: Handle) -> JobHandle:
    """A handle a reader can ask: a backend's own, or a plain JSON one wrapped."""
    return value if isinstance(value, JobHandle) else PlainHandle.from_json(value)


def handle_json(value: Handle) -> dict[str, Any]:
    """A handle as the state store keeps it."""
    return value.to_json() if isinstance(value, JobHandle) else dict(value)


def remote_paths_of(value: Handle) -> RemoteJobPaths:
    """The remote paths of a job's handle (all None when it has none)."""
    return as_job_handle(value).remote_paths() or RemoteJobPaths()


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
    #: where :meth:`submit` records each submission the jobs outlive before making it (the
    #: controller sets the launch's state store; :mod:`launcher_core.intents`)
    intents: IntentJournal = NoJournal()

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

    def accepted(self, intents: Sequence[SubmitIntent]) -> Mapping[str, Handle]:
        """Which of these recorded submissions (of a launch killed before it recorded their jobs)
        the backend accepted, asked in one lookup for all of them: ``{job_id: handle}`` of their
        jobs. Default: none (a backend that records no intents)."""
        return {}

    def unreachable(self) -> list[str]:
        """The places (hosts) this backend could not reach at its last poll and is still riding
        out an outage with (its jobs left unchanged); the pull daemon gives up on a sweep
        unreachable for ``auto_pull_give_up_h``. Default: none (a failure raises instead)."""
        return []

    def reattachable(self, handle: Handle) -> bool:
        """Whether a job an earlier, dead launch handed over can be re-attached (polled and fetched
        again) rather than started anew. Detached backends always can; others say per job."""
        return self.detached

    def outlives_launcher(self, handles: Mapping[str, Handle]) -> set[str]:
        """The jobs among ``handles`` that run on when the launching process stops: Ctrl-C leaves
        them running (a relaunch or ``pull`` collects them) and cancels the others. Default: all
        of them on a detached backend, none on another."""
        return set(handles) if self.detached else set()

    def retry_resources(self, spec: JobSpec, mem_factor: float) -> dict[str, Any]:
        """The resources of the next attempt of a job that ran out of memory
        (``retry_on: [out_of_memory]``): ``mem_factor`` times its memory where the backend has a
        memory setting. Default: the same resources."""
        return dict(spec.resources)

    def room(self) -> int | None:
        """How many more jobs :meth:`submit` may take now; the launch loop holds the rest back
        and offers them as room frees up (the spill backend: free slots of its targets). None:
        any number (the backend queues them itself). Default: None."""
        return None

    def no_room_reason(self) -> str:
        """Why :meth:`room` is 0 with nothing running (the held-back jobs end with this reason)."""
        return f"the {self.name} backend has no room for more jobs"

    def overdue(self, statuses: Mapping[str, JobStatus], handles: Mapping[str, Handle]) -> list[str]:
        """Of the jobs just polled, those waiting in a queue that should be taken back
        (:meth:`withdraw`) and run elsewhere (the spill backend: ``max_queue_wait_min`` passed and
        another target has room). Default: none."""
        return []

    def given_up(self, handles: Mapping[str, Handle]) -> str | None:
        """Why these jobs, all still running as far as anyone knows, will not be heard of in this
        launch (the spill backend: every one is on a target that lost contact): the launch stops
        with this message, leaving them for a relaunch to re-attach. None: keep watching (a
        backend that cannot reach its jobs raises from :meth:`poll` instead). Default: None."""
        return None

    def withdraw(self, handles: Mapping[str, Handle]) -> set[str]:
        """Take back jobs that have not started: cancel each only while it is still queued, and
        return the ids confirmed gone without ever having started (a job that started meanwhile
        is left running and not returned). Safe to repeat (a relaunch finishes a withdrawal a
        killed launch began). Default: nothing can be taken back."""
        return set()

    def billed_hours(self, handles: Mapping[str, Handle]) -> float | None:
        """The machine-hours these jobs' machines were billed so far (ended ones included;
        EC2: each instance from launch to termination, at least a minute). None: this backend
        does not bill per machine. Default: None."""
        return None

    def hourly_price_usd(self) -> float | None:
        """The price of one of its machines per hour as the provider tells it (EC2 spot: the
        latest spot price history entry), or None when it does not. Default: None."""
        return None

    def spent_usd(self) -> float | None:
        """What the sweep's machines cost so far as this launch counts it (``status`` and
        ``results`` show it). None: not counted. Default: None."""
        return None

    def progress_lines(self) -> list[str]:
        """Lines the launch shows under its progress and in its summary (the spill backend: one
        per target). Default: none."""
        return []

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

    def read_log(self, handle: Handle, stream: str, offset: int = 0) -> bytes | None:
        """Live log bytes from ``offset`` on for ``launcher-core logs`` on jobs not pulled yet
        (``stream`` is "stdout" or "stderr"); None when the backend cannot read them remotely."""
        return None

    def observe(self, handles: Mapping[str, Handle]) -> Observation:
        """What ``launcher-core top`` shows of running jobs: their states (as :meth:`poll`) and, in
        the same round trip per host, the machines' load and GPUs and each job's last stdout line
        (:mod:`launcher_core.machines`). The handles may come from several sweeps whose stored
        configs share the descriptor's ``watch_group``. Default: :meth:`poll` alone."""
        from launcher_core.machines import Observation

        return Observation(statuses=dict(self.poll(handles)))

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
