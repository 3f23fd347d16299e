"""One "poll into the store and fetch": the mechanism the launch loop and the pull daemon share.

A cycle polls the active jobs once (one batched call to the backend), writes every state change
to the sweep's state store, then fetches the jobs that finished in batches and marks each batch
pulled only once its fetch returned. Fetches are incremental and atomic per file, so a kill -9 at
any point leaves every job either pulled with complete files or still to pull.

What differs between the two callers is a setting of :class:`PollFetch`, not a second copy:
the launch loop keeps its states in memory (``known``) and retries a failed fetch with a
message naming the pull command; the pull daemon reads states from the store, may fetch bare
and records each failed job's exception line as it comes home.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launcher_core.backends.base import Backend, Handle
from launcher_core.errors import BackendError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, JobState, JobStatus, PullFilter
from launcher_core.state import StateStore

log = logging.getLogger("launcher_core.pull")  # fetching is the pull command's work: its log name

FETCH_BATCH = 50  # jobs per backend fetch


@dataclass(frozen=True)
class FinishedJob:
    """A job whose files are to be fetched: where it is on the backend and where they go."""

    job_id: str
    handle: Handle
    output_dir: Path
    state: JobState  # as last polled: a cancelled job is fetched (its logs) but not marked pulled


@dataclass
class PollResult:
    """What one poll found: the jobs whose state changed, those now terminal, and those whose
    attempt ended and that were submitted again (new handles; they are active, not finished)."""

    statuses: Mapping[str, JobStatus]
    changed: dict[str, tuple[JobState, str | None]] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    retried: dict[str, Handle] = field(default_factory=dict)


# given the jobs whose attempt just ended, submit again those to retry; returns their new
# handles, already recorded in the store (StateStore.record_retries)
Resubmit = Callable[[Mapping[str, JobStatus]], Mapping[str, Handle]]


@dataclass
class FetchPolicy:
    """How a fetch is retried and what a fetch that keeps failing tells the user."""

    retries: int = 1  # attempts per batch; 1: a failure propagates at once (the daemon retries next cycle)
    backoff_s: Callable[[int], float] = lambda attempt: min(2.0**attempt, 10.0)
    # builds the error raised after the last attempt (None: the backend's own error propagates)
    give_up: Callable[[int, int, Exception], Exception] | None = None


class PollFetch:
    """Poll a sweep's active jobs into its store and fetch the finished ones."""

    def __init__(
        self,
        backend: Backend,
        store: StateStore,
        *,
        pull_filter: PullFilter | None = None,
        policy: FetchPolicy | None = None,
        record_failures: bool = True,
        log_level: int = logging.INFO,
        resubmit: Resubmit | None = None,
    ) -> None:
        self.backend = backend
        self.store = store
        self.pull_filter = pull_filter or PullFilter()
        self.policy = policy or FetchPolicy()
        self.record_failures = record_failures  # store each failed job's exception line once home
        self.log_level = log_level  # of the "pulled N jobs" line (the launch loop shows a progress bar)
        self.resubmit = resubmit  # the launch loop's retry of lost jobs (the pull daemon only records them)

    # --- polling ------------------------------------------------------------------------------
    def poll(self, active: Mapping[str, Handle], known: Mapping[str, JobState]) -> PollResult:
        """One batched poll of ``active``; state changes (against ``known``) go to the store with
        how each ended job ended. Ended jobs the ``resubmit`` hook runs again are left active."""
        if not active:
            return PollResult({})
        statuses = {j: st for j, st in self.backend.poll(active).items() if j in active}
        ended = {j: st for j, st in statuses.items() if st.state.is_terminal and st.state is not JobState.PULLED}
        retried = dict(self.resubmit(ended)) if self.resubmit is not None and ended else {}
        result = PollResult(statuses, retried=retried)
        hosts: dict[str, str] = {}
        endings: dict[str, str] = {}
        for job_id, st in statuses.items():
            if job_id in retried:
                result.changed[job_id] = (JobState.SUBMITTED, None)  # the store has it (record_retries)
                continue
            if known.get(job_id) is not st.state:
                result.changed[job_id] = (st.state, st.exit_reason)
                if st.host:
                    hosts[job_id] = st.host
                label = st.label()
                if label:
                    endings[job_id] = label
            if st.state.is_terminal:
                result.finished.append(job_id)
        updates = {j: c for j, c in result.changed.items() if j not in retried}
        if updates:
            self.store.update_states(updates, hosts, endings)
        return result

    # --- fetching -----------------------------------------------------------------------------
    def fetch(self, jobs: Sequence[FinishedJob]) -> list[str]:
        """Fetch in batches; after each batch's fetch returned, mark its jobs pulled (cancelled
        ones excepted). Returns the ids marked pulled."""
        mode = "bare" if self.pull_filter.is_bare else "full"
        pulled: list[str] = []
        for start in range(0, len(jobs), FETCH_BATCH):
            batch = jobs[start : start + FETCH_BATCH]
            self._fetch_batch(batch, len(jobs))
            if self.record_failures:
                self.store.set_exit_reasons(failure_reasons(batch))
            done = [j.job_id for j in batch if j.state is not JobState.CANCELLED]
            self.store.mark_pulled(done, mode)
            pulled.extend(done)
            log.log(self.log_level, "pulled %d jobs into %s", len(pulled), self.store.path.parent.parent)
        return pulled

    def _fetch_batch(self, batch: Sequence[FinishedJob], total: int) -> None:
        handles = {j.job_id: j.handle for j in batch}
        dirs = {j.job_id: j.output_dir for j in batch}
        pull_filter = self.pull_filter if self.pull_filter.is_bare else None
        for attempt in range(1, self.policy.retries + 1):
            try:
                self.backend.fetch(handles, dirs, pull_filter)
                return
            except Exception as exc:  # noqa: BLE001 - retried, then reported as the policy says
                if attempt >= self.policy.retries:
                    if self.policy.give_up is None:
                        raise
                    raise self.policy.give_up(total, attempt, exc) from exc
                log.warning("fetch failed (attempt %d): %s; retrying", attempt, exc)
                time.sleep(self.policy.backoff_s(attempt))

    # --- both ---------------------------------------------------------------------------------
    def cycle(
        self, active: Mapping[str, Handle], known: Mapping[str, JobState], dirs: Mapping[str, Path]
    ) -> tuple[PollResult, list[str]]:
        """Poll once, then fetch what finished. Returns the poll's result and the ids pulled."""
        result = self.poll(active, known)
        states = {**known, **{j: state for j, (state, _r) in result.changed.items()}}
        finished = [FinishedJob(j, active[j], dirs[j], states[j]) for j in result.finished]
        return result, self.fetch(finished) if finished else []


def failure_reasons(jobs: Sequence[FinishedJob]) -> dict[str, str]:
    """The exception line of each failed job whose result came home (for ``status``)."""
    from launcher_core.runtime.worker import failure_summary

    reasons = {}
    for job in jobs:
        if job.state is JobState.FAILED:
            summary = failure_summary(job.output_dir / LAUNCHER_DIR / RESULT_FILE)
            if summary:
                reasons[job.job_id] = summary
    return reasons


def fetch_give_up(backend_name: str, sweep_dir: Path) -> Callable[[int, int, Exception], Exception]:
    """The launch loop's error after its last fetch attempt: the results are safe, pull them."""

    def give_up(jobs: int, attempts: int, exc: Exception) -> Exception:
        return BackendError(
            f"could not fetch results of {jobs} finished jobs from {backend_name} after {attempts} "
            f"attempts ({exc}). They are safe on the backend: run `python -m launcher_core.pull {sweep_dir}`."
        )

    return give_up
