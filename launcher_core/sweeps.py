"""The service layer's handling of one sweep: find it, hold its pull lock, fetch its jobs.

What the commands (``launcher-core ...``, ``python -m launcher_core.pull``, ``results``/``files``)
share, so none of them reaches into another's internals:

* :func:`resolve_sweeps` / :func:`one_sweep`: sweep dirs from paths, sweep ids or id prefixes;
* :func:`try_lock` / :func:`sweep_lock` / :func:`sweep_lock_waiting`: the sweep's pull lock (one
  process fetches into a sweep at a time);
* :func:`poll_into_store` / :func:`fetch_rows`: the pull daemon's and the commands' use of
  :class:`launcher_core.pollfetch.PollFetch`, the one "poll into the store and fetch" the launch
  loop uses too (the caller holds the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from launcher_core.errors import ConfigError
from launcher_core.jobs import LAUNCHER_DIR, PullFilter
from launcher_core.pollfetch import FETCH_BATCH as FETCH_BATCH  # jobs per backend fetch (kept here too)
from launcher_core.pollfetch import FinishedJob, PollFetch
from launcher_core.state import JobRow, JobState, StateStore, SweepIndex

if TYPE_CHECKING:
    from launcher_core.backends.base import Backend

log = logging.getLogger("launcher_core.pull")  # fetching is the pull command's work: its log name

LOCK_WAIT_S = 60.0  # how long a command waits for a pull process to let go of a sweep


# --- finding sweeps --------------------------------------------------------------------------
def resolve_sweeps(targets: Sequence[str]) -> list[Path]:
    """Sweep dirs from paths, sweep ids or id prefixes; all known sweeps when none are given."""
    index = SweepIndex()
    try:
        known = index.sweeps()
    finally:
        index.close()
    if not targets:
        return [d for _sid, d, _b, _t in known if StateStore.exists_in(d)]
    found = []
    for target in targets:
        path = Path(target).expanduser()
        if StateStore.exists_in(path):
            found.append(path.resolve())
            continue
        matches = [d for sid, d, _b, _t in known if sid == target or sid.startswith(target)]
        if len(matches) != 1:
            what = "no sweep" if not matches else f"{len(matches)} sweeps"
            raise ConfigError(f"{what} known as {target!r}: give a sweep dir or a unique sweep id (see `list`)")
        found.append(matches[0])
    return found


def latest_sweep() -> list[str]:
    """The newest known sweep dir, as a one-item target list."""
    index = SweepIndex()
    try:
        sweeps = index.sweeps()
    finally:
        index.close()
    if not sweeps:
        raise ConfigError("no sweeps are known yet: launch one, or give a sweep dir")
    return [str(sweeps[0][1])]


def one_sweep(target: str | None) -> Path:
    """The sweep dir a command's SWEEP argument names (the latest sweep when it is omitted)."""
    return resolve_sweeps([target] if target else latest_sweep())[0]


# --- the pull lock ---------------------------------------------------------------------------
@contextlib.contextmanager
def try_lock(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``lock_path`` if it is free (writing our PID into it);
    yields False if another process holds it. The lock dies with its holder, even on kill -9."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def sweep_lock(sweep_dir: Path) -> AbstractContextManager[bool]:
    """The sweep's pull lock (see :func:`try_lock`)."""
    return try_lock(sweep_dir / LAUNCHER_DIR / "pull.lock")


@contextlib.contextmanager
def sweep_lock_waiting(sweep_dir: Path) -> Iterator[bool]:
    """The sweep's pull lock, waited for a bounded time (a daemon holds it only during a cycle)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        with sweep_lock(sweep_dir) as locked:
            if locked or time.monotonic() > deadline:
                yield locked
                return
        time.sleep(0.5)


# --- fetching jobs ---------------------------------------------------------------------------
def fetch_rows(backend: Backend, store: StateStore, rows: list[JobRow], pull_filter: PullFilter) -> int:
    """Fetch the jobs' files in batches and mark each batch pulled once its fetch returned (so a
    kill leaves every job pulled with complete files or still to pull). The caller holds the
    sweep's lock. Returns the number of jobs pulled."""
    jobs = [FinishedJob(r.job_id, r.handle or {}, r.output_dir, r.state) for r in rows]
    return len(PollFetch(backend, store, pull_filter=pull_filter).fetch(jobs))


# --- what commands do to a sweep ------------------------------------------------------------
def poll_into_store(backend: Backend, store: StateStore) -> None:
    """One batched poll of the sweep's active jobs; their state changes go to the store."""
    rows = {r.job_id: r for r in store.jobs(states=[JobState.SUBMITTED, JobState.RUNNING]) if r.handle}
    PollFetch(backend, store).poll({j: r.handle or {} for j, r in rows.items()}, {j: r.state for j, r in rows.items()})


def refresh_states(sweep_dir: Path) -> None:
    """One batched poll of the backend for the sweep's active jobs (skipped for local sweeps)."""
    with StateStore.for_sweep_dir(sweep_dir) as store:
        meta = store.meta()
        counts = store.counts()
        if not counts.get(JobState.SUBMITTED) and not counts.get(JobState.RUNNING):
            return
        from launcher_core.backends import backend_for_meta

        backend = backend_for_meta(meta)
        try:
            poll_into_store(backend, store)
        finally:
            backend.close()


def find_job(rows: list[JobRow], job: str) -> JobRow:
    """A job by its number (hydra.job.num) or a unique prefix of its id."""
    if job.isdigit():
        matches = [r for r in rows if r.idx == int(job)]
    else:
        matches = [r for r in rows if r.job_id.startswith(job)]
    if len(matches) != 1:
        raise ConfigError(f"no job {job!r} in this sweep (give its number or id; see `status`)")
    return matches[0]


def cancel_jobs(sweep_dir: Path, jobs: Sequence[str]) -> list[JobRow]:
    """Cancel jobs (all unfinished ones when ``jobs`` is empty) on the backend, then mark them."""
    from launcher_core.backends import backend_for_meta

    with StateStore.for_sweep_dir(sweep_dir) as store:
        rows = store.jobs()
        targets = [find_job(rows, j) for j in jobs] if jobs else rows
        targets = [r for r in targets if not r.state.is_terminal]
        if not targets:
            return []
        backend = backend_for_meta(store.meta())
        try:
            backend.cancel({r.job_id: r.handle or {} for r in targets})
        finally:
            backend.close()
        store.update_states({r.job_id: (JobState.CANCELLED, "cancelled by user") for r in targets})
    return targets
