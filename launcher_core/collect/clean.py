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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher_core.backends.base import Backend, CleanReport
from launcher_core.backends.registry import descriptor
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, JobState
from launcher_core.remote.paths import CleanRefused as CleanRefused
from launcher_core.state import JobRow, StateStore

log = logging.getLogger("launcher_core.clean")

SWEEP_CLEANED_META = "backend_cleaned_at"


def no_remote_copies(meta: Mapping[str, Any]) -> str:
    """Why a sweep's backend keeps nothing to clean ("" when it keeps copies)."""
    name = meta.get("backend")
    return descriptor(str(name)).no_remote_copy if name else ""


def is_eligible(row: JobRow, include_bare: bool = False) -> bool:
    """Pulled (full, or bare with ``include_bare``), not cleaned yet, and its result is here."""
    if row.state is not JobState.PULLED or row.cleaned_at is not None or not row.handle:
        return False
    if row.pull_mode != "full" and not (include_bare and row.pull_mode == "bare"):
        return False
    result = row.output_dir / LAUNCHER_DIR / RESULT_FILE
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
def backend_clean(backend: Backend, selection: CleanSelection, sweep_id: str, *, dry_run: bool) -> CleanReport:
    """The backend's ``clean`` of the selected jobs (a report saying so when it keeps no copies)."""
    return backend.clean(selection.handles, sweep_id=sweep_id, sweep_handles=selection.sweep_handles, dry_run=dry_run)


def record(store: StateStore, selection: CleanSelection, report: CleanReport) -> int:
    """Mark what the backend confirmed gone (and only eligible jobs); return how many."""
    ids = [r.job_id for r in selection.eligible if r.job_id in report.cleaned]
    if ids:
        store.mark_cleaned(ids)
    if selection.sweep_handles is not None and report.sweep_cleaned and not report.errors:
        store.set_meta({SWEEP_CLEANED_META: time.time()})
    return len(ids)


def clean_after_pull(backend: Backend, store: StateStore, meta: Mapping[str, Any]) -> int:
    """The pull daemon's ``--clean``: clean every eligible job (full pulls only) right away."""
    if no_remote_copies(meta):
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
