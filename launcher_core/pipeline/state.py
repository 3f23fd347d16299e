"""The pipeline's own state, its run lock, and every job's state as the stages' state stores tell it.

``<pipeline dir>/.pipeline/state.json`` (written atomically) records only which jobs each stage
launch was given, before the launch starts, the placements, and a cancel; job states and handles
are read from the stages' state stores (:func:`read_views`). :func:`build_views` turns those rows
into per-job labels, blocked jobs included, without reading anything (the scheduler's input).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.errors import LauncherError
from launcher_core.jobs import JobState
from launcher_core.pipeline.matching import job_needs, needs_whole_stage
from launcher_core.pipeline.model import STATE_FILE, JobPlan, Pipeline, Stage
from launcher_core.state import JobRow, StateStore


# --- the pipeline's own state ---------------------------------------------------------------------
@dataclass
class PipelineState:
    """``<pipeline dir>/.pipeline/state.json``: each stage's launches (the job numbers given,
    recorded before the launch starts), cached placements, and whether it was cancelled."""

    path: Path
    launches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    placements: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled_at: float | None = None

    @classmethod
    def load(cls, pipeline: Pipeline) -> PipelineState:
        path = pipeline.state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise LauncherError(f"cannot read the pipeline state {path}: {exc}") from exc
        return cls(path, data.get("launches", {}), data.get("placements", {}), data.get("cancelled_at"))

    def save(self) -> None:
        from launcher_core.runtime.worker import atomic_write_bytes

        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "path"}
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode())

    def launched(self, stage: str) -> set[int]:
        return {n for launch in self.launches.get(stage, []) for n in launch["jobs"]}


@contextlib.contextmanager
def run_lock(pipeline: Pipeline) -> Iterator[bool]:
    """One process launches a pipeline's stages at a time (flock; dies with its holder)."""
    from launcher_core.sweeps import try_lock

    pipeline.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with try_lock(pipeline.state_dir / "run.lock") as locked:
        yield locked


def lock_holder(pipeline: Pipeline) -> int | None:
    """PID of the process holding the run lock, if any."""
    lock = pipeline.state_dir / "run.lock"
    if not lock.exists():
        return None
    with run_lock(pipeline) as locked:
        if locked:
            return None
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- job states across stages ---------------------------------------------------------------------
DONE, FAILED, CANCELLED, RUNNING, QUEUED, FINISHED, NOT_STARTED, BLOCKED = (
    "done",
    "failed",
    "cancelled",
    "running",
    "queued",
    "finished, not home",
    "not started",
    "blocked",
)
ACTIVE = (QUEUED, RUNNING, FINISHED)  # handed to the backend, not home yet


@dataclass
class StageView:
    """A stage's jobs as its state store (and the pipeline) sees them now."""

    stage: Stage
    rows: dict[int, JobRow]
    status: dict[int, str]
    blocked: dict[int, str]  # job number -> why
    backend: str | None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for num in range(len(self.stage.jobs)):
            label = (
                BLOCKED if num in self.blocked and self.status[num] in (NOT_STARTED, CANCELLED) else self.status[num]
            )
            out[label] = out.get(label, 0) + 1
        return out


StageRows = tuple[dict[int, JobRow], "str | None"]  # a stage's rows by job number, and its backend


def read_views(pipeline: Pipeline) -> dict[str, StageView]:
    """Every stage's job states as its state store has them now (see :func:`build_views`)."""
    return build_views(pipeline, {s.name: read_rows(pipeline, s) for s in pipeline.stages.values()})


def read_rows(pipeline: Pipeline, stage: Stage) -> StageRows:
    """The stage's state store rows by job number (a job is its dir, ``<stage>/<num>``), and its backend."""
    sweep_dir = pipeline.stage_dir(stage.name)
    if not StateStore.exists_in(sweep_dir):
        return {}, None
    try:
        with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
            rows = store.jobs()
            backend = store.meta().get("backend")
    except sqlite3.OperationalError:  # its launch is creating it this instant: no jobs yet
        return {}, None
    by_dir = {str(r.output_dir): r for r in rows}
    out = {}
    for job in stage.jobs:
        row = by_dir.get(str(sweep_dir / str(job.num)))
        if row is not None:
            out[job.num] = row
    return out, backend


def build_views(pipeline: Pipeline, stage_rows: Mapping[str, StageRows]) -> dict[str, StageView]:
    """Every stage's job states, in dependency order, with the jobs blocked by failed upstream
    jobs, from the stages' rows (a stage missing from ``stage_rows`` has none)."""
    views: dict[str, StageView] = {}
    whole: dict[str, str | None] = {}  # upstream stage -> why a job needing all of it is blocked
    for stage in pipeline.stages.values():
        rows, backend = stage_rows.get(stage.name, ({}, None))
        status = {job.num: job_status(rows.get(job.num)) for job in stage.jobs}
        view = StageView(stage, rows, status, {}, backend)
        for job in stage.jobs:
            if status[job.num] not in (NOT_STARTED, CANCELLED, QUEUED):
                continue
            reason = _blocked_by(pipeline, views, whole, stage, job)
            if reason:
                view.blocked[job.num] = reason
        views[stage.name] = view
    return views


def job_status(row: JobRow | None) -> str:
    """The pipeline's label of a job from its state store row (None: never handed over)."""
    if row is None or row.state is JobState.PENDING:
        return NOT_STARTED
    if row.state is JobState.PULLED:
        return {JobState.COMPLETED: DONE, JobState.FAILED: FAILED}.get(row.outcome or JobState.FAILED, CANCELLED)
    return {
        JobState.SUBMITTED: QUEUED,
        JobState.RUNNING: RUNNING,
        JobState.COMPLETED: FINISHED,
        JobState.FAILED: FAILED,
        JobState.CANCELLED: CANCELLED,
    }[row.state]


def _blocked_by(
    pipeline: Pipeline,
    views: Mapping[str, StageView],
    whole: dict[str, str | None],
    stage: Stage,
    job: JobPlan,
) -> str | None:
    """Why this job can never run as things are (a needed upstream job failed, was cancelled or
    is blocked itself), or None. A whole upstream stage is looked at once, not once per job."""
    for name, nums in job_needs(pipeline, stage, job).items():
        if needs_whole_stage(pipeline, name, nums):
            if name not in whole:
                whole[name] = _first_bad(views[name], nums)
            reason = whole[name]
        else:
            reason = _first_bad(views[name], nums)
        if reason:
            return reason
    return None


def _first_bad(upstream: StageView, nums: list[int]) -> str | None:
    name = upstream.stage.name
    for num in nums:
        if num in upstream.blocked:
            return f"needs {name} #{num} (blocked)"
        if upstream.status[num] in (FAILED, CANCELLED):
            row = upstream.rows.get(num)
            why = f": {row.exit_reason}" if row is not None and row.exit_reason else ""
            return f"needs {name} #{num} ({upstream.status[num]}{why})"
    return None


def stage_label(view: StageView, state: PipelineState) -> str:
    """done / done (N failed) / running / waiting / blocked / cancelled / not started."""
    counts = view.counts()
    total = len(view.stage.jobs)
    if counts.get(DONE, 0) == total:
        return "done"
    if any(counts.get(s) for s in ACTIVE):
        return "running"
    final = sum(counts.get(s, 0) for s in (DONE, FAILED, BLOCKED, CANCELLED))
    if final == total:
        if counts.get(BLOCKED, 0) == total:
            return "blocked"
        bad = total - counts.get(DONE, 0)
        return f"done ({bad} failed or blocked)"
    if state.cancelled_at and view.stage.name in state.launches:
        return "cancelled"
    return "waiting" if view.stage.needs else "not started"
