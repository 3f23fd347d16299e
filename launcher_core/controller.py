"""The launch loop shared by every backend: compose, record, submit, watch, collect.

The Hydra launchers in ``hydra_plugins.remote_launcher`` are thin shells that build a backend
from their config and call :func:`launch_batch`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core import snapshots
from launcher_core.backends.base import Backend, Handle
from launcher_core.backends.registry import CAPABILITIES_META, descriptor
from launcher_core.collect.progress import SweepProgress, print_summary
from launcher_core.errors import BackendError, ConfigError, SubmitError
from launcher_core.intents import SubmitIntent, new_intent_key
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, Ending, JobSpec, JobState, JobStatus, SweepInfo, job_id_for
from launcher_core.pollfetch import FetchPolicy, PollFetch, fetch_give_up
from launcher_core.retry import RetrySettings
from launcher_core.state import JobRow, StateStore, SweepIndex

log = logging.getLogger("launcher_core")

MAX_LOGGED_JOBS = 50
NOT_RUN_PREFIX = "not run: "  # the reason of a held job no place could take (JobNotRunError)
MAX_TAKE_BACK_TRIES = 30  # polls in a row a backend may fail to take back queued jobs before the launch stops
#: test hook, not a setting: SIGKILL the launching process right after its N-th withdrawal that took
#: jobs back returns and before the state store closes the move (tests/test_spill_moves.py): the
#: queue no longer holds the jobs while the store still holds their handles
TEST_KILL_AFTER_WITHDRAW_ENV = "HYDRA_LAUNCHER_TEST_HOOK_KILL_AFTER_WITHDRAW"
_withdrawals = 0


@dataclass
class LaunchOptions:
    wait: bool = True
    skip_completed: bool = False
    poll_interval_s: float = 1.0
    fetch_retries: int = 3
    preflight: bool = True  # check the hosts before submitting (launcher_core.preflight)
    auto_pull: bool = False  # wait=false: start (or join) the sweep's pull daemon (launcher_core.autopull)
    auto_pull_interval_s: float = 30.0
    auto_pull_give_up_h: float = 24.0  # the pull daemon stops after the backend was unreachable this long
    notify: str | None = None  # the pull daemon's --notify command
    retry: RetrySettings = field(default_factory=RetrySettings)  # lost jobs run again (launcher_core.retry)


def sweep_id_for(sweep_dir: Path) -> str:
    """Readable, stable id of a sweep dir: its last two path parts plus a short hash."""
    tail = "_".join(sweep_dir.parts[-2:])
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-")[:40] or "sweep"
    return f"{readable}-{hashlib.sha256(str(sweep_dir).encode()).hexdigest()[:6]}"


def build_job_specs(
    *, composer: Any, sweep_id: str, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobSpec]:
    """Check every job's overrides and name its output dir.

    Each job is checked (see :meth:`~launcher_core.runtime.compose.SweepComposer.check`: composed
    when it has an override no earlier job had), so a bad override surfaces before anything is
    launched; the dir comes from the template where it cannot depend on the job (see
    :meth:`~launcher_core.runtime.compose.SweepComposer.output_dir`). The configs are not kept: each
    spec composes its own again when a backend uses it (see :class:`JobSpec`).
    """
    from launcher_core.runtime.compose import compose_job, job_output_dir

    specs = []
    taken: set[int] = set()
    for offset, overrides in enumerate(job_overrides):
        idx = _job_number(overrides, initial_job_idx + offset, taken)
        overrides = [o for o in overrides if not _JOB_NUM_OVERRIDE.match(o)]  # a number, not an override to compose
        factory = functools.partial(compose_job, composer, tuple(overrides), idx)
        composer.check(overrides)  # a no-op when the sweeper's validation checked it a moment ago
        output_dir = composer.output_dir(overrides, idx) or job_output_dir(factory())
        specs.append(
            JobSpec(
                job_id=job_id_for(sweep_id, idx, list(overrides)),
                idx=idx,
                overrides=list(overrides),
                output_dir=Path(output_dir),
                config_factory=factory,
            )
        )
    log.debug("composed %d job configs with %d full compositions", len(specs), composer.full_compositions)
    return specs


_JOB_NUM_OVERRIDE = re.compile(r"^\+{0,2}hydra\.job\.num=(\d+)$")


def _job_number(overrides: Sequence[str], position: int, taken: set[int]) -> int:
    """The job's number: its position in the sweep, or the number its overrides give it
    (``hydra.job.num=N``: a pipeline stage lists each job with its number in the stage's plan, so
    a job keeps its number, dir and id whichever jobs are launched with it)."""
    explicit = [int(m.group(1)) for m in map(_JOB_NUM_OVERRIDE.match, overrides) if m]
    idx = explicit[-1] if explicit else position
    if idx in taken:
        raise ConfigError(f"two jobs of this launch are job #{idx} (hydra.job.num={idx}): a job number is one job")
    taken.add(idx)
    return idx


def _log_jobs(label: str, sweep_dir: Path, specs: Sequence[JobSpec]) -> None:
    from hydra.core.utils import filter_overrides

    log.info("%s is launching %d jobs, sweep output dir: %s", label, len(specs), sweep_dir)
    for spec in specs[:MAX_LOGGED_JOBS]:
        log.info("\t#%d : %s", spec.idx, " ".join(filter_overrides(spec.overrides)))
    if len(specs) > MAX_LOGGED_JOBS:
        log.info("\t... and %d more (see `launcher-core status`)", len(specs) - MAX_LOGGED_JOBS)


class SweepController:
    """Drives one batch of jobs through a backend and keeps the state store current."""

    def __init__(self, backend: Backend, store: StateStore, options: LaunchOptions, sweep: SweepInfo) -> None:
        self.backend = backend
        self.store = store
        self.options = options
        self.sweep = sweep
        self.states: dict[str, JobState] = {}
        self.counts: dict[JobState, int] = {}  # kept with states: the progress bar reads it on every change
        self._open_launches: set[str] = set()  # launching processes that did not end (see plan)
        self._unaccepted: dict[frozenset[str], str] = {}  # jobs of intents the backend does not know -> key
        self.specs: dict[str, JobSpec] = {}  # what a lost job is submitted again from
        self.retried: dict[str, list[str]] = {}  # job id -> how its earlier attempts of this launch ended
        self.held: collections.deque[JobSpec] = collections.deque()  # waiting for the backend's room()
        self._spent: float | None = None  # the backend's cost so far, as last written to the store
        self._moving: dict[str, Handle] = {}  # jobs recorded as moving, not yet confirmed taken back
        self._take_back_failures = 0

    def _set_state(self, job_id: str, state: JobState) -> None:
        old = self.states.get(job_id)
        if old is not None:
            self.counts[_shown(old)] -= 1
        self.states[job_id] = state
        self.counts[_shown(state)] = self.counts.get(_shown(state), 0) + 1

    def plan(self, specs: Sequence[JobSpec]) -> tuple[list[JobSpec], dict[str, dict[str, Any]]]:
        """Split jobs into those to submit and those already running on the backend.

        An *interrupted* launch (jobs handed to the backend by a launch that did not end: the
        launching process was killed, lost contact, hit a full disk) always resumes: jobs that
        finished are collected, jobs still on a detached backend re-attached (a job that finished
        while no launcher was alive is fetched from there), and only jobs that never started, were
        cancelled or whose results are lost are (re)started. ``skip_completed`` only decides what
        happens to completed jobs of a launch that had ended. Never a job submitted twice.
        """
        self._finish_moves()
        self._adopt_accepted()
        known = {r.job_id: r for r in self.store.jobs(job_ids=[s.job_id for s in specs])}
        self._open_launches = self.store.interrupted_launches()
        self.specs = {s.job_id: s for s in specs}
        for spec in specs:
            row = known.get(spec.job_id)
            spec.attempt = row.attempt if row is not None else 1
        to_submit: list[JobSpec] = []
        reattach: dict[str, dict[str, Any]] = {}
        stale: dict[str, dict[str, Any]] = {}
        resumed = {"collected": 0, "re-attached": 0}
        for spec in specs:
            row = known.get(spec.job_id)
            if row is not None and self._reusable(row, spec):
                self._set_state(spec.job_id, row.state)
                resumed["collected"] += self._resumed(row)
                continue
            if row is not None and row.handle and self._still_on_backend(row):
                if self.backend.detached or (self._resumed(row) and self.backend.reattachable(row.handle)):
                    reattach[spec.job_id] = row.handle
                    self._set_state(spec.job_id, row.state)
                    resumed["re-attached"] += self._resumed(row)
                    continue
                if row.state.is_active:
                    stale[spec.job_id] = row.handle
            to_submit.append(spec)
        if stale:
            log.warning("%d jobs of an earlier launch were left running; stopping them", len(stale))
            self.backend.cancel(stale)
        self.store.add_jobs(specs)
        self._next_attempts(to_submit, known)
        self.store.reset_to_pending([s.job_id for s in to_submit])
        if any(self._resumed(r) for r in known.values()):
            log.info(
                "resuming an interrupted launch of %s: %d jobs collected, %d re-attached, %d started",
                self.sweep.sweep_dir,
                resumed["collected"],
                resumed["re-attached"],
                len(to_submit),
            )
        elif len(to_submit) < len(specs):
            log.info("%d jobs already completed or running: not launched again", len(specs) - len(to_submit))
        return to_submit, reattach

    def _finish_moves(self) -> None:
        """Withdrawals a killed launch began (:meth:`move_overdue`): the backend takes those jobs
        back again (idempotent); the ones gone without having started are pending again and the
        others (they started meanwhile) are re-attached where they are."""
        moving = self.store.open_moves()
        if not moving:
            return
        try:
            back = self.backend.withdraw(moving)
        except (BackendError, OSError) as exc:
            log.warning("could not finish moving %d jobs an interrupted launch began moving: %s", len(moving), exc)
            self._moving.update(moving)  # tried again by the launch loop (move_overdue)
            return
        self.store.finish_moves(moving, withdrawn=back)
        log.info(
            "finished moving %d jobs an interrupted launch began moving: %d taken back, %d stay where they are",
            len(moving),
            len(back),
            len(moving) - len(back),
        )

    def _adopt_accepted(self) -> None:
        """Submissions a killed launch recorded as intents but not as jobs: the backend is asked
        once which it accepted; their jobs are recorded as that launch's (so they are re-attached
        below, never submitted again) and the rest are left pending to be submitted. Intents whose
        jobs were recorded (or reset since) are settled already and only closed."""
        intents = self.store.open_intents()
        if not intents:
            return
        job_ids = {j for intent in intents for j in intent.handles}
        unrecorded = {r.job_id for r in self.store.jobs(job_ids=job_ids) if r.submitted_at is None}
        live = [i for i in intents if unrecorded & set(i.handles)]
        found = dict(self.backend.accepted(live)) if live else {}
        self._unaccepted = {frozenset(i.handles): i.key for i in live if not set(i.handles) & set(found)}
        for intent in live:
            handles = {j: found[j] for j in intent.handles if j in found and j in unrecorded}
            if handles:
                self.store.mark_submitted(handles, launch_id=intent.launch_id)
        adopted = sum(1 for j in found if j in unrecorded)
        if live:
            log.info(
                "%d jobs an interrupted launch submitted but had not recorded were found on %s and re-attached; "
                "%d it had not submitted yet",
                adopted,
                self.backend.name,
                len({j for i in live for j in i.handles} & unrecorded) - adopted,
            )
        self.store.close_intents([i.key for i in intents])

    def _next_attempts(self, to_submit: Sequence[JobSpec], known: Mapping[str, JobRow]) -> None:
        """A job whose last attempt was lost and that a relaunch starts again: its next attempt."""
        lost = [s for s in to_submit if (row := known.get(s.job_id)) is not None and _was_lost(row)]
        if lost:
            self.store.begin_new_attempts([s.job_id for s in lost])
            for spec in lost:
                spec.attempt += 1

    def _reusable(self, row: JobRow, spec: JobSpec) -> bool:
        """A finished job whose files are home: kept when its launch was interrupted (it belongs
        to that launch), or with ``skip_completed``."""
        if row.output_dir != spec.output_dir or not (row.output_dir / LAUNCHER_DIR / RESULT_FILE).exists():
            return False
        if self._resumed(row):  # fetched in full (a job whose fetch was cut short is fetched again)
            return row.state is JobState.PULLED and row.outcome in (JobState.COMPLETED, JobState.FAILED)
        return self.options.skip_completed and row.outcome is JobState.COMPLETED

    def _resumed(self, row: JobRow) -> bool:
        """Whether the job belongs to an interrupted launch (of any batch of that multirun)."""
        return row.interrupted or (row.launch_id is not None and row.launch_id in self._open_launches)

    def _still_on_backend(self, row: JobRow) -> bool:
        """Running there, or finished there while no launch was alive and not fetched yet."""
        if row.state.is_active:
            return True
        return self._resumed(row) and row.state in (JobState.COMPLETED, JobState.FAILED)

    def start(self, specs: Sequence[JobSpec], reattached: Mapping[str, Handle] | None = None) -> dict[str, Handle]:
        """Submit the jobs, or, with a backend that takes only so many at a time
        (:meth:`~launcher_core.backends.base.Backend.room`), as many as it has room for: the rest
        are held and offered as room frees up (:meth:`fill`). Such a backend is polled about the
        re-attached jobs first, so that its room counts them."""
        if self.backend.room() is None:
            return self.submit(specs)
        if reattached:
            self.backend.poll(reattached)  # the states are read again by the first watch cycle
        self.held.extend(specs)
        for spec in specs:
            self._set_state(spec.job_id, JobState.PENDING)  # counted as queued until placed
        return self.fill()

    def fill(self) -> dict[str, Handle]:
        """Offer held jobs to the backend while it has room; what it did not take stays held."""
        started: dict[str, Handle] = {}
        for _round in range(len(self.held) + 1):  # each round takes at least one job, or stops
            room = self.backend.room() or 0
            if not self.held or room <= 0:
                break
            batch = [self.held.popleft() for _ in range(min(room, len(self.held)))]
            handles = self.submit(batch, partial_ok=True)
            started.update(handles)
            left = [s for s in batch if s.job_id not in handles]
            self.held.extendleft(reversed(left))
            if not handles:
                break
        return started

    def _stop_if_given_up(self, active: Mapping[str, Any]) -> None:
        """Every job still running is where the backend lost contact (and nothing more can be
        placed): stop the launch with its message; the jobs are left for a relaunch."""
        if not active or self._moving or (self.held and (self.backend.room() or 0) > 0):
            return
        why = self.backend.given_up(active)
        if why:
            held = f"; {len(self.held)} jobs not started yet start then" if self.held else ""
            raise BackendError(
                f"{why}\n{len(active)} jobs keep running there as far as anyone knows: run the same command "
                f"again to re-attach and collect them{held}"
            )

    def end_unplaceable(self, active: Mapping[str, Any], placed: Mapping[str, Any]) -> None:
        """Held jobs the backend took none of while nothing runs (no room, or no place with room
        can run them): nothing will change, so they end failed, with the backend's reason."""
        if not self.held or active or placed or self._moving:
            return
        why = self.backend.no_room_reason()
        log.error("%d jobs were not run: %s", len(self.held), why)
        updates = {s.job_id: (JobState.FAILED, f"{NOT_RUN_PREFIX}{why}") for s in self.held}
        self.store.update_states(updates)
        for job_id in updates:
            self._set_state(job_id, JobState.FAILED)
        self.held.clear()

    def move_overdue(self, statuses: Mapping[str, JobStatus], active: dict[str, Any]) -> None:
        """Jobs the backend says waited too long in a queue (:meth:`~Backend.overdue`) are taken
        back and held to be placed elsewhere. The move is recorded before the backend is asked,
        and each job taken back is pending again (no handle) in one transaction after it confirmed
        the job is gone without having started: a kill at any point never runs a job twice."""
        ids = [j for j in self.backend.overdue(statuses, active) if j in active and j not in self._moving]
        if ids:
            handles = {j: active[j] for j in ids}
            self.store.record_moves(handles)
            self._moving.update(handles)
        if self._moving:
            self._take_back(active)

    def _take_back(self, active: dict[str, Any]) -> None:
        """Ask the backend to take back the jobs being moved (again, after a failed try: it is
        idempotent, and a job it cancelled before the failure is found gone then)."""
        moving = dict(self._moving)
        try:
            back = self.backend.withdraw(moving)
        except (BackendError, OSError) as exc:
            self._take_back_failures += 1
            if self._take_back_failures >= MAX_TAKE_BACK_TRIES:
                raise BackendError(
                    f"could not take back {len(moving)} queued jobs in {MAX_TAKE_BACK_TRIES} tries: {exc}; "
                    "run the same command again when the backend answers: it finishes the move first"
                ) from exc
            log.warning("taking back %d queued jobs failed; trying again at the next poll: %s", len(moving), exc)
            return
        self._take_back_failures = 0
        if back:
            _after_withdrawal()
        self._moving.clear()
        self.store.finish_moves(moving, withdrawn=back)
        for job_id in [j for j in moving if j in back]:
            active.pop(job_id, None)  # (a poll in between may have seen it cancelled and let it go)
            self._set_state(job_id, JobState.PENDING)
            spec = self.specs.get(job_id)
            if spec is not None:
                self.held.appendleft(spec)
        if back:
            log.info("%d jobs that waited too long in a queue were taken back to run elsewhere", len(back))

    def record_spent(self) -> None:
        """The backend's cost so far into the store's meta (``status`` and ``results`` show it)."""
        spent = self.backend.spent_usd()
        if spent is not None and (self._spent is None or round(spent, 2) != round(self._spent, 2)):
            self.store.set_meta({"cost_usd": round(spent, 4)})
            self._spent = spent

    def submit(self, specs: Sequence[JobSpec], partial_ok: bool = False) -> dict[str, Handle]:
        """Submit, and record every job that really started — also when submission fails
        part-way (:class:`SubmitError`), so that a relaunch never starts those twice."""
        journal = _StoreJournal(self.store, _LAUNCH_CODE_ID, self._unaccepted)
        self.backend.intents = journal
        try:
            handles = dict(self.backend.submit(specs)) if specs else {}
        except SubmitError as exc:
            self._record_submitted(exc.started)
            raise
        self._record_submitted(handles)
        self.store.close_intents(journal.keys)
        missing = [s for s in specs if s.job_id not in handles]
        if missing and not partial_ok:
            shown = ", ".join(f"#{s.idx}" for s in missing[:MAX_LOGGED_JOBS])
            more = f" and {len(missing) - MAX_LOGGED_JOBS} more" if len(missing) > MAX_LOGGED_JOBS else ""
            raise BackendError(
                f"backend {self.backend.name} did not start {len(missing)} of {len(specs)} jobs ({shown}{more}); "
                f"the {len(handles)} it started keep running and a relaunch re-attaches to them"
            )
        return handles

    def _record_submitted(self, handles: Mapping[str, Handle]) -> None:
        self.store.mark_submitted(handles, launch_id=_LAUNCH_CODE_ID)
        for job_id in handles:
            self._set_state(job_id, JobState.SUBMITTED)

    def watch(
        self, active: dict[str, dict[str, Any]], specs_by_id: Mapping[str, JobSpec], progress: SweepProgress
    ) -> None:
        """Poll until every active job is terminal (and fetched), updating store and progress.

        Each round is one cycle of the shared :class:`~launcher_core.pollfetch.PollFetch` (what the
        pull daemon runs too) with the launch loop's own fetch retries. Between polls the
        backend's optional ``wait(timeout_s)`` blocks until something may have changed
        (``local_pool`` wakes when a job exits); without it the loop sleeps. A detached backend is
        polled at most once per interval.
        """
        own_interval = self.backend.poll_interval_s
        interval = max(self.options.poll_interval_s if own_interval is None else own_interval, 0.001)
        wait = self.backend.wait
        collector = self.poll_fetch()
        dirs = {j: spec.output_dir for j, spec in specs_by_id.items()}
        progress.update(self.counts)
        try:
            while active or self.held or self._moving:
                result, pulled = collector.cycle(active, self.states, dirs)
                for job_id, (state, _reason) in result.changed.items():
                    self._set_state(job_id, state)
                for job_id in pulled:
                    self._set_state(job_id, JobState.PULLED)
                for job_id in result.finished:
                    del active[job_id]
                active.update(result.retried)  # their next attempt's handles
                if self.held or result.statuses or self._moving:
                    self.move_overdue(result.statuses, active)
                    placed = self.fill()
                    active.update(placed)
                    self.end_unplaceable(active, placed)
                    self.record_spent()
                    if placed:
                        result.changed.update({j: (JobState.SUBMITTED, None) for j in placed})
                self._stop_if_given_up(active)
                if result.changed or result.finished:
                    progress.update(self.counts, self.backend.progress_lines())
                # a detached backend's poll asks another machine (sacct, ssh, S3): never back to back,
                # also while jobs finish one after another; local_pool's wait returns when a job exits
                if self.backend.detached or not (result.changed or result.finished):
                    wait(interval)
        except KeyboardInterrupt:
            self._interrupted(active)
            raise

    def poll_fetch(self) -> PollFetch:
        """The shared poll-and-fetch with the launch loop's settings: ``fetch_retries`` attempts,
        then an error naming the pull command; failure lines are read at the summary."""
        policy = FetchPolicy(
            retries=max(self.options.fetch_retries, 1),
            give_up=fetch_give_up(self.backend.name, self.sweep.sweep_dir),
        )
        return PollFetch(
            self.backend,
            self.store,
            policy=policy,
            record_failures=False,
            log_level=logging.DEBUG,
            resubmit=self.resubmit if self.options.retry.max_retries > 0 else None,
        )

    def resubmit(self, ended: Mapping[str, JobStatus]) -> dict[str, Handle]:
        """Submit again, as their next attempt, the ended jobs the retry settings retry (lost
        ones; out of memory on request, with more memory); record them in one transaction once
        the backend took them. Jobs it does not retry end as they are."""
        retry = self.options.retry
        again: list[JobSpec] = []
        for job_id, st in ended.items():
            spec = self.specs.get(job_id)
            ending = st.classified()
            if spec is None or not retry.retries(ending, spec.attempt):
                note = retry.not_retried_note(ending)
                if note and spec is not None:
                    log.warning("job #%d ran out of memory: %s", spec.idx, note)
                continue
            if ending is Ending.OUT_OF_MEMORY:
                spec.resources = self.backend.retry_resources(spec, retry.retry_mem_factor)
            label = st.label() or "ended"
            log.warning(
                "job #%d: attempt %d %s (%s); running it again as attempt %d of at most %d",
                spec.idx,
                spec.attempt,
                label,
                st.exit_reason or "no reason given",
                spec.attempt + 1,
                retry.max_retries + 1,
            )
            self.retried.setdefault(job_id, []).append(f"attempt {spec.attempt} {label}")
            spec.attempt += 1
            again.append(spec)
        if not again:
            return {}
        journal = _StoreJournal(self.store, _LAUNCH_CODE_ID, {})
        self.backend.intents = journal  # the new attempts' submissions are recorded first too
        try:
            handles = dict(self.backend.submit(again))
        except SubmitError as exc:
            handles = dict(exc.started)
            log.error("running lost jobs again failed part-way: %s", exc)
        for spec in again:
            if spec.job_id not in handles:  # not started: it ends as its last attempt did
                spec.attempt -= 1
                self.retried[spec.job_id].pop()
        how = {j: (ended[j].label(), ended[j].exit_reason, ended[j].host) for j in handles}
        self.store.record_retries(handles, how, launch_id=_LAUNCH_CODE_ID)
        self.store.close_intents(journal.keys)
        return handles

    def _interrupted(self, active: dict[str, dict[str, Any]]) -> None:
        """Ctrl-C: jobs that run on without this process keep running (said how to collect or
        stop them); the others (local processes) are cancelled."""
        keep = self.backend.outlives_launcher(active)
        if keep:
            log.warning(
                "interrupted: %d jobs keep running on %s. Collect them with `python -m "
                "launcher_core.pull %s`, stop them with `python -m launcher_core cancel %s`.",
                len(keep),
                self.backend.name,
                self.sweep.sweep_dir,
                self.sweep.sweep_id,
            )
        stop = {j: h for j, h in active.items() if j not in keep}
        if stop:
            log.warning("interrupted: cancelling %d running jobs", len(stop))
            self.backend.cancel(stop)
            self.store.update_states({j: (JobState.CANCELLED, "interrupted (Ctrl-C)") for j in stop})
        if self.held:
            log.warning(
                "%d jobs were not started: run the same command again to start them (it re-attaches the running ones)",
                len(self.held),
            )


def _after_withdrawal() -> None:
    """Test hook: count a withdrawal that took jobs back; with :data:`TEST_KILL_AFTER_WITHDRAW_ENV`
    set to N, the N-th one kills this process with SIGKILL (before the move is closed)."""
    global _withdrawals
    _withdrawals += 1
    wanted = os.environ.get(TEST_KILL_AFTER_WITHDRAW_ENV, "")
    if wanted.isdigit() and int(wanted) == _withdrawals:
        os.kill(os.getpid(), signal.SIGKILL)


def _was_lost(row: JobRow) -> bool:
    return (row.ending or "").startswith(Ending.LOST.value)


class _StoreJournal:
    """The launch's :class:`~launcher_core.intents.IntentJournal`: intents go to the state store."""

    def __init__(self, store: StateStore, launch_id: str, unaccepted: Mapping[frozenset[str], str]) -> None:
        self.store = store
        self.launch_id = launch_id
        self.unaccepted = dict(unaccepted)  # jobs of intents looked up and not found -> their key
        self.keys: list[str] = []

    def key_for(self, job_ids: Collection[str]) -> str:
        return self.unaccepted.pop(frozenset(job_ids), None) or new_intent_key()

    def record(self, intent: SubmitIntent) -> None:
        self.store.record_intent(dataclasses.replace(intent, launch_id=self.launch_id, created_at=time.time()))
        self.keys.append(intent.key)

    def discard(self, keys: Sequence[str]) -> None:
        self.store.close_intents(keys)


def _shown(state: JobState) -> JobState:
    """The state a job counts as in progress and summaries (pulled jobs are done)."""
    return JobState.COMPLETED if state is JobState.PULLED else state


def collect_returns(specs: Sequence[JobSpec], store: StateStore) -> list[Any]:
    """One ``JobReturn`` per spec, in order; jobs without a result become FAILED returns."""
    from launcher_core.runtime.worker import JobLostError, failed_job_return, load_job_return

    rows = {r.job_id: r for r in store.jobs(job_ids=[s.job_id for s in specs])}
    returns = []
    for spec in specs:
        row = rows.get(spec.job_id)
        reason = (row.exit_reason if row else None) or "no result was written"
        result_path = (row.output_dir if row else spec.output_dir) / LAUNCHER_DIR / RESULT_FILE
        if row is not None and row.outcome is JobState.CANCELLED:
            returns.append(
                failed_job_return(spec.config, JobLostError(f"job #{spec.idx} was cancelled"), str(spec.output_dir))
            )
        elif result_path.exists() and not reason.startswith("timeout"):
            returns.append(load_job_return(result_path))
        else:
            err_cls = _error_class(reason)
            message = f"job #{spec.idx} ({' '.join(spec.overrides)}) failed: {reason}"
            stderr_tail = _tail(spec.launcher_dir / "stderr.log")
            if stderr_tail:
                message += f"\n--- last lines of {spec.launcher_dir / 'stderr.log'} ---\n{stderr_tail}"
            returns.append(failed_job_return(spec.config, err_cls(message), str(spec.output_dir)))
    return returns


def _error_class(reason: str) -> type[Exception]:
    """What Hydra gets for a job that left no result, from the reason the store gives."""
    from launcher_core.runtime.worker import JobLostError, JobNotRunError, JobTimeoutError

    if reason.startswith("timeout"):
        return JobTimeoutError
    if reason.startswith(NOT_RUN_PREFIX):
        return JobNotRunError
    return JobLostError


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _summarise(
    label: str, sweep_dir: Path, specs: Sequence[JobSpec], returns: Sequence[Any], store: StateStore, elapsed: float
) -> None:
    from hydra.core.utils import JobStatus as HydraJobStatus

    from launcher_core.runtime.worker import JobLostError, JobTimeoutError

    rows = {r.job_id: r for r in store.jobs(job_ids=[s.job_id for s in specs])}
    table_rows = []
    new_reasons: dict[str, str] = {}
    for spec, ret in zip(specs, returns):
        row = rows[spec.job_id]
        state = (row.outcome or row.state).value
        reason = row.exit_reason or ""
        if ret is not None and ret.status == HydraJobStatus.FAILED:
            state = "cancelled" if state == "cancelled" else "failed"
            if not isinstance(ret._return_value, (JobLostError, JobTimeoutError)):  # those keep the backend's reason
                reason = _error_line(ret._return_value) or reason
            if reason != row.exit_reason:
                new_reasons[spec.job_id] = reason
        table_rows.append((spec.idx, " ".join(spec.overrides), state, row.duration_s, reason))
    store.set_exit_reasons(new_reasons)
    print_summary(label=label, sweep_dir=str(sweep_dir), rows=table_rows, elapsed_s=elapsed)
    from launcher_core.results import print_best_rows

    print_best_rows(sweep_dir, [(s.idx, s.overrides, ret) for s, ret in zip(specs, returns)])
    _log_retried(store, specs, rows)
    failed = [r for r in table_rows if r[2] in ("failed", "cancelled")]
    if failed:
        log.error(
            "%d of %d jobs failed: %s",
            len(failed),
            len(table_rows),
            "; ".join(f"#{num} ({ov}): {reason}" for num, ov, _s, _d, reason in failed[:20]),
        )


def _summarise_backend(backend: Backend) -> None:
    """The backend's own lines (the spill launcher's table per target) and its cost so far."""
    lines = backend.progress_lines()
    spent = backend.spent_usd()
    if not lines and spent is None:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{backend.name}: per target", show_header=False, box=None)
    for line in lines:
        name, _, rest = line.partition(": ")
        table.add_row(name, rest)
    if spent is not None:
        table.add_row("cost so far", f"${spent:.2f}")
    Console(file=sys.stderr, width=120).print(table)


def _log_retried(store: StateStore, specs: Sequence[JobSpec], rows: Mapping[str, JobRow]) -> None:
    """The end-of-sweep list of jobs that were run again (an attempt of them was lost)."""
    retried = [spec for spec in specs if rows[spec.job_id].attempt > 1]
    if not retried:
        return
    earlier = store.attempts(job_ids=[s.job_id for s in retried])
    lines = []
    for spec in retried[:MAX_LOGGED_JOBS]:
        row = rows[spec.job_id]
        history = "; ".join(a.describe() for a in earlier.get(spec.job_id, []))
        lines.append(f"#{spec.idx}: {(row.outcome or row.state).value} at attempt {row.attempt} ({history})")
    more = f"; and {len(retried) - MAX_LOGGED_JOBS} more" if len(retried) > MAX_LOGGED_JOBS else ""
    log.warning("%d jobs were run again after losing an attempt: %s%s", len(retried), "; ".join(lines), more)


def _error_line(err: Any) -> str:
    """``Type: first line of message`` of a job's exception, for tables and logs."""
    if not isinstance(err, BaseException):
        return ""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def launch_batch(
    *,
    backend_factory: Callable[[], Backend],
    options: LaunchOptions,
    hydra_context: Any,
    config: Any,
    task_function: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    code_dir: Path | None = None,
) -> list[Any]:
    """Run one batch of a sweep through a backend; return Hydra ``JobReturn``s in order.

    With ``options.wait=False`` (detached backends) it returns as soon as every job was
    started, after printing the command that collects the results later.
    """
    from hydra.core.utils import setup_globals

    setup_globals()
    with _frozen_heap():
        return _launch(
            backend_factory=backend_factory,
            options=options,
            hydra_context=hydra_context,
            config=config,
            task_function=task_function,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
            code_dir=code_dir,
        )


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the garbage collector off the objects that exist when the launch starts.

    Everything imported and composed so far (Hydra, the master config, the composer's
    templates) lives until the launch ends. Without this, every full collection during the
    launch walks all of it again (~40 % of composing a job config), and in a forked
    ``local_pool`` job it would also copy every page of the inherited heap. Nothing is
    leaked: the objects are handed back to the collector when the launch ends. A program that
    froze its heap itself is left as it is.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _launch(
    *,
    backend_factory: Callable[[], Backend],
    options: LaunchOptions,
    hydra_context: Any,
    config: Any,
    task_function: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
    code_dir: Path | None,
) -> list[Any]:
    started = time.monotonic()
    sweep_dir, sweep_id, specs, composer = _sweep_jobs(hydra_context, config, job_overrides, initial_job_idx)
    backend = backend_factory()
    label = backend.name
    _log_jobs(label, sweep_dir, specs)
    backend.resolve_resources(specs)  # a job asking for what cannot be had stops the launch here
    sweep = SweepInfo(
        sweep_id=sweep_id,
        sweep_dir=sweep_dir,
        code_dir=code_dir or Path(os.getcwd()),
        task_name=str(config.hydra.job.name),
        composer=composer,
    )
    store = StateStore.for_sweep_dir(sweep_dir)
    try:
        git, code_id = _record_code(sweep)
        if backend.runs_local_code:
            sweep.code_snapshot = _freeze(sweep, code_id)
        store.set_meta(
            {
                "code_commit": git.commit,
                "code_dirty": git.dirty,
                "code_branch": git.branch,
                "code_snapshot": code_id,
                "backend_config": backend.stored_config(),
                CAPABILITIES_META: descriptor(backend.name).capabilities(backend.stored_config()).to_meta(),
                "sweep_id": sweep_id,
                "backend": backend.name,
                "sweep_dir": str(sweep_dir),
                "task_name": sweep.task_name,
                "launched_at": time.time(),
            }
        )
        _register(sweep_id, sweep_dir, backend.name)
        store.adopt_earlier_ids(sweep_id, specs)  # a sweep launched by an earlier version resumes
        controller = SweepController(backend, store, options, sweep)
        to_submit, reattached = controller.plan(specs)
        if to_submit and options.preflight:
            from launcher_core.preflight import run_preflight

            _payload_needs(sweep, task_function)
            run_preflight(backend, sweep, len(to_submit))
        sweep.code_record = snapshots.code_record(git, code_id)
        backend.prepare(sweep)
        if not options.wait and backend.room() is not None:
            raise ConfigError(f"hydra.launcher.wait=false: the {backend.name} launcher places jobs while it runs")
        active = {**reattached, **controller.start(to_submit, reattached)}
        if not options.wait:
            store.mark_collected(s.job_id for s in specs)  # the pull daemon takes them from here
            returns = _detached_returns(specs, sweep, backend.name)
            if options.auto_pull:
                from launcher_core.collect import autopull

                autopull.start(sweep_dir, options.auto_pull_interval_s, options.notify, options.auto_pull_give_up_h)
            return returns
        progress = SweepProgress(len(specs), label)
        try:
            controller.watch(active, {s.job_id: s for s in specs}, progress)
        finally:
            progress.close()
        returns = collect_returns(specs, store)
        store.mark_collected(s.job_id for s in specs)
        _summarise(label, sweep_dir, specs, returns, store, time.monotonic() - started)
        _summarise_backend(backend)
        return returns
    except sqlite3.OperationalError as exc:
        raise BackendError(_store_failure(sweep_dir, exc, backend)) from exc
    finally:
        try:
            backend.close()
        finally:
            store.close()


def _payload_needs(sweep: SweepInfo, task_function: Any) -> None:
    """What the job side will need to load this batch's payload, for the pre-flight to check."""
    from launcher_core.backends.base import sweep_payload_for

    sweep_payload_for(sweep, task_function)  # sets sweep.payload_needs; the bytes are built again at submit


# one code snapshot (and code record) per launching process: every batch of a sweep shares it
_LAUNCH_CODE_ID = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
CODE_DIR = "code"  # in the sweep's .launcher/: the full diff once, and the frozen snapshot


_GIT_AT_LAUNCH: dict[Path, Any] = {}  # code dir -> its git state when this process first launched


def _record_code(sweep: SweepInfo) -> tuple[Any, str]:
    """The git state of the code dir, read once per launching process (every batch of a multirun
    shares it); the full diff and the summary are kept once per sweep (``.launcher/code/<id>.diff``,
    ``<id>.json``)."""
    from launcher_core.remote.codesync import git_state

    git = _GIT_AT_LAUNCH.get(sweep.code_dir)
    if git is None:
        git = _GIT_AT_LAUNCH[sweep.code_dir] = git_state(sweep.code_dir)
    dest = sweep.sweep_dir / LAUNCHER_DIR / CODE_DIR
    summary = dest / f"{_LAUNCH_CODE_ID}.json"
    if not summary.exists():
        snapshots.write_private(dest / f"{_LAUNCH_CODE_ID}.diff", git.diff)  # may hold anything: private
        snapshots.write_private(summary, json.dumps(git.summary(), indent=1) + "\n")
    return git, _LAUNCH_CODE_ID


def _freeze(sweep: SweepInfo, code_id: str) -> Path:
    snapshot = sweep.sweep_dir / LAUNCHER_DIR / CODE_DIR / code_id
    tic = time.monotonic()
    snapshots.freeze_code(sweep.code_dir, snapshot, sweep_dir=sweep.sweep_dir)
    log.debug("code dir %s frozen into %s in %.2f s", sweep.code_dir, snapshot, time.monotonic() - tic)
    return snapshot


def _sweep_jobs(
    hydra_context: Any, config: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> tuple[Path, str, list[JobSpec], Any]:
    """The sweep dir (created), its id, the batch's job specs and the composer that checked them."""
    from launcher_core.runtime.compose import composer_for

    sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep_id = sweep_id_for(sweep_dir)
    composer = composer_for(hydra_context, config)  # shares templates with the sweeper's validation
    specs = build_job_specs(
        composer=composer, sweep_id=sweep_id, job_overrides=job_overrides, initial_job_idx=initial_job_idx
    )
    return sweep_dir, sweep_id, specs, composer


def _store_failure(sweep_dir: Path, exc: Exception, backend: Backend) -> str:
    """What to tell the user when the state store cannot be written (full disk, read-only)."""
    what = "the disk under it is full" if "full" in str(exc) else str(exc)
    after = (
        "jobs started on the backend keep running; free space, then relaunch the same command to re-attach"
        if backend.detached
        else "the running jobs were stopped; free space, then relaunch (skip_completed=true keeps finished jobs)"
    )
    return f"cannot update the sweep's state store in {sweep_dir}: {what} ({exc}); {after}"


def _register(sweep_id: str, sweep_dir: Path, backend: str) -> None:
    try:
        index = SweepIndex()
    except OSError as exc:  # an unwritable home must not stop a launch
        log.warning("could not record sweep %s in the sweep index: %s", sweep_id, exc)
        return
    try:
        index.register(sweep_id, sweep_dir, backend)
    finally:
        index.close()


@dataclass(frozen=True)
class DetachedResult:
    """Return value of a job launched with ``wait=false``: where its result will appear."""

    sweep_id: str
    job_id: str
    output_dir: str

    def __str__(self) -> str:
        return f"<not collected yet: job {self.job_id} of sweep {self.sweep_id} -> {self.output_dir}>"


def _detached_returns(specs: Sequence[JobSpec], sweep: SweepInfo, backend: str) -> list[Any]:
    """Returns for a ``wait=false`` launch, after telling the user how to collect results.

    Each is COMPLETED (launching succeeded, so Hydra's sweeper goes on) with a
    :class:`DetachedResult` as its return value instead of the task's.
    """
    log.info(
        "%d jobs started on %s (sweep id %s). Collect results with:\n  python -m launcher_core.pull %s",
        len(specs),
        backend,
        sweep.sweep_id,
        sweep.sweep_dir,
    )
    return [
        placeholder_return(spec, sweep.task_name, DetachedResult(sweep.sweep_id, spec.job_id, str(spec.output_dir)))
        for spec in specs
    ]


def placeholder_return(spec: JobSpec, task_name: str, value: Any) -> Any:
    """A COMPLETED ``JobReturn`` for a job that was not run here (yet): launching it succeeded,
    so Hydra's sweeper goes on, and ``value`` says where its real result will be."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(overrides=list(spec.overrides), working_dir=str(spec.output_dir))
    ret.status = JobStatus.COMPLETED
    ret.task_name = task_name
    ret.return_value = value
    return ret


def dry_run_batch(
    *,
    backend: Backend,
    hydra_context: Any,
    config: Any,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> list[Any]:
    """A launch that submits nothing: the backend writes what it would submit
    (:meth:`Backend.dry_run`); one COMPLETED ``JobReturn`` per job whose value names it."""
    from hydra.core.utils import setup_globals

    setup_globals()
    sweep_dir, sweep_id, specs, composer = _sweep_jobs(hydra_context, config, job_overrides, initial_job_idx)
    sweep = SweepInfo(sweep_id, sweep_dir, Path(os.getcwd()), str(config.hydra.job.name), composer=composer)
    backend.resolve_resources(specs)
    if backend.runs_local_code:  # the written scripts run the code as it is now, whenever submitted
        git, code_id = _record_code(sweep)
        sweep.code_snapshot = _freeze(sweep, code_id)
        sweep.code_record = snapshots.code_record(git, code_id)
    backend.prepare(sweep)
    try:
        values = backend.dry_run(specs)
    finally:
        backend.close()
    return [placeholder_return(spec, sweep.task_name, values[spec.job_id]) for spec in specs]
