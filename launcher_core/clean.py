"""``launcher-core clean``: delete what a sweep left on its backend, never anything not safely home.

A job is eligible when it is ``pulled`` with ``pull_mode`` full (``--include-bare`` adds bare
pulls) and its local ``result.pkl`` exists. The backend deletes the backend-side files of the
eligible jobs (:meth:`Backend.clean`, optional in the contract) and, once every job of the sweep
is clean, the sweep-level leftovers (code snapshot, payloads, batch files, the remote sweep dir).

Crash safety: the state store records ``cleaned_at`` only after the backend confirmed the
deletion. A kill -9 in between leaves a job unmarked, so the next run deletes nothing more and
marks it; a job is never marked while its files still exist, and a job that is not eligible is
never handed to the backend.

This module also holds the path checks every remote deletion goes through: a path must be
absolute, free of ``~`` and ``..``, and strictly inside the sweep's own remote dirs.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from launcher_core.state import JobRow, StateStore

log = logging.getLogger("launcher_core.clean")

SWEEP_CLEANED_META = "backend_cleaned_at"
NO_REMOTE_COPIES = {
    "local_pool": "local sweep: the jobs ran here, the sweep dir is the only copy",
}


class CleanRefused(ConfigError):
    """A path to delete is empty, relative, has ``~`` or ``..``, or is outside the sweep's dirs."""


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


# --- path confinement -----------------------------------------------------------------------
def _refuse(what: str, value: Any, why: str) -> CleanRefused:
    return CleanRefused(f"refusing to clean {what} {value!r}: {why}")


def check_root(value: Any, what: str = "remote_dir") -> str:
    """A remote root (``remote_dir`` as the host expanded it): absolute, not ``/``, not a system
    dir, a home dir itself or anything with ``~`` or ``..``. Returns it normalised."""
    from launcher_core.backends.remote_ssh import check_remote_dir

    if not isinstance(value, str) or not value.strip():
        raise _refuse(what, value, "it is empty")
    if "\n" in value or "\x00" in value:
        raise _refuse(what, value, "it contains a newline or NUL")
    if not value.startswith("/"):
        raise _refuse(what, value, "it is not an absolute path (the host's expanded path is expected)")
    try:
        check_remote_dir(what, value)
    except ConfigError as exc:
        raise _refuse(what, value, str(exc)) from None
    return posixpath.normpath(value)


def confined(value: Any, root: str, what: str) -> str:
    """``value`` normalised, if it is an absolute path strictly below ``root``; else CleanRefused
    naming the value. ``root`` must already be checked (:func:`check_root`)."""
    if not isinstance(value, str) or not value.strip() or value.strip() == "/":
        raise _refuse(what, value, "it is empty or the file system root")
    if "\n" in value or "\x00" in value:
        raise _refuse(what, value, "it contains a newline or NUL")
    if value.startswith("~"):
        raise _refuse(what, value, "'~' is not expanded here: an absolute path on the host is expected")
    if not value.startswith("/"):
        raise _refuse(what, value, "it is not an absolute path")
    if ".." in value.split("/"):
        raise _refuse(what, value, "it contains '..'")
    norm = posixpath.normpath(value)
    if not norm.startswith(root.rstrip("/") + "/"):
        raise _refuse(what, value, f"it is outside {root!r}")
    return norm


def empty_parents(path: str, stop: str) -> list[str]:
    """The dirs between ``path`` (excluded) and ``stop`` (excluded), deepest first: removed with
    ``rmdir`` after a sweep dir, so ``runs/multirun/2024-05-01`` does not linger empty."""
    out = []
    current = posixpath.dirname(path)
    for _ in range(64):  # bounded: paths are never that deep
        if current == stop or not current.startswith(stop + "/"):
            break
        out.append(current)
        current = posixpath.dirname(current)
    return out


# --- remote layout (remote_ssh and slurm login_host share it) --------------------------------
@dataclass
class RemoteJob:
    job_id: str
    sweep_dir: str
    job_dir: str


@dataclass
class RemoteSweep:
    sweep_dir: str
    snapshots: str  # <remote_dir>/snapshots/<sweep_id>: every launch's snapshot of this sweep
    parents: list[str]  # empty dirs to rmdir after the sweep dir, deepest first


@dataclass
class RemotePlan:
    """What to delete on one host."""

    jobs: list[RemoteJob] = field(default_factory=list)
    sweeps: list[RemoteSweep] = field(default_factory=list)


def remote_sweep_dir(handle: Mapping[str, Any], remote_dir: str) -> str:
    return confined(handle.get("remote_sweep_dir"), f"{remote_dir}/runs", "the remote sweep dir")


def plan_remote(
    handles: Mapping[str, Mapping[str, Any]],
    *,
    sweep_id: str,
    sweep_handles: Mapping[str, Mapping[str, Any]] | None,
    host_of: Callable[[Mapping[str, Any]], str],
    remote_dir_of: Callable[[Mapping[str, Any]], str],
) -> dict[str, RemotePlan]:
    """Per host, the job dirs of ``handles`` and (with ``sweep_handles``: every job of the sweep)
    the sweep dirs and snapshot dirs; every path checked before anything is contacted."""
    if not sweep_id or "/" in sweep_id or sweep_id in (".", ".."):
        raise _refuse("the sweep id", sweep_id, "it is not a plain name")
    plans: dict[str, RemotePlan] = {}
    for job_id, handle in handles.items():
        root = remote_dir_of(handle)
        sweep_dir = remote_sweep_dir(handle, root)
        job_dir = confined(handle.get("remote_job_dir"), sweep_dir, f"the remote dir of job {job_id}")
        plans.setdefault(host_of(handle), RemotePlan()).jobs.append(RemoteJob(job_id, sweep_dir, job_dir))
    seen: set[tuple[str, str]] = set()
    for handle in (sweep_handles or {}).values():
        host, root = host_of(handle), remote_dir_of(handle)
        sweep_dir = remote_sweep_dir(handle, root)
        if (host, sweep_dir) in seen:
            continue
        seen.add((host, sweep_dir))
        snapshots = confined(f"{root}/snapshots/{sweep_id}", f"{root}/snapshots", "the snapshot dir")
        sweep = RemoteSweep(sweep_dir, snapshots, empty_parents(sweep_dir, f"{root}/runs"))
        plans.setdefault(host, RemotePlan()).sweeps.append(sweep)
    return plans


def plan_targets(report: CleanReport, plans: Mapping[str, RemotePlan]) -> None:
    """Fill ``report.targets`` / ``report.jobs`` from remote plans."""
    for host, plan in plans.items():
        report.jobs[host] = len(plan.jobs)
        for job in plan.jobs:
            report.add_target(host, job.job_dir)
        for sweep in plan.sweeps:
            report.add_target(host, sweep.sweep_dir)
            report.add_target(host, sweep.snapshots)


# --- which jobs ------------------------------------------------------------------------------
def is_eligible(row: JobRow, include_bare: bool = False) -> bool:
    """Pulled (full, or bare with ``include_bare``), not cleaned yet, and its result is here."""
    if row.state is not JobState.PULLED or row.cleaned_at is not None or not row.handle:
        return False
    if row.pull_mode != "full" and not (include_bare and row.pull_mode == "bare"):
        return False
    result = row.output_dir / ".launcher" / "result.pkl"
    try:
        return result.is_file() and result.stat().st_size > 0
    except OSError:
        return False


@dataclass
class CleanSelection:
    """The jobs a clean run hands to the backend, and what it leaves, counted by reason."""

    eligible: list[JobRow]
    sweep_handles: dict[str, dict[str, Any]] | None  # set when the sweep-level leftovers go too
    kept: dict[str, int]  # reason -> number of jobs left alone
    already_cleaned: int

    @property
    def handles(self) -> dict[str, dict[str, Any]]:
        return {r.job_id: r.handle or {} for r in self.eligible}

    @property
    def empty(self) -> bool:
        return not self.eligible and self.sweep_handles is None


def _kept_reason(row: JobRow, include_bare: bool) -> str:
    if row.state is not JobState.PULLED:
        return f"{row.state.value} (not pulled)"
    if row.pull_mode == "bare" and not include_bare:
        return "pulled --bare (large files only on the backend; --include-bare cleans them)"
    return "no local result.pkl"


def select(rows: Iterable[JobRow], meta: Mapping[str, Any], include_bare: bool) -> CleanSelection:
    rows = list(rows)
    eligible, kept, already = [], {}, 0
    for row in rows:
        if row.cleaned_at is not None:
            already += 1
        elif is_eligible(row, include_bare):
            eligible.append(row)
        elif row.handle:  # jobs never submitted left nothing on the backend
            reason = _kept_reason(row, include_bare)
            kept[reason] = kept.get(reason, 0) + 1
    ids = {r.job_id for r in eligible}
    whole = all(r.cleaned_at is not None or r.job_id in ids for r in rows)
    sweep_handles = None
    if whole and rows and not meta.get(SWEEP_CLEANED_META):
        sweep_handles = {r.job_id: r.handle for r in rows if r.handle}
    return CleanSelection(eligible, sweep_handles, kept, already)


# --- one sweep -------------------------------------------------------------------------------
def backend_clean(backend: Any, selection: CleanSelection, sweep_id: str, *, dry_run: bool) -> CleanReport:
    """Call the backend's optional ``clean`` (a report saying so when it has none)."""
    clean = getattr(backend, "clean", None)
    if clean is None:
        return CleanReport(nothing_to_clean=f"the {getattr(backend, 'name', '?')} backend keeps no remote copies")
    return clean(selection.handles, sweep_id=sweep_id, sweep_handles=selection.sweep_handles, dry_run=dry_run)


def record(store: StateStore, selection: CleanSelection, report: CleanReport) -> int:
    """Mark what the backend confirmed gone (and only eligible jobs); return how many."""
    ids = [r.job_id for r in selection.eligible if r.job_id in report.cleaned]
    if ids:
        store.mark_cleaned(ids)
    if selection.sweep_handles is not None and report.sweep_cleaned and not report.errors:
        store.set_meta({SWEEP_CLEANED_META: time.time()})
    return len(ids)


def clean_after_pull(backend: Any, store: StateStore, meta: Mapping[str, Any]) -> int:
    """The pull daemon's ``--clean``: clean every eligible job (full pulls only) right away."""
    if meta.get("backend") in NO_REMOTE_COPIES or getattr(backend, "clean", None) is None:
        return 0
    selection = select(store.jobs(), meta, include_bare=False)
    if selection.empty:
        return 0
    report = backend_clean(backend, selection, str(meta.get("sweep_id", "")), dry_run=False)
    cleaned = record(store, selection, report)
    for error in report.errors:
        log.error("clean: %s", error)
    if cleaned:
        log.info("cleaned the backend-side files of %d jobs of %s", cleaned, store.path.parent.parent)
    return cleaned
