"""The ``slurm`` backend: prepares a sweep, writes and submits its sbatch scripts, polls, fetches,
cancels and cleans through the site (:mod:`.sites`); design: docs/slurm.md."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Backend, CleanReport, CleanRequest, Handle, sweep_payload_for
from launcher_core.backends.slurm.accounting import (
    DEFAULT_MAX_ARRAY_SIZE,
    SlurmAccounting,
    read_max_array_size,
)
from launcher_core.backends.slurm.handle import SlurmHandle
from launcher_core.backends.slurm.options import SlurmOptions
from launcher_core.backends.slurm.preflight import preflight as check_site
from launcher_core.backends.slurm.sbatch import (
    EXIT_FILE,
    RANKS_DIR,
    SLURM_DIR,
    TASKS_DIR,
    TIMEOUTS_FILE,
    Chunk,
    job_argv,
    plan_grouped_chunks,
    render_script,
    resource_text,
)
from launcher_core.backends.slurm.sites import LocalSite, LoginSite
from launcher_core.container import job_binds
from launcher_core.errors import BackendError, ConfigError, LauncherError, SubmitError
from launcher_core.intents import SubmitIntent, after_accepted_submission
from launcher_core.jobs import (
    LAUNCHER_DIR,
    RESULT_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    JobSpec,
    JobState,
    JobStatus,
    SweepInfo,
)

if TYPE_CHECKING:
    from launcher_core.backends.slurm.nodes import TaskGpus
    from launcher_core.machines import Observation
    from launcher_core.preflight import Check, PreflightRequest

log = logging.getLogger("launcher_core.slurm")

PACK_TARGET_S = 600.0  # jobs_per_task=auto: pack about this much work into one array task


class SlurmBackend(Backend):
    """Submits job arrays with ``sbatch``; polls with one ``sacct`` per poll; cancels with ``scancel``."""

    name = "slurm"
    detached = True  # jobs run on without us; a relaunch re-attaches instead of resubmitting

    def __init__(self, options: SlurmOptions, *, task_function: Any = None, hydra_context: Any = None) -> None:
        self.options = options
        self.poll_interval_s = options.poll_interval_s
        self.site: LocalSite | LoginSite = LoginSite(options) if options.login_host else LocalSite(options)
        # on a shared file system the jobs run from here: the controller freezes the code for them
        self.runs_local_code = not options.login_host
        self.commands = self.site.commands
        self._task_function = task_function
        self._hydra_context = hydra_context
        self._sweep: SweepInfo | None = None
        self._sweep_payload: Path | None = None
        self._max_array_size: int | None = options.max_array_size
        self.accounting = SlurmAccounting(self.commands, options)

    # --- contract -------------------------------------------------------------------------------------
    @property
    def calls(self) -> Counter[str]:
        """Slurm command calls so far, by command name (``sbatch``, ``sacct``, ...)."""
        return self.commands.calls

    def stored_config(self) -> dict[str, Any]:
        """What ``status``/``pull``/``cancel`` need to rebuild this backend (no env values, no secrets;
        only settings keys: :func:`from_config` refuses any other)."""
        return {
            "poll_interval_s": self.options.poll_interval_s,
            "command_timeout_s": self.options.command_timeout_s,
            "timeout_min": self.options.timeout_min,
            "login_host": self.options.login_host,
            "ssh_config": self.options.ssh_config,
            "login_setup": self.options.login_setup,
        }

    def prepare(self, sweep: SweepInfo) -> None:
        """Create the launcher's dirs; with ``login_host`` also sync the code; run
        ``prepare_commands`` once, in the code dir."""
        self._sweep = sweep
        for d in (self.slurm_dir.parent, self.slurm_dir, self.slurm_dir / "logs"):  # payloads, scripts, logs
            _private_dir(d)
        self.site.prepare(sweep, _script_dirs(self._task_function, sweep.code_dir), self.options.dry_run)

    def _write_sweep_payload(self) -> Path:
        """The sweep payload as of now (content-addressed: requeued tasks of earlier batches keep
        theirs, and a batch that brought new config templates gets a new one)."""
        from launcher_core.runtime.worker import atomic_write_bytes

        assert self._sweep is not None, "prepare() first"
        data = sweep_payload_for(self._sweep, self._task_function)
        path = self.slurm_dir / f"sweep-{hashlib.sha256(data).hexdigest()[:16]}.pkl"
        if not path.exists():
            atomic_write_bytes(path, data)
        self._sweep_payload = path
        return path

    def resolve_resources(self, specs: Sequence[JobSpec]) -> None:
        """``resources_from``: each job's own values (checked, see ``options.RESOURCES``); whether
        the cluster can run each resource group is asked with ``sbatch --test-only`` at submission."""
        from launcher_core.backends.slurm.options import RESOURCES
        from launcher_core.resources import read_job_resources

        read_job_resources(specs, self.options.resources_from, RESOURCES)

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, SlurmHandle]:
        """One ``sbatch`` per chunk of at most MaxArraySize tasks, each submitted as soon as its
        job table and script are written (the first jobs start while later chunks are prepared);
        handles of every job submitted. With ``resources_from`` (one array per resource group)
        every script is written first and each group is tried with ``sbatch --test-only``: a
        group the cluster cannot run stops the launch with nothing submitted.

        If a later chunk cannot be submitted, :class:`SubmitError` carries the handles of the
        chunks that were (they run and are tracked; a relaunch submits only the rest).
        """
        if not jobs:
            return {}
        self._remove_stale_files(jobs)
        self._write_sweep_payload()
        chunks = self.plan_chunks(jobs)
        table = self._write_job_table(jobs, [s for c in chunks for s in c.specs])
        throttle = len(chunks) > 1 and sum(c.tasks for c in chunks) > self.options.array_parallelism
        written = self._write_all_and_test(chunks, table) if self.options.resources_from else {}
        handles: dict[str, SlurmHandle] = {}
        previous: str | None = None
        for chunk in chunks:
            try:
                script = written.get(chunk.number)
                if script is None:
                    script = self._write_chunk(chunk, table)
                    files = [self._sweep_payload, table, script] if chunk.number == 0 else [script]
                    dirs = [self._cluster_dirs(s)[1] for s in chunk.specs]
                    self.site.upload([f for f in files if f is not None], dirs)
                intent = self._record_intent(chunk)
                array_id = self._sbatch(
                    self._on_cluster(script),
                    after=previous if throttle else None,
                    dependency=self._waits_for(chunk),
                    name=intent.tag,
                )
            except LauncherError as exc:
                if not handles:
                    raise
                raise SubmitError(f"{exc}; {len(handles)} of {len(jobs)} jobs were submitted before", handles) from exc
            after_accepted_submission()  # test hook (a kill before the state store records the array)
            previous = array_id
            handles.update(_with_array_id(intent.handles, array_id))
        return handles

    def _record_intent(self, chunk: Chunk) -> SubmitIntent:
        """Record the chunk's array before ``sbatch`` (:mod:`launcher_core.intents`); its tag is the
        array's job name, ``<name>.hrl-<key>``, which sacct keeps for as long as it keeps the job."""
        handles = self._handles(chunk, "")
        key = self.intents.key_for(handles)
        intent = SubmitIntent(key, f"{self.options.name}.hrl-{key}", handles)
        self.intents.record(intent)
        return intent

    def accepted(self, intents: Sequence[SubmitIntent]) -> Mapping[str, SlurmHandle]:
        """The arrays of these intents Slurm accepted, found by job name in one ``sacct`` (one
        ``squeue`` where accounting does not answer): the handles of their jobs."""
        if not intents:
            return {}
        arrays = self.accounting.arrays_named([i.tag for i in intents], min(i.created_at for i in intents))
        found: dict[str, SlurmHandle] = {}
        for intent in intents:
            if intent.tag in arrays:
                found.update(_with_array_id(intent.handles, arrays[intent.tag]))
        return found

    def _write_all_and_test(self, chunks: Sequence[Chunk], table: Path) -> dict[int, Path]:
        """Write (and upload) every chunk's script, then ``sbatch --test-only`` the first array of
        each resource group: Slurm says whether the cluster has such nodes (GPUs, memory, time
        limit of the partition) without submitting anything."""
        written = {chunk.number: self._write_chunk(chunk, table) for chunk in chunks}
        files = [p for p in (self._sweep_payload, table, *written.values()) if p is not None]
        self.site.upload(files, [self._cluster_dirs(s)[1] for c in chunks for s in c.specs])
        tested: set[int] = set()
        for chunk in chunks:
            if chunk.group in tested:
                continue
            tested.add(chunk.group)
            proc = self.commands.run(["sbatch", "--test-only", self._on_cluster(written[chunk.number])])
            if proc.returncode != 0:
                jobs = [s for c in chunks if c.group == chunk.group for s in c.specs]
                raise ConfigError(_refused_group(chunk, jobs, proc.stderr.strip() or proc.stdout.strip(), len(chunks)))
        return written

    def poll(self, handles: Mapping[str, Handle]) -> Mapping[str, JobStatus]:
        """One ``sacct`` for all jobs (``squeue`` + exit files for what it does not know)."""
        if not handles:
            return {}
        from launcher_core.backends.slurm.sbatch import with_setup_reasons

        typed = SlurmHandle.typed(handles)
        # a job stopped by a failed module/setup line is named with that line (its setup_failed file)
        return with_setup_reasons(self.accounting.statuses(typed, self.site.exit_info), typed, self.site.read_log)

    def observe(self, handles: Mapping[str, dict[str, Any]]) -> Observation:
        """The poll (one ``sacct``), the load of the nodes running the jobs (one ``sinfo``), each
        running job's last stdout line (read in the shared sweep dir, or one session on the login
        node), and the GPUs of the nodes where our running tasks hold some: one ``scontrol`` per
        array with a running task and one ``srun --overlap`` step per such node, side by side in
        one script where Slurm's commands run (on the login node: one more session); see
        :mod:`.nodes`. A node whose step fails or times out shows without GPUs, with a note."""
        from launcher_core.machines import Observation

        before = Counter(self.commands.calls)
        sessions = self._sessions()
        self.site.before_poll(handles)
        try:
            seen = Observation(statuses=dict(self.poll(handles)))
        except Exception:
            self.site.nodes_and_tails({})  # what was to ride along with the poll must not ride later
            raise
        running = {j: handles[j] for j, st in seen.statuses.items() if st.state is JobState.RUNNING}
        nodes = {str(seen.statuses[j].host) for j in running if seen.statuses[j].host}
        loads, seen.jobs, allocated = self.site.nodes_and_tails(running)
        seen.hosts = {n: r for n, r in loads.items() if n in nodes}
        self._read_gpus(seen, running, allocated)
        seen.commands.update(Counter(self.commands.calls) - before)
        seen.commands.update(Counter(self._sessions()) - Counter(sessions))
        return seen

    def _read_gpus(self, seen: Observation, running: Mapping[str, Handle], allocated: TaskGpus) -> None:
        """Each node's GPUs into ``seen.hosts`` and the GPUs each running job's task holds
        (``allocated``: Slurm's word) into ``seen.jobs`` (its ``visible_gpus``: the rows' indices)."""
        from launcher_core.backends.slurm.nodes import read_node_gpus
        from launcher_core.machines import HostReading, JobReading

        where: dict[str, tuple[str, str]] = {}  # job -> (node, task)
        tasks: dict[str, list[str]] = {}
        for job_id, handle in running.items():
            node, task = seen.statuses[job_id].host, SlurmHandle.of(handle).slurm_job_id
            if node and task:
                where[job_id] = (node, task)
                if task not in tasks.setdefault(node, []):
                    tasks[node].append(task)
        found = read_node_gpus(self.commands, tasks, allocated)
        self.commands.calls.update(found.commands)
        for node in {*found.gpus, *found.notes}:
            reading = seen.hosts.setdefault(node, HostReading())
            reading.gpus, reading.note = found.gpus.get(node, []), found.notes.get(node)
        for job_id, place in where.items():
            held = found.held.get(place)
            if held:
                seen.jobs[job_id] = dataclasses.replace(seen.jobs.get(job_id) or JobReading(), visible_gpus=held)

    def _sessions(self) -> dict[str, int]:
        """SSH commands and logins to the login node so far (none on a shared file system)."""
        if not isinstance(self.site, LoginSite):
            return {}
        stats, label = self.site.conn.stats, self.site.conn.label
        return {f"ssh {label}": stats.commands, f"ssh login {label}": stats.masters_started}

    def fetch(
        self, jobs: Mapping[str, Handle], local_dirs: Mapping[str, Path], pull_filter: Any = None
    ) -> None:
        """Nothing on a shared file system; with ``login_host`` one rsync back (incremental)."""
        if jobs:
            self.site.fetch(SlurmHandle.typed(jobs), local_dirs, pull_filter)

    def retry_resources(self, spec: JobSpec, mem_factor: float) -> dict[str, Any]:
        """The next attempt of a job out of memory asks for ``mem_factor`` times its memory
        (``mem_gb``; the node's default memory is left alone when none was asked for)."""
        mem = spec.resources.get("mem_gb", self.options.mem_gb)
        if mem is None:
            return dict(spec.resources)
        return {**spec.resources, "mem_gb": math.ceil(float(mem) * mem_factor)}

    def cancel(self, handles: Mapping[str, Handle]) -> None:
        ids = sorted({h.slurm_job_id for h in SlurmHandle.typed(handles).values() if h.slurm_job_id})
        if not ids:
            return
        proc = self.commands.run(["scancel", *ids])
        if proc.returncode != 0:
            log.warning("scancel %s: %s", " ".join(ids[:10]), proc.stderr.strip())

    def withdraw(self, handles: Mapping[str, Handle]) -> set[str]:
        """Take back array tasks still pending: split them off their array's pending record, one
        ``scancel --state=PENDING`` (Slurm spares a task that started meanwhile), then one
        ``sacct`` per confirmation round (bounded) until each is known cancelled before it ever
        got a node; only those tasks' jobs are returned. A packed task goes only when all its
        jobs are asked for. Safe to repeat. Details: :mod:`.withdrawal`."""
        from launcher_core.backends.slurm.withdrawal import withdraw_tasks

        typed = SlurmHandle.typed(handles)
        return withdraw_tasks(self.commands, self.accounting, self.site.exit_info, typed) if typed else set()

    def close(self) -> None:
        self.site.close()

    def preflight(self, request: PreflightRequest) -> list[Check]:
        """One script where Slurm's commands run (partition, account/QoS, MaxArraySize,
        accounting, the jobs' Python): :mod:`.preflight`."""
        return check_site(self.options, self.site, request)

    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """With ``login_host``: delete the mirrored job files on the login node. Without it the
        cluster wrote into the local sweep dir itself: there is no other copy to delete."""
        from launcher_core.backends.base import CleanReport

        if isinstance(self.site, LoginSite):
            return self.site.clean(request)
        return CleanReport(nothing_to_clean="slurm on a shared file system: the sweep dir is the only copy")

    def list_files(self, handles: Mapping[str, Handle]) -> Mapping[str, list[tuple[str, int]]] | None:
        """With ``login_host``: the mirrored job dirs on the login node (one ``rsync --list-only``).
        On a shared file system the sweep dir is the only copy: nothing to list elsewhere."""
        if not isinstance(self.site, LoginSite):
            return None
        from launcher_core.remote.workspace import list_job_files

        return list_job_files(self.site.conn, SlurmHandle.typed(handles))

    def read_log(self, handle: Handle, stream: str, offset: int = 0) -> bytes:
        """Live bytes of a job's stdout/stderr from ``offset`` on (none for a job with no handle)."""
        if not handle:
            return b""
        return self.site.read_log(SlurmHandle.of(handle), STDOUT_FILE if stream == "stdout" else STDERR_FILE, offset)

    # --- scripts --------------------------------------------------------------------------------------
    @property
    def slurm_dir(self) -> Path:
        if self._sweep is None:
            raise BackendError("SlurmBackend.prepare() was not called")
        return self._sweep.sweep_dir / LAUNCHER_DIR / SLURM_DIR

    def _on_cluster(self, local_path: Path) -> str:
        """Where a file of the local sweep dir is on the cluster."""
        assert self._sweep is not None
        rel = local_path.relative_to(self._sweep.sweep_dir).as_posix()
        return f"{self.site.sweep_dir}/{rel}"

    def _cluster_dirs(self, spec: JobSpec) -> tuple[str, str]:
        """(job output dir, job launcher dir) on the cluster."""
        job_dir, _rel = self.site.cluster_job_dir(spec)
        return job_dir, f"{job_dir}/{LAUNCHER_DIR}"

    def max_array_size(self) -> int:
        if self._max_array_size is None and self.options.dry_run and self.options.login_host:
            log.warning(
                "dry run: not connecting to %s, assuming MaxArraySize=%d (set hydra.launcher.max_array_size "
                "to the cluster's for the exact chunks)",
                self.options.login_host,
                DEFAULT_MAX_ARRAY_SIZE,
            )
            self._max_array_size = DEFAULT_MAX_ARRAY_SIZE
        if self._max_array_size is None:
            try:
                self._max_array_size = read_max_array_size(self.commands)
            except BackendError:
                if not self.options.dry_run:
                    raise
                log.warning("dry run: cannot ask Slurm for MaxArraySize, assuming %d", DEFAULT_MAX_ARRAY_SIZE)
                self._max_array_size = DEFAULT_MAX_ARRAY_SIZE
        return self._max_array_size

    def jobs_per_task(self, n_jobs: int) -> int:
        """``jobs_per_task``, with ``auto`` worked out from ``expected_job_s``: as many jobs as fill
        ``PACK_TARGET_S`` of one task, but never so many that fewer than ``array_parallelism``
        tasks remain (packing must not cost parallelism)."""
        value = self.options.jobs_per_task
        if value != "auto":
            return int(value)
        expected = float(self.options.expected_job_s or 0)
        by_time = int(PACK_TARGET_S // expected) if expected > 0 else 1
        by_parallelism = -(-n_jobs // self.options.array_parallelism)
        return max(1, min(by_time, by_parallelism))

    def plan_chunks(self, jobs: Sequence[JobSpec]) -> list[Chunk]:
        """The arrays: one resource group (``resources_from``; all jobs without it) after the
        other, each split at MaxArraySize."""
        if self.options.resources_from:
            from launcher_core.resources import resource_groups

            groups = resource_groups(jobs)
        else:
            groups = [({}, list(jobs))]
        return plan_grouped_chunks(groups, self.max_array_size(), self.jobs_per_task)

    def write_scripts(self, jobs: Sequence[JobSpec]) -> list[tuple[Chunk, Path]]:
        """Write every chunk's job table and sbatch script (cluster paths); submit nothing."""
        self._write_sweep_payload()
        chunks = self.plan_chunks(jobs)
        table = self._write_job_table(jobs, [s for c in chunks for s in c.specs])
        return [(chunk, self._write_chunk(chunk, table)) for chunk in chunks]

    def _write_job_table(self, jobs: Sequence[JobSpec], order: Sequence[JobSpec]) -> Path:
        """One job table for the jobs submitted now (``jobs<first>-<last>.json``: each job's number,
        overrides and result path, a few hundred bytes each), in ``order`` (resource group after
        group: each array's jobs are consecutive entries); each job composes its own config from
        its entry where it runs, so nothing is written into the job dirs before submission."""
        from launcher_core.runtime.worker import atomic_write_bytes, job_table_bytes

        # a retry gets its own table: requeued tasks of the first submission read theirs at start
        attempt = max(j.attempt for j in jobs)
        suffix = f".attempt{attempt}" if attempt > 1 else ""
        table = self.slurm_dir / f"jobs{jobs[0].idx}-{jobs[-1].idx}{suffix}.json"
        atomic_write_bytes(table, job_table_bytes([self._job_entry(s) for s in order]))
        return table

    def _write_chunk(self, chunk: Chunk, table: Path) -> Path:
        """The chunk's sbatch script (``<name>.sbatch``): one file for up to MaxArraySize x
        jobs_per_task jobs, whose tasks run their entries of ``table``."""
        from launcher_core.runtime.worker import atomic_write_bytes

        assert self._sweep is not None and self._sweep_payload is not None, "_write_sweep_payload() first"
        options = self.options.for_resources(chunk.resources)
        argv = job_argv(
            options,
            self._on_cluster(self._sweep_payload),
            self._on_cluster(table),
            self._binds(chunk.specs),
            self.site.default_python,
            self.site.worker_module,
            chunk.jobs_per_task,
        )
        text = render_script(
            options=options,
            chunk=chunk,
            sweep_id=self._sweep.sweep_id,
            code_dir=self.site.code_dir,
            log_dir=self._on_cluster(self.slurm_dir / "logs"),
            launcher_dirs=self._task_dirs(chunk),
            argv=argv,
            pythonpath=self.site.pythonpath,
            job_env=self.site.job_env,
            template_vars={
                "job_table": self._on_cluster(table),
                "sweep_payload": self._on_cluster(self._sweep_payload),
            },
        )
        path = self.slurm_dir / chunk.script_name
        atomic_write_bytes(path, text.encode(), mode=0o600)  # may hold `env` values: owner-only
        return path

    def _task_dirs(self, chunk: Chunk) -> list[str]:
        """The launcher dir of each array task: the job's own, or a task dir for a packed task
        (its jobs write their own files into their own launcher dirs)."""
        if chunk.jobs_per_task == 1:
            return [self._cluster_dirs(s)[1] for s in chunk.specs]
        tasks = self._on_cluster(self.slurm_dir / TASKS_DIR)
        return [f"{tasks}/{chunk.name}.{i}" for i in range(chunk.tasks)]

    def _job_entry(self, spec: JobSpec) -> dict[str, Any]:
        from launcher_core.runtime.worker import job_entry

        job_dir, rel = self.site.cluster_job_dir(spec)
        result = f"{job_dir}/{LAUNCHER_DIR}/{RESULT_FILE}"
        if isinstance(self.site, LoginSite):  # the config is relocated to the mirrored sweep dir
            return job_entry(spec.idx, spec.overrides, result, self.site.sweep_dir, rel, attempt=spec.attempt)
        return job_entry(spec.idx, spec.overrides, result, attempt=spec.attempt)

    def dry_run(self, specs: Sequence[JobSpec]) -> dict[str, Any]:
        """``dry_run=true``: write the job tables and sbatch scripts into the sweep dir, submit
        nothing; per job the script and array index that would run it."""
        chunks = self.write_scripts(specs)
        host = self.options.login_host
        where = f" (with the paths on {host}; nothing was copied there)" if host else ""
        packed = chunks[0][0].jobs_per_task if chunks else 1
        log.info(
            "dry run: %d sbatch scripts for %d jobs%s written to %s%s; nothing was submitted. "
            "Submit one with `sbatch %s`.",
            len(chunks),
            len(specs),
            f" ({packed} per array task)" if packed > 1 else "",
            self.slurm_dir,
            where,
            chunks[0][1] if chunks else "SCRIPT",
        )
        if self.options.sbatch_template:
            log.info("dry run: scripts rendered with hydra.launcher.sbatch_template=%s", self.options.sbatch_template)
        for line in _group_lines([c for c, _path in chunks]):
            log.info("dry run: %s", line)
        return {
            spec.job_id: DryRunResult(
                str(script), chunk.task_of(i), str(spec.output_dir), resource_text(chunk.resources)
            )
            for chunk, script in chunks
            for i, spec in enumerate(chunk.specs)
        }

    def _remove_stale_files(self, jobs: Sequence[JobSpec]) -> None:
        """Results and exit files of an earlier attempt of these jobs must not be read as this
        one's (only where a job dir exists: a new sweep's jobs have none yet). With ``login_host``
        these are the local copies pulled before; the upload removes the login node's."""
        for spec in jobs:
            ldir = spec.launcher_dir
            if not ldir.is_dir():
                continue
            for stale in (RESULT_FILE, EXIT_FILE, TIMEOUTS_FILE):
                (ldir / stale).unlink(missing_ok=True)
            shutil.rmtree(ldir / RANKS_DIR, ignore_errors=True)

    def _binds(self, jobs: Sequence[JobSpec]) -> list[str]:
        """Container binds: code dir, sweep dir, the script dirs and any job dir outside the sweep."""
        paths = [self.site.code_dir, self.site.sweep_dir, *self.site.pythonpath]
        paths += [self._cluster_dirs(s)[0] for s in jobs]
        return job_binds(p for p in paths if p)

    def _waits_for(self, chunk: Chunk) -> str | None:
        """The chunk's own ``--dependency`` (``dependency`` and ``dependency_file``; see
        :mod:`.dependencies`), or None."""
        from launcher_core.backends.slurm.dependencies import chunk_dependency

        return chunk_dependency(self.options, chunk)

    def _sbatch(
        self, script: str, after: str | None = None, dependency: str | None = None, name: str | None = None
    ) -> str:
        argv = ["sbatch", "--parsable"]
        conditions = [f"afterany:{after}"] if after else []
        if dependency:  # a job whose dependency can never be met is cancelled, not left pending forever
            conditions.append(dependency)
            argv.append("--kill-on-invalid-dep=yes")
        if conditions:
            argv.append(f"--dependency={','.join(conditions)}")
        if name:  # the submission intent's tag (overrides the script's own --job-name)
            argv.append(f"--job-name={name}")
        proc = self.commands.run([*argv, script])
        array_id = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 or not array_id.isdigit():
            raise BackendError(f"sbatch {script} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return array_id

    def _handles(self, chunk: Chunk, array_id: str) -> dict[str, SlurmHandle]:
        now = time.time()
        out = {}
        for i, spec in enumerate(chunk.specs):
            job_dir, rel = self.site.cluster_job_dir(spec)
            task = chunk.task_of(i)
            mirror: dict[str, Any] = {}
            if self.options.login_host:  # what fetch and localize_result need
                mirror = dict(
                    login_host=self.options.login_host,
                    rel=rel,
                    remote_sweep_dir=self.site.sweep_dir,
                    remote_job_dir=job_dir,
                    remote_cwd=self.site.code_dir,
                    local_cwd=str(self._sweep.code_dir) if self._sweep else None,
                    local_sweep_dir=str(self._sweep.sweep_dir) if self._sweep else None,
                )
            out[spec.job_id] = SlurmHandle(
                slurm_job_id=f"{array_id}_{task}",
                array_job_id=array_id,
                array_index=task,
                chunk_offset=chunk.offset,
                launcher_dir=f"{job_dir}/{LAUNCHER_DIR}",
                submitted_at=now,
                timeout_min=self.options.for_resources(chunk.resources).timeout_min,
                # its state comes from its own exit file, the task's from sacct; the number of
                # jobs its task runs (a chunk's last task may run fewer) says when a withdrawal
                # asks for all of them
                packed=chunk.jobs_in_task(task) if chunk.jobs_per_task > 1 else None,
                **mirror,
            )
        return out


def _with_array_id(handles: Mapping[str, Handle], array_id: str) -> dict[str, SlurmHandle]:
    """The handles of a chunk's jobs (made before ``sbatch``, or read back from their intent) with
    the array's id filled in."""
    out = {}
    for job_id, h in handles.items():
        handle = SlurmHandle.of(h)
        out[job_id] = dataclasses.replace(
            handle, slurm_job_id=f"{array_id}_{handle.array_index}", array_job_id=array_id
        )
    return out


def _private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) and make it owner-only: it holds payloads, results or logs."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _script_dirs(task_function: Any, code_dir: Path) -> list[str]:
    """The dir of the app's main script when the task function lives there and it is not the code
    dir: the function is pickled by value, but the modules it imports from beside it must import."""
    if getattr(task_function, "__module__", None) != "__main__":
        return []
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main or not os.path.isfile(main):
        return []
    script_dir = os.path.dirname(os.path.abspath(main))
    return [] if Path(script_dir) == Path(code_dir) else [script_dir]


def from_config(config: Mapping[str, Any]) -> SlurmBackend:
    """A backend that polls, cancels and reads logs of a sweep's jobs from another process
    (``status``, ``pull``, ``cancel``); it cannot submit (it has no task function)."""
    return SlurmBackend(SlurmOptions.from_params(config))


@dataclass(frozen=True)
class DryRunResult:
    """Return value of a job in a dry run: the script and array index that would run it (and its
    resources from ``resources_from``, if any)."""

    script: str
    array_index: int
    output_dir: str
    resources: str = ""

    def __str__(self) -> str:
        extra = f" with {self.resources}" if self.resources else ""
        return f"<dry run: array index {self.array_index} of {self.script}{extra} -> {self.output_dir}>"


def _group_lines(chunks: Sequence[Chunk]) -> list[str]:
    """One line per resource group (``resources_from``): its resources, jobs and scripts."""
    groups: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        if chunk.resources:
            groups.setdefault(chunk.group, []).append(chunk)
    lines = []
    for number, members in groups.items():
        jobs = [s.idx for c in members for s in c.specs]
        lines.append(
            f"resource group {number + 1} ({resource_text(members[0].resources)}): {len(jobs)} jobs "
            f"({_job_numbers(jobs)}) in {', '.join(c.script_name for c in members)}"
        )
    return lines


def _job_numbers(nums: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(f"#{n}" for n in nums[:limit])
    return shown + (f", ... ({len(nums) - limit} more)" if len(nums) > limit else "")


def _refused_group(chunk: Chunk, jobs: Sequence[JobSpec], answer: str, n_chunks: int) -> str:
    first = jobs[0]
    return (
        f"hydra.launcher.resources_from: Slurm cannot run the jobs asking for {resource_text(chunk.resources)} "
        f"(jobs {_job_numbers([s.idx for s in jobs])}; the first is #{first.idx}: "
        f"{' '.join(first.overrides) or 'no overrides'}): sbatch --test-only says: {answer}. "
        f"None of the {n_chunks} arrays was submitted; change those jobs' config values or the cluster settings."
    )
