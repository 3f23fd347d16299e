"""``spill``: one sweep over several targets, each a cluster preset with its own backend and a
number of jobs it takes at once; each job goes to the first target with a free slot, in order.

The spill backend is a backend like any other to the rest of the project: the launch loop, the
state store, ``status``, ``pull``, ``cancel``, ``clean`` and pipelines talk to it through the
contract, and it hands each call to the targets' own backends (one call per target, for the jobs
placed there). Its handle (:class:`.handle.SpillHandle`) names the target and keeps the target
backend's handle, so a relaunch, the pull daemon or ``status`` in another process finds every job
where it is. Each target keeps its own settings, frozen code, pre-flight and exactly-once rules: a
submission a target records as an intent is recorded with the target's name in it.

Placement is held back by the launch loop (:meth:`SpillBackend.room`): it offers jobs only while
some target has a free slot. A job that waits in a queueing target's queue for longer than the
target's ``max_queue_wait_min`` is taken back (:meth:`SpillBackend.overdue`, then the launch loop
records the move and calls :meth:`SpillBackend.withdraw`) and placed again; such a target takes no
new jobs until one of its jobs starts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.backends.base import Backend, CleanReport, CleanRequest, Handle, handle_json
from launcher_core.backends.spill.handle import SpillHandle, where
from launcher_core.backends.spill.settings import TargetSettings
from launcher_core.errors import BackendError, ConfigError, SubmitError
from launcher_core.intents import IntentJournal, SubmitIntent
from launcher_core.jobs import JobSpec, JobState, JobStatus, PullFilter, SweepInfo

log = logging.getLogger("launcher_core")

LOST_CONTACT_RETRY_S = 60.0  # how often a target that lost contact is asked again


@dataclass(eq=False)  # one object per target: a dict key by identity
class Target:
    """One target of a spill sweep while it runs."""

    settings: TargetSettings
    backend: Backend
    interval_s: float  # how often its jobs are polled (its own poll_interval_s)
    price_per_hour_usd: float | None = None
    enabled: bool = True  # False: its pre-flight or start-up failed (a warning said so)
    congested: bool = False  # a job was taken back from its queue: no new jobs until one of its jobs runs
    budget_note: str | None = None  # set once max_cost_usd is reached: no new jobs
    lost_contact: str | None = None  # its poll gave up (an outage past its grace): no new jobs, asked rarely
    active: set[str] = field(default_factory=set)  # jobs of the sweep there now (queued or running)
    cannot: dict[str, str] = field(default_factory=dict)  # job id -> why it cannot run there
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> its resources there
    billed: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # every job placed there (cost)
    cost_usd: float = 0.0
    last_poll: float = float("-inf")
    counts: dict[str, int] = field(default_factory=lambda: {"placed": 0, "running": 0, "done": 0, "failed": 0})
    moved_away: int = 0

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def label(self) -> str:
        return f"{self.name} ({self.backend.name})"

    @property
    def usable(self) -> bool:
        return self.enabled and not self.congested and self.budget_note is None and self.lost_contact is None

    @property
    def free(self) -> int:
        return max(self.settings.max_jobs - len(self.active), 0) if self.usable else 0


class SpillBackend(Backend):
    """The targets' backends behind one contract (see the module docstring)."""

    name = "spill"

    def __init__(self, targets: Sequence[Target], *, retry_elsewhere: bool = False, require_all: bool = False) -> None:
        if not targets:
            raise ConfigError("hydra.launcher.targets: give at least one target")
        self.targets = list(targets)
        self._by_name = {t.name: t for t in self.targets}
        self.retry_elsewhere = retry_elsewhere
        self.require_all = require_all
        self.detached = all(t.backend.detached for t in self.targets)
        self.runs_local_code = any(t.backend.runs_local_code for t in self.targets)
        self.poll_interval_s = min(t.interval_s for t in self.targets)
        self._home: dict[str, str] = {}  # job id -> the target it was last placed on (this launch)

    # --- start-up ------------------------------------------------------------------------------
    def resolve_resources(self, specs: Sequence[JobSpec]) -> None:
        """Each target reads the jobs' resources its own way (``resources_from`` of its preset); a
        job a target cannot run is kept off it, and a job no target can run stops the launch."""
        for target in self.targets:
            copies = [dataclasses.replace(s, resources=dict(s.resources)) for s in specs]
            try:
                target.backend.resolve_resources(copies)
            except ConfigError:
                copies = self._resolve_one_by_one(target, specs)
            target.resources = {c.job_id: c.resources for c in copies}
        for spec in specs:
            if all(spec.job_id in t.cannot for t in self.targets):
                reasons = "; ".join(f"{t.name}: {t.cannot[spec.job_id]}" for t in self.targets)
                raise ConfigError(f"job #{spec.idx} cannot run on any target: {reasons}")

    def _resolve_one_by_one(self, target: Target, specs: Sequence[JobSpec]) -> list[JobSpec]:
        kept = []
        for spec in specs:
            copy = dataclasses.replace(spec, resources=dict(spec.resources))
            try:
                target.backend.resolve_resources([copy])
            except ConfigError as exc:
                target.cannot[spec.job_id] = str(exc)
                continue
            kept.append(copy)
        if target.cannot:
            log.warning(
                "spill: %d jobs cannot run on target %s and go elsewhere (%s)",
                len(target.cannot),
                target.label,
                next(iter(target.cannot.values())),
            )
        return kept

    def preflight(self, request: Any) -> list[Any]:
        """Every target's pre-flight; a target that fails is skipped with a one-line warning
        naming it (``require_all``: the failure stops the launch, as when every target fails)."""
        rows: list[Any] = []
        failures: list[Any] = []
        for target in self._enabled():
            wanted = request.n_jobs if request.n_jobs is None else min(request.n_jobs, target.settings.max_jobs)
            try:
                found = list(target.backend.preflight(dataclasses.replace(request, n_jobs=wanted)))
            except (BackendError, ConfigError, OSError) as exc:
                self._drop(target, f"its pre-flight could not run: {exc}", exc)
                continue
            bad = [r for r in found if not r.ok]
            if bad and not self.require_all:
                failures.extend(bad)
                self._drop(target, f"pre-flight failed on {bad[0].host}: {bad[0].check}: {bad[0].detail}")
                continue
            # a failed row names its target (``ssh_dead/deadhost``): the refusal says which target to fix
            rows.extend(r if r.ok else dataclasses.replace(r, host=where(target.name, r.host)) for r in found)
        if not self._enabled():
            return failures or rows
        return rows

    def prepare(self, sweep: SweepInfo) -> None:
        for target in self._enabled():
            try:
                target.backend.prepare(sweep)
            except (BackendError, ConfigError, OSError) as exc:
                self._drop(target, f"it could not be prepared: {exc}", exc)
        for target in self._enabled():
            self._price(target)
        if not self._enabled():
            raise BackendError("spill: no target is usable (each was skipped: see the warnings above)")

    def _price(self, target: Target) -> None:
        """The instance-hour price of a target with ``max_cost_usd``: the user's, else the
        provider's (EC2 spot price history); a budget without a price is refused."""
        price = target.settings.price_per_hour_usd
        if target.settings.max_cost_usd is None:
            target.price_per_hour_usd = price  # with a price alone the cost is counted, nothing stops
            return
        if price is None:
            price = target.backend.hourly_price_usd()
        if price is None:
            raise ConfigError(
                f"{target.settings.key}.max_cost_usd: target {target.label} has no price to count the "
                "cost with: give price_per_hour_usd (USD per instance-hour)"
            )
        target.price_per_hour_usd = price

    def _enabled(self) -> list[Target]:
        return [t for t in self.targets if t.enabled]

    def _drop(self, target: Target, why: str, exc: BaseException | None = None) -> None:
        """Skip a target for the rest of the launch, or (``require_all``) stop the launch."""
        if self.require_all:
            raise ConfigError(f"spill: target {target.label}: {why} (require_all: true)") from exc
        target.enabled = False
        log.warning("spill: target %s skipped: %s", target.label, why.splitlines()[0] if why else why)

    # --- placement -----------------------------------------------------------------------------
    def room(self) -> int | None:
        return sum(t.free for t in self.targets)

    def no_room_reason(self) -> str:
        roomy = [t for t in self.targets if t.free > 0]
        if roomy:
            why = "; ".join(f"{t.name}: {next(iter(t.cannot.values()), 'refused them')}" for t in roomy)
            return f"the targets with free slots cannot run them ({why})"
        parts = []
        for t in self.targets:
            if not t.enabled:
                parts.append(f"{t.name}: skipped")
            elif t.budget_note:
                parts.append(f"{t.name}: {t.budget_note}")
            elif t.congested:
                parts.append(f"{t.name}: its queue does not move")
        return "no target can take more jobs (" + ("; ".join(parts) or "all full") + ")"

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, SpillHandle]:
        """Place each job on the first target with a free slot (a job lost on a target runs again
        there, or with ``retry_elsewhere`` on the next one with room) and submit each target's
        share in one call. Jobs no target can take now are left out: the launch loop offers them
        again when room frees up."""
        placed: dict[str, list[JobSpec]] = {}
        for spec in jobs:
            target = self._place(spec)
            if target is not None:
                placed.setdefault(target.name, []).append(spec)
                target.active.add(spec.job_id)  # its slot is taken from now on
        handles: dict[str, SpillHandle] = {}
        errors: list[str] = []
        for name, specs in placed.items():
            target = self._by_name[name]
            try:
                handles.update(self._submit_to(target, specs))
            except SubmitError as exc:
                handles.update(self._wrap(target, exc.started))
                self._undo(target, specs, handles)
                errors.append(f"{target.label}: {exc}")
                self._drop(target, f"submitting failed: {exc}", exc)
            except (BackendError, ConfigError, OSError) as exc:
                self._undo(target, specs, handles)
                errors.append(f"{target.label}: {exc}")
                self._drop(target, f"submitting failed: {exc}", exc)
        if errors and not handles and not self._enabled():
            raise SubmitError("spill: no target took the jobs: " + "; ".join(errors), started={})
        return handles

    def _place(self, spec: JobSpec) -> Target | None:
        home = self._by_name.get(self._home.get(spec.job_id, ""))
        if home is not None and home.enabled and not self.retry_elsewhere and spec.job_id not in home.active:
            return home  # a new attempt of a job lost there: its slot was just freed
        order = [t for t in self.targets if t is not home] + ([home] if home is not None else [])
        for target in order:
            if target.free > 0 and spec.job_id not in target.cannot:
                return target
        if home is not None and home.enabled and spec.job_id not in home.active:
            return home  # retry_elsewhere, and nowhere else has room: its own slot
        return None

    def _submit_to(self, target: Target, specs: Sequence[JobSpec]) -> dict[str, SpillHandle]:
        ready = [dataclasses.replace(s, resources=dict(target.resources.get(s.job_id, s.resources))) for s in specs]
        for copy, spec in zip(ready, specs):
            copy.attempt = spec.attempt
        target.backend.intents = _TargetJournal(self.intents, target)
        wrapped = self._wrap(target, target.backend.submit(ready))
        target.counts["placed"] += len(wrapped)
        return wrapped

    def _wrap(self, target: Target, inner: Mapping[str, Handle]) -> dict[str, SpillHandle]:
        now = time.time()
        out = {}
        for job_id, h in inner.items():
            data = handle_json(h)
            out[job_id] = SpillHandle(target=target.name, backend=target.backend.name, placed_at=now, inner=data)
            self._home[job_id] = target.name
            target.billed[job_id] = data
        return out

    def _undo(self, target: Target, specs: Sequence[JobSpec], started: Mapping[str, Any]) -> None:
        for spec in specs:
            if spec.job_id not in started:
                target.active.discard(spec.job_id)

    def accepted(self, intents: Sequence[SubmitIntent]) -> Mapping[str, SpillHandle]:
        """Each target is asked about the intents it recorded (one lookup per target)."""
        by_target: dict[str, list[SubmitIntent]] = {}
        for intent in intents:
            first = next(iter(intent.handles.values()), None)
            handle = SpillHandle.of(first) if first is not None else None
            if handle is not None and handle.target in self._by_name:
                inner = {j: dict(SpillHandle.of(h).inner) for j, h in intent.handles.items()}
                by_target.setdefault(handle.target, []).append(dataclasses.replace(intent, handles=inner))
        found: dict[str, SpillHandle] = {}
        for name, group in by_target.items():
            target = self._by_name[name]
            found.update(self._wrap(target, target.backend.accepted(group)))
        return found

    # --- watching ------------------------------------------------------------------------------
    def poll(self, handles: Mapping[str, Handle]) -> Mapping[str, JobStatus]:
        """One poll per target whose own interval has passed (local ones every time); every
        target's count of jobs there is set from what is still active."""
        now = time.monotonic()
        statuses: dict[str, JobStatus] = {}
        for target, group in self._by_target(handles).items():
            interval = LOST_CONTACT_RETRY_S if target.lost_contact else target.interval_s
            if target.backend.detached and now - target.last_poll < interval:
                target.active = set(group)
                continue
            target.last_poll = now
            try:
                found = target.backend.poll(_inner(group))
            except BackendError as exc:
                if not target.backend.detached:
                    raise
                self._lost_contact(target, group, exc)
                continue
            if target.lost_contact is not None:
                target.lost_contact = None
                log.warning("spill: target %s answers again: it takes new jobs", target.label)
            for job_id, st in found.items():
                if job_id in group:
                    statuses[job_id] = _placed_status(target, st)
            target.active = {j for j in group if j not in found or not found[j].state.is_terminal}
            self._count(target, group, found)
            self._check_budget(target)
        return statuses

    def _lost_contact(self, target: Target, group: Mapping[str, SpillHandle], exc: BackendError) -> None:
        """A target whose poll gave up (its outage outlasted its own grace): its jobs are left as
        they are (unknown: they may still run), it takes no new jobs, and the other targets go
        on; it is asked again every :data:`LOST_CONTACT_RETRY_S`."""
        target.active = set(group)
        if target.lost_contact is None:
            log.warning(
                "spill: target %s does not answer; its %d jobs are left as they are and the other targets go on: %s",
                target.label,
                len(group),
                str(exc).splitlines()[0],
            )
        target.lost_contact = str(exc)

    def given_up(self, handles: Mapping[str, Handle]) -> str | None:
        """When every job still running is on targets that lost contact: their message (the
        launch stops, and a relaunch re-attaches those jobs)."""
        by_target = self._by_target(handles)
        if not by_target or any(t.lost_contact is None for t in by_target):
            return None
        return "; ".join(f"target {t.name}: {t.lost_contact}" for t in by_target)

    def _count(self, target: Target, group: Mapping[str, SpillHandle], found: Mapping[str, JobStatus]) -> None:
        running = sum(1 for st in found.values() if st.state is JobState.RUNNING)
        target.counts["running"] = running
        if running and target.congested:
            target.congested = False
            log.info("spill: target %s runs jobs again: it takes new jobs", target.label)
        for st in found.values():
            if st.state in (JobState.COMPLETED, JobState.PULLED):
                target.counts["done"] += 1
            elif st.state in (JobState.FAILED, JobState.CANCELLED):
                target.counts["failed"] += 1

    def _check_budget(self, target: Target) -> None:
        limit = target.settings.max_cost_usd
        if target.price_per_hour_usd is None or not target.billed:
            return
        hours = target.backend.billed_hours(target.billed)
        if hours is None:
            return
        target.cost_usd = hours * target.price_per_hour_usd
        if limit is not None and target.cost_usd >= limit and target.budget_note is None:
            target.budget_note = f"its cost ${target.cost_usd:.2f} reached max_cost_usd=${limit:g}"
            log.warning("spill: target %s: %s; no more jobs go there", target.label, target.budget_note)

    def overdue(self, statuses: Mapping[str, JobStatus], handles: Mapping[str, Handle]) -> list[str]:
        """Jobs queued on a target with ``max_queue_wait_min`` for longer than that, oldest first,
        as many as the other targets have free slots for."""
        free = {t.name: t.free for t in self.targets}
        now = time.time()
        out: list[str] = []
        for target, group in self._by_target(handles).items():
            wait_min = target.settings.max_queue_wait_min
            if wait_min is None:
                continue
            waiting = sorted(
                (h.placed_at, j)
                for j, h in group.items()
                if (st := statuses.get(j)) is not None
                and st.state is JobState.SUBMITTED
                and now - h.placed_at >= wait_min * 60
            )
            for _placed, job_id in waiting:
                elsewhere = next((n for n, left in free.items() if n != target.name and left > 0), None)
                if elsewhere is None:
                    break
                free[elsewhere] -= 1
                out.append(job_id)
        return out

    def withdraw(self, handles: Mapping[str, Handle]) -> set[str]:
        """Take the jobs back from their targets (each confirms which never started); a target
        that gave jobs back takes no new ones until one of its jobs runs."""
        taken: set[str] = set()
        for target, group in self._by_target(handles).items():
            back = set(target.backend.withdraw(_inner(group))) & set(group)
            if not back:
                continue
            taken |= back
            target.active -= back
            target.moved_away += len(back)
            for job_id in back:
                self._home.pop(job_id, None)
            if not target.congested:
                target.congested = True
                wait_min = target.settings.max_queue_wait_min
                log.warning(
                    "spill: %d jobs waited over %g min in the queue of target %s: moved to other targets; "
                    "it takes no new jobs until one of its jobs starts",
                    len(back),
                    wait_min if wait_min is not None else 0,
                    target.label,
                )
        return taken

    def wait(self, timeout_s: float) -> None:
        """The local targets' own wait (it returns when one of their jobs exits), else a sleep."""
        local = [t for t in self._enabled() if not t.backend.detached]
        if not local:
            time.sleep(timeout_s)
            return
        share = timeout_s / len(local)
        for target in local:
            target.backend.wait(share)

    def progress_lines(self) -> list[str]:
        """One line per target: jobs placed there, running, done."""
        lines = []
        for t in self.targets:
            c = t.counts
            line = f"{t.name}: {c['placed']} placed, {c['running']} running, {c['done']} done"
            if c["failed"]:
                line += f", {c['failed']} failed"
            if t.moved_away:
                line += f", {t.moved_away} moved away"
            if t.price_per_hour_usd is not None:
                line += f", ${t.cost_usd:.2f} spent"
            if not t.enabled:
                line += " (skipped)"
            elif t.budget_note:
                line += " (budget reached)"
            lines.append(line)
        return lines

    def spent_usd(self) -> float | None:
        priced = [t for t in self.targets if t.price_per_hour_usd is not None]
        return sum(t.cost_usd for t in priced) if priced else None

    # --- per job, handed to the job's target -------------------------------------------------
    def fetch(
        self, jobs: Mapping[str, Handle], local_dirs: Mapping[str, Path], pull_filter: PullFilter | None = None
    ) -> None:
        for target, group in self._by_target(jobs).items():
            target.backend.fetch(_inner(group), local_dirs, pull_filter)

    def cancel(self, handles: Mapping[str, Handle]) -> None:
        for target, group in self._by_target(handles).items():
            target.backend.cancel(_inner(group))
            target.active -= set(group)

    def reattachable(self, handle: Handle) -> bool:
        spill = SpillHandle.of(handle)
        target = self._by_name.get(spill.target)
        return target is not None and (target.backend.detached or target.backend.reattachable(dict(spill.inner)))

    def outlives_launcher(self, handles: Mapping[str, Handle]) -> set[str]:
        """Each target says which of its jobs run on without this process (a local target's do not)."""
        return {
            j
            for target, group in self._by_target(handles).items()
            for j in target.backend.outlives_launcher(_inner(group))
        }

    def retry_resources(self, spec: JobSpec, mem_factor: float) -> dict[str, Any]:
        target = self._by_name.get(self._home.get(spec.job_id, ""))
        return dict(spec.resources) if target is None else target.backend.retry_resources(spec, mem_factor)

    def unreachable(self) -> list[str]:
        return [where(t.name, place) for t in self.targets for place in t.backend.unreachable()]

    def read_log(self, handle: Handle, stream: str, offset: int = 0) -> bytes | None:
        spill = SpillHandle.of(handle)
        target = self._by_name.get(spill.target)
        return None if target is None else target.backend.read_log(dict(spill.inner), stream, offset)

    def list_files(self, handles: Mapping[str, Handle]) -> Mapping[str, list[tuple[str, int]]] | None:
        out: dict[str, list[tuple[str, int]]] = {}
        listed = False
        for target, group in self._by_target(handles).items():
            found = target.backend.list_files(_inner(group))
            if found is not None:
                listed = True
                out.update(found)
        return out if listed else None

    def observe(self, handles: Mapping[str, Handle]) -> Any:
        from launcher_core.machines import Observation

        seen = Observation()
        for target, group in self._by_target(handles).items():
            part = target.backend.observe(_inner(group))
            seen.statuses.update(part.statuses)  # the machines' own names: top's host rows are machines
            seen.hosts.update(part.hosts)
            seen.jobs.update(part.jobs)
            seen.commands.update(part.commands)
            seen.errors.update(part.errors)
        return seen

    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """Each target cleans its jobs' files; a target's sweep-level leftovers go once all of its
        jobs are clean."""
        report = CleanReport()
        everyone = self._by_target(request.sweep_handles) if request.sweep_handles is not None else {}
        mine = self._by_target(request.handles)
        all_clean = True
        parts: list[tuple[str, CleanReport]] = []
        for target in [t for t in self.targets if t in mine or t in everyone]:
            group = mine.get(target, {})
            whole = everyone.get(target)
            part = target.backend.clean(
                _inner(group),
                sweep_id=request.sweep_id,
                sweep_handles=None if whole is None else _inner(whole),
                dry_run=request.dry_run,
            )
            all_clean = all_clean and (part.sweep_cleaned or bool(part.nothing_to_clean))
            parts.append((target.name, part))
            _merge(report, part, target.name)
        report.sweep_cleaned = request.sweep_handles is not None and all_clean
        if parts and all(p.nothing_to_clean for _n, p in parts):  # no target keeps a copy anywhere
            report.nothing_to_clean = "; ".join(f"{n}: {p.nothing_to_clean}" for n, p in parts)
            report.notes = []
        return report

    def stored_config(self) -> dict[str, Any]:
        """Each target's backend and its own stored config: another process rebuilds them all."""
        return {
            "targets": [
                {
                    "name": t.name,
                    "cluster": t.settings.cluster,
                    "backend": t.backend.name,
                    "max_jobs": t.settings.max_jobs,
                    "config": t.backend.stored_config(),
                }
                for t in self.targets
            ],
            "retry_elsewhere": self.retry_elsewhere,
        }

    def close(self) -> None:
        errors = []
        for target in self.targets:
            try:
                target.backend.close()
            except Exception as exc:  # noqa: BLE001 - close every target, then say what failed
                errors.append(f"{target.label}: {exc}")
        if errors:
            log.warning("spill: closing targets: %s", "; ".join(errors))

    def _by_target(self, handles: Mapping[str, Handle]) -> dict[Target, dict[str, SpillHandle]]:
        out: dict[Target, dict[str, SpillHandle]] = {}
        for job_id, h in handles.items():
            if not h:
                continue
            spill = SpillHandle.of(h)
            target = self._by_name.get(spill.target)
            if target is None:
                raise BackendError(
                    f"spill: job {job_id} ran on target {spill.target!r}, which this sweep no longer has"
                )
            out.setdefault(target, {})[job_id] = spill
        return out


def _inner(group: Mapping[str, SpillHandle]) -> dict[str, dict[str, Any]]:
    """The target backend's own handles of these jobs (what its contract methods take)."""
    return {job_id: dict(h.inner) for job_id, h in group.items()}


def _placed_status(target: Target, status: JobStatus) -> JobStatus:
    """A target's status of a job, its host prefixed with the target (``lab_servers/gpu1``)."""
    return dataclasses.replace(status, host=where(target.name, status.host) if status.host else None)


def _merge(report: CleanReport, part: CleanReport, name: str) -> None:
    for location, paths in part.targets.items():
        report.targets.setdefault(where(name, location), []).extend(paths)
    for location, n in part.jobs.items():
        report.jobs[where(name, location)] = report.jobs.get(where(name, location), 0) + n
    report.cleaned |= part.cleaned
    report.notes.extend(f"{name}: {note}" for note in part.notes)
    report.errors.extend(f"{name}: {err}" for err in part.errors)
    if part.nothing_to_clean:
        report.notes.append(f"{name}: {part.nothing_to_clean}")


class _TargetJournal:
    """A target's view of the launch's intent journal: each intent it records is kept with the
    target's name and backend in its handles, so a relaunch asks the right target about it."""

    def __init__(self, outer: IntentJournal, target: Target) -> None:
        self.outer = outer
        self.target = target

    def key_for(self, job_ids: Any) -> str:
        return self.outer.key_for(job_ids)

    def record(self, intent: SubmitIntent) -> None:
        now = time.time()
        wrapped = {
            j: SpillHandle(
                target=self.target.name, backend=self.target.backend.name, placed_at=now, inner=handle_json(h)
            )
            for j, h in intent.handles.items()
        }
        self.outer.record(dataclasses.replace(intent, handles=wrapped))

    def discard(self, keys: Sequence[str]) -> None:
        self.outer.discard(keys)


def from_config(config: Mapping[str, Any]) -> SpillBackend:
    """Rebuild from :meth:`SpillBackend.stored_config`, each target from its own stored config
    (it can poll, fetch, cancel and clean: what ``status``, ``pull`` and ``cancel`` need)."""
    from launcher_core.backends.registry import backend_from_config

    targets = []
    for position, entry in enumerate(config.get("targets") or []):
        settings = TargetSettings(
            name=str(entry["name"]),
            cluster=str(entry.get("cluster") or entry["name"]),
            max_jobs=int(entry.get("max_jobs") or 1),
            position=position,
        )
        backend = backend_from_config(str(entry["backend"]), entry.get("config") or {})
        interval = backend.poll_interval_s if backend.poll_interval_s is not None else 10.0
        targets.append(Target(settings=settings, backend=backend, interval_s=interval))
    return SpillBackend(targets, retry_elsewhere=bool(config.get("retry_elsewhere", False)))


def check_target(target: Target) -> None:
    """Refuse settings a target's backend cannot honour (before anything starts)."""
    backend, s = target.backend, target.settings
    if s.max_queue_wait_min is not None and type(backend).withdraw is Backend.withdraw:
        raise ConfigError(
            f"{s.key}.max_queue_wait_min: target {target.label} cannot take back queued jobs "
            "(only queueing targets can: slurm, ec2)"
        )
    if (s.max_cost_usd is not None or s.price_per_hour_usd is not None) and type(
        backend
    ).billed_hours is Backend.billed_hours:
        key = "max_cost_usd" if s.max_cost_usd is not None else "price_per_hour_usd"
        raise ConfigError(f"{s.key}.{key}: target {target.label} is not billed per machine (only ec2 is)")
