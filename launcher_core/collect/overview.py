"""What ``launcher-core top`` shows, as data: every sweep of the user-level sweep index with
unfinished jobs, the hosts running them and each running job, gathered into a :class:`Snapshot`
(the renderers in :mod:`launcher_core.cli.top` only lay it out).

Cost of a refresh: the sweeps whose stored configs share a backend's ``watch_group`` (the same
SSH settings, the same cluster) are observed together by one backend kept across refreshes
(:meth:`~launcher_core.backends.base.Backend.observe`): one remote command per host on the SSH
master the backend keeps open, one ``sacct`` per cluster; this machine is read here (one local
``nvidia-smi`` query for its GPUs and one for their processes). Nothing is written: state stores
are opened read-only and a sweep changes only when the user cancels a job.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.backends.registry import backend_for_meta, capabilities_of, watch_group
from launcher_core.errors import LauncherError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, JobState, JobStatus
from launcher_core.machines import (
    LOCAL_HOST,
    GpuReading,
    HostReading,
    JobReading,
    Observation,
    holders,
    read_this_machine,
)
from launcher_core.state import JobRow, StateStore

if TYPE_CHECKING:
    from launcher_core.backends.base import Backend

log = logging.getLogger("launcher_core.top")

UNFINISHED = (JobState.PENDING, JobState.SUBMITTED, JobState.RUNNING)
STATES = ("pending", "submitted", "running", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class JobView:
    """One job as ``top`` shows it (running or failed ones; the others are counted)."""

    sweep_id: str
    sweep_dir: Path
    idx: int
    job_id: str
    state: str
    host: str | None
    overrides: tuple[str, ...] = ()
    last_line: str | None = None
    reason: str | None = None  # a failed job's one-line reason
    duration_s: float | None = None

    @property
    def label(self) -> str:
        return f"{self.sweep_id}#{self.idx}"

    @property
    def unfinished(self) -> bool:
        return self.state in ("pending", "submitted", "running")


@dataclass
class SweepView:
    """A sweep: its jobs per state, pace, collector, and its running and failed jobs."""

    sweep_id: str
    sweep_dir: Path
    backend: str
    counts: dict[str, int]
    total: int
    collector: str
    throughput_per_h: float | None = None
    eta_s: float | None = None
    mean_duration_s: float | None = None
    jobs: list[JobView] = field(default_factory=list)
    error: str | None = None  # the backend could not be asked: counts are the stored ones

    @property
    def running(self) -> list[JobView]:
        return [j for j in self.jobs if j.state == "running"]

    @property
    def failed(self) -> list[JobView]:
        return [j for j in self.jobs if j.state == "failed"]


@dataclass(frozen=True)
class GpuView:
    """A GPU of a host and the jobs of ours holding it (labels ``<sweep id>#<job number>``)."""

    index: str
    utilization_pct: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    holders: tuple[str, ...] = ()


@dataclass
class HostView:
    """A machine running our jobs (this one is always listed)."""

    name: str
    running: int = 0
    load1: float | None = None
    cpus: int | None = None
    gpus: list[GpuView] = field(default_factory=list)
    error: str | None = None
    note: str | None = None  # why its GPUs could not be read (its load still shows)


@dataclass
class Snapshot:
    """One refresh: the sweeps, the hosts, and what the refresh cost (commands by kind)."""

    taken_at: float
    sweeps: list[SweepView]
    hosts: list[HostView]
    commands: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def sweep(self, sweep_id: str) -> SweepView:
        return next(s for s in self.sweeps if s.sweep_id == sweep_id)

    def host(self, name: str) -> HostView:
        return next(h for h in self.hosts if h.name == name)


@dataclass
class _Sweep:
    """A sweep read from its state store for one refresh; ``n`` prefixes its jobs' keys."""

    n: int
    sweep_dir: Path
    meta: dict[str, Any]
    rows: list[JobRow]

    @property
    def sweep_id(self) -> str:
        return str(self.meta.get("sweep_id") or self.sweep_dir.name)

    def key(self, row: JobRow) -> str:
        return f"{self.n}.{row.job_id}"


class Overview:
    """Gathers :class:`Snapshot` s; keeps one backend per watch group (and so its SSH masters)
    from one refresh to the next. ``targets``: sweep dirs or ids (default: every known sweep)."""

    def __init__(self, targets: Sequence[str] = ()) -> None:
        self.targets = list(targets)
        self._backends: dict[str, Backend] = {}

    def refresh(self) -> Snapshot:
        tic = time.monotonic()
        sweeps = self._unfinished_sweeps()
        seen: dict[int, Observation] = {}
        failures: dict[int, str] = {}
        commands: Counter[str] = Counter()
        for key, members in _groups(sweeps).items():
            observation, error = self._observe(key, members)
            commands.update(observation.commands)
            for sweep in members:
                seen[sweep.n] = observation
                if error:
                    failures[sweep.n] = error
        here = read_this_machine()
        commands["nvidia-smi here"] += 2 if here.gpus else 0
        views = [_sweep_view(s, seen.get(s.n, Observation()), failures.get(s.n)) for s in sweeps]
        hosts = _host_views(sweeps, seen, here, views)
        return Snapshot(time.time(), views, hosts, commands, time.monotonic() - tic)

    def close(self) -> None:
        for backend in self._backends.values():
            try:
                backend.close()
            except Exception as exc:  # noqa: BLE001 - closing the others matters more
                log.warning("closing a backend failed: %s", exc)
        self._backends.clear()

    def __enter__(self) -> Overview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unfinished_sweeps(self) -> list[_Sweep]:
        from launcher_core.sweeps import resolve_sweeps

        found = []
        for sweep_dir in resolve_sweeps(self.targets):
            try:
                with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
                    meta, rows = store.meta(), store.jobs()
            except Exception as exc:  # noqa: BLE001 - a broken store must not hide the others
                log.warning("cannot read %s: %s", sweep_dir, exc)
                continue
            if self.targets or any(r.state in UNFINISHED for r in rows):
                found.append(_Sweep(len(found), Path(sweep_dir), meta, rows))
        return found

    def _observe(self, key: str, members: Sequence[_Sweep]) -> tuple[Observation, str | None]:
        handles = {s.key(r): r.handle for s in members for r in s.rows if _asked(r)}
        if not handles:
            return Observation(), None
        try:
            backend = self._backends.get(key)
            if backend is None:
                backend = self._backends[key] = backend_for_meta(members[0].meta)
            return backend.observe(handles), None
        except LauncherError as exc:
            return Observation(), str(exc).splitlines()[0]


def _asked(row: JobRow) -> bool:
    return row.state in (JobState.SUBMITTED, JobState.RUNNING) and bool(row.handle)


def _groups(sweeps: Sequence[_Sweep]) -> dict[str, list[_Sweep]]:
    """Sweeps by the backend that observes them: a watch group, or the sweep alone."""
    groups: dict[str, list[_Sweep]] = {}
    for sweep in sweeps:
        key = watch_group(sweep.meta) or f"sweep {sweep.sweep_dir}"
        groups.setdefault(key, []).append(sweep)
    return groups


# --- one sweep -------------------------------------------------------------------------------
def _sweep_view(sweep: _Sweep, seen: Observation, error: str | None) -> SweepView:
    counts = dict.fromkeys(STATES, 0)
    jobs = []
    now = time.time()
    for row in sweep.rows:
        status = seen.statuses.get(sweep.key(row))
        state = _state(row, status)
        counts[state] = counts.get(state, 0) + 1
        if state in ("running", "failed"):
            jobs.append(_job_view(sweep, row, status, seen.jobs.get(sweep.key(row)), state))
    view = SweepView(
        sweep_id=sweep.sweep_id,
        sweep_dir=sweep.sweep_dir,
        backend=str(sweep.meta.get("backend", "?")),
        counts=counts,
        total=len(sweep.rows),
        collector=_collector(sweep),
        jobs=sorted(jobs, key=lambda j: (j.state != "running", j.idx)),
        error=error or _host_errors(seen),
    )
    _pace(view, sweep.rows, now)
    return view


def _state(row: JobRow, status: JobStatus | None) -> str:
    if status is not None:
        return status.state.value
    if row.state is JobState.PULLED:
        return (row.outcome or JobState.COMPLETED).value
    return row.state.value


def _job_view(sweep: _Sweep, row: JobRow, status: JobStatus | None, reading: JobReading | None, state: str) -> JobView:
    reason = (status.exit_reason if status else None) or row.exit_reason
    if state == "failed":
        reason = _exception_line(row.output_dir / LAUNCHER_DIR / RESULT_FILE) or reason
    return JobView(
        sweep_id=sweep.sweep_id,
        sweep_dir=sweep.sweep_dir,
        idx=row.idx,
        job_id=row.job_id,
        state=state,
        host=(status.host if status else None) or row.host,
        overrides=tuple(row.overrides),
        last_line=reading.last_line if reading else None,
        reason=_one_line(reason) if state == "failed" else None,
        duration_s=row.duration_s if row.started_at or row.submitted_at else None,
    )


_SUMMARIES: dict[tuple[Path, int], str | None] = {}  # (result file, mtime) -> its exception line


def _exception_line(result: Path) -> str | None:
    """``ExceptionType: message`` of a failed job whose result is here (read once per version)."""
    from launcher_core.runtime.worker import failure_summary

    try:
        key = (result, result.stat().st_mtime_ns)
    except OSError:
        return None
    if key not in _SUMMARIES:
        _SUMMARIES[key] = failure_summary(result)
    return _SUMMARIES[key]


def _one_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _host_errors(seen: Observation) -> str | None:
    return "; ".join(f"{host}: {_one_line(e)}" for host, e in sorted(seen.errors.items())) or None


def _pace(view: SweepView, rows: Sequence[JobRow], now: float) -> None:
    """Throughput since the first job was handed to the backend, and the ETA it gives."""
    finished = sum(view.counts[s] for s in ("completed", "failed", "cancelled"))
    left = sum(view.counts[s] for s in ("pending", "submitted", "running"))
    starts = [r.submitted_at for r in rows if r.submitted_at]
    durations = [r.finished_at - r.started_at for r in rows if r.finished_at and r.started_at]
    if durations:
        view.mean_duration_s = sum(durations) / len(durations)
    if not starts or not finished:
        return
    elapsed = max(now - min(starts), 1e-6)
    view.throughput_per_h = finished / elapsed * 3600.0
    view.eta_s = left / (finished / elapsed)


def _collector(sweep: _Sweep) -> str:
    """Who brings the results home: the sweep's auto-pull daemon, a pull daemon, or none."""
    from launcher_core.collect.autopull import collector

    if not capabilities_of(sweep.meta).detached:
        return "not needed (the launch collects)"
    found = collector(sweep.sweep_dir)
    if found is None:
        return "none"
    what = "auto-pull daemon" if found.kind == "sweep" else "pull daemon"
    return f"{what} (pid {found.pid})"


# --- hosts -----------------------------------------------------------------------------------
def _host_views(
    sweeps: Sequence[_Sweep], seen: Mapping[int, Observation], here: HostReading, views: Sequence[SweepView]
) -> list[HostView]:
    """This machine first, then every host running a job of ours, with its GPUs and their holders."""
    readings: dict[str, HostReading] = {LOCAL_HOST: here}
    jobs_on: dict[str, dict[str, JobReading]] = {}
    labels: dict[str, str] = {}
    errors: dict[str, str] = {}
    for sweep in sweeps:
        observation = seen.get(sweep.n, Observation())
        readings.update(observation.hosts)
        errors.update({h: _one_line(e) or "" for h, e in observation.errors.items()})
        for row in sweep.rows:
            key = sweep.key(row)
            status = observation.statuses.get(key)
            if status is not None and status.state is JobState.RUNNING and key in observation.jobs:
                jobs_on.setdefault(status.host or LOCAL_HOST, {})[key] = observation.jobs[key]
                labels[key] = f"{sweep.sweep_id}#{row.idx}"
    running = Counter(j.host or "?" for v in views for j in v.running)
    names = [LOCAL_HOST, *sorted((set(readings) | set(running) | set(errors)) - {LOCAL_HOST})]
    hosts = []
    for name in names:
        reading = readings.get(name, HostReading())
        on_host = jobs_on.get(name, {})
        gpus = [_gpu_view(g, reading, on_host, labels) for g in reading.gpus]
        hosts.append(HostView(name, running[name], reading.load1, reading.cpus, gpus, errors.get(name), reading.note))
    return hosts


def _gpu_view(
    gpu: GpuReading, reading: HostReading, jobs: Mapping[str, JobReading], labels: Mapping[str, str]
) -> GpuView:
    held = tuple(labels[k] for k in holders(gpu, reading, jobs))
    return GpuView(gpu.index, gpu.utilization_pct, gpu.memory_used_mib, gpu.memory_total_mib, held)
