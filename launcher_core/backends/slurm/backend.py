"""The ``slurm`` backend: prepares a sweep, writes and submits its sbatch scripts, polls, fetches,
cancels and cleans through the site (:mod:`.sites`); design: docs/slurm.md."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Backend, CleanReport, CleanRequest
from launcher_core.backends.slurm.accounting import (
    DEFAULT_MAX_ARRAY_SIZE,
    SlurmAccounting,
    read_max_array_size,
)
from launcher_core.backends.slurm.options import SlurmOptions
from launcher_core.backends.slurm.sbatch import (
    EXIT_FILE,
    JOB_PAYLOAD_FILE,
    RANKS_DIR,
    SLURM_DIR,
    TIMEOUTS_FILE,
    Chunk,
    job_argv,
    plan_chunks,
    render_script,
)
from launcher_core.backends.slurm.sites import LocalSite, LoginSite
from launcher_core.container import job_binds
from launcher_core.errors import BackendError, SubmitError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, STDERR_FILE, STDOUT_FILE, JobSpec, JobStatus, SweepInfo

if TYPE_CHECKING:
    from launcher_core.preflight import Check, PreflightRequest

log = logging.getLogger("launcher_core.slurm")


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
        """Write the sweep payload (content-addressed: requeued tasks of earlier batches keep theirs);
        with ``login_host`` also sync the code; run ``prepare_commands`` once, in the code dir."""
        from launcher_core.runtime.worker import atomic_write_bytes, sweep_payload_bytes

        self._sweep = sweep
        for d in (self.slurm_dir.parent, self.slurm_dir, self.slurm_dir / "logs"):  # payloads, scripts, logs
            _private_dir(d)
        data = sweep_payload_bytes(self._task_function, self._hydra_context)
        path = self.slurm_dir / f"sweep-{hashlib.sha256(data).hexdigest()[:16]}.pkl"
        if not path.exists():
            atomic_write_bytes(path, data)
        self._sweep_payload = path
        self.site.prepare(sweep, _script_dirs(self._task_function, sweep.code_dir), self.options.dry_run)

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, dict[str, Any]]:
        """One ``sbatch`` per chunk of at most MaxArraySize jobs; handles of every job submitted.

        If a later chunk cannot be submitted, :class:`SubmitError` carries the handles of the
        chunks that were (they run and are tracked; a relaunch submits only the rest).
        """
        if not jobs:
            return {}
        chunks = self.write_scripts(jobs)
        files = [self._sweep_payload, *(p for _c, p in chunks), *(s.launcher_dir / JOB_PAYLOAD_FILE for s in jobs)]
        self.site.upload([f for f in files if f is not None], [self._cluster_dirs(s)[1] for s in jobs])
        throttle = len(chunks) > 1 and len(jobs) > self.options.array_parallelism
        handles: dict[str, dict[str, Any]] = {}
        previous: str | None = None
        for chunk, script in chunks:
            try:
                array_id = self._sbatch(self._on_cluster(script), after=previous if throttle else None)
            except BackendError as exc:
                if not handles:
                    raise
                raise SubmitError(f"{exc}; {len(handles)} of {len(jobs)} jobs were submitted before", handles) from exc
            previous = array_id
            handles.update(self._handles(chunk, array_id))
        return handles

    def poll(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, JobStatus]:
        """One ``sacct`` for all jobs (``squeue`` + exit files for what it does not know)."""
        if not handles:
            return {}
        return self.accounting.statuses(handles, self.site.exit_info)

    def fetch(
        self, jobs: Mapping[str, dict[str, Any]], local_dirs: Mapping[str, Path], pull_filter: Any = None
    ) -> None:
        """Nothing on a shared file system; with ``login_host`` one rsync back (incremental)."""
        if jobs:
            self.site.fetch(jobs, local_dirs, pull_filter)

    def cancel(self, handles: Mapping[str, dict[str, Any]]) -> None:
        ids = sorted({str(h["slurm_job_id"]) for h in handles.values() if h and h.get("slurm_job_id")})
        if not ids:
            return
        proc = self.commands.run(["scancel", *ids])
        if proc.returncode != 0:
            log.warning("scancel %s: %s", " ".join(ids[:10]), proc.stderr.strip())

    def close(self) -> None:
        self.site.close()

    def preflight(self, request: PreflightRequest) -> list[Check]:
        """One script where Slurm's commands run (partition, account/QoS, MaxArraySize,
        accounting, the jobs' Python): :mod:`.preflight`."""
        from launcher_core.backends.slurm.preflight import preflight

        return preflight(self, request)

    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """With ``login_host``: delete the mirrored job files on the login node. Without it the
        cluster wrote into the local sweep dir itself: there is no other copy to delete."""
        from launcher_core.backends.base import CleanReport

        if isinstance(self.site, LoginSite):
            return self.site.clean(request)
        return CleanReport(nothing_to_clean="slurm on a shared file system: the sweep dir is the only copy")

    def list_files(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, list[tuple[str, int]]] | None:
        """With ``login_host``: the mirrored job dirs on the login node (one ``rsync --list-only``).
        On a shared file system the sweep dir is the only copy: nothing to list elsewhere."""
        if not isinstance(self.site, LoginSite):
            return None
        from launcher_core.remote.workspace import list_job_files

        return list_job_files(self.site.conn, handles)

    def read_log(self, handle: Mapping[str, Any], stream: str, offset: int = 0) -> bytes:
        """Live bytes of a job's stdout/stderr from ``offset`` on."""
        return self.site.read_log(handle, STDOUT_FILE if stream == "stdout" else STDERR_FILE, offset)

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

    def write_scripts(self, jobs: Sequence[JobSpec]) -> list[tuple[Chunk, Path]]:
        """Write every job payload and one sbatch script per chunk (cluster paths); submit nothing."""
        from launcher_core.runtime.worker import atomic_write_bytes

        assert self._sweep is not None and self._sweep_payload is not None, "prepare() first"
        for spec in jobs:
            self._write_job_payload(spec, atomic_write_bytes)
        argv = job_argv(
            self.options,
            self._on_cluster(self._sweep_payload),
            self._binds(jobs),
            self.site.default_python,
            self.site.worker_module,
        )
        out = []
        for chunk in plan_chunks(jobs, self.max_array_size()):
            text = render_script(
                options=self.options,
                chunk=chunk,
                sweep_id=self._sweep.sweep_id,
                code_dir=self.site.code_dir,
                log_dir=self._on_cluster(self.slurm_dir / "logs"),
                launcher_dirs=[self._cluster_dirs(s)[1] for s in chunk.specs],
                argv=argv,
                pythonpath=self.site.pythonpath,
                job_env=self.site.job_env,
            )
            path = self.slurm_dir / chunk.script_name
            atomic_write_bytes(path, text.encode(), mode=0o600)  # may hold `env` values: owner-only
            out.append((chunk, path))
        return out

    def dry_run(self, specs: Sequence[JobSpec]) -> dict[str, Any]:
        """``dry_run=true``: write payloads and sbatch scripts into the sweep dir, submit nothing;
        per job the script and array index that would run it."""
        chunks = self.write_scripts(specs)
        host = self.options.login_host
        where = f" (with the paths on {host}; nothing was copied there)" if host else ""
        log.info(
            "dry run: %d sbatch scripts for %d jobs written to %s%s; nothing was submitted. "
            "Submit one with `sbatch %s`.",
            len(chunks),
            len(specs),
            self.slurm_dir,
            where,
            chunks[0][1] if chunks else "SCRIPT",
        )
        return {
            spec.job_id: DryRunResult(str(script), i, str(spec.output_dir))
            for chunk, script in chunks
            for i, spec in enumerate(chunk.specs)
        }

    def _write_job_payload(self, spec: JobSpec, write: Any) -> None:
        from launcher_core.runtime.worker import job_payload_bytes

        ldir = spec.launcher_dir
        _private_dir(ldir)
        for stale in (RESULT_FILE, EXIT_FILE, TIMEOUTS_FILE):  # from an earlier attempt of this job
            (ldir / stale).unlink(missing_ok=True)
        shutil.rmtree(ldir / RANKS_DIR, ignore_errors=True)
        job_dir, rel = self.site.cluster_job_dir(spec)
        with self.site.job_config(spec, job_dir, rel) as cfg:
            data = job_payload_bytes(cfg, spec.idx, f"{job_dir}/{LAUNCHER_DIR}/{RESULT_FILE}")
        spec.release_config()  # it is in the payload now: do not hold thousands of configs
        write(ldir / JOB_PAYLOAD_FILE, data)

    def _binds(self, jobs: Sequence[JobSpec]) -> list[str]:
        """Container binds: code dir, sweep dir, the script dirs and any job dir outside the sweep."""
        paths = [self.site.code_dir, self.site.sweep_dir, *self.site.pythonpath]
        paths += [self._cluster_dirs(s)[0] for s in jobs]
        return job_binds(p for p in paths if p)

    def _sbatch(self, script: str, after: str | None = None) -> str:
        argv = ["sbatch", "--parsable"]
        if after:
            argv.append(f"--dependency=afterany:{after}")
        proc = self.commands.run([*argv, script])
        array_id = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 or not array_id.isdigit():
            raise BackendError(f"sbatch {script} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return array_id

    def _handles(self, chunk: Chunk, array_id: str) -> dict[str, dict[str, Any]]:
        now = time.time()
        out = {}
        for i, spec in enumerate(chunk.specs):
            job_dir, rel = self.site.cluster_job_dir(spec)
            handle: dict[str, Any] = {
                "slurm_job_id": f"{array_id}_{i}",
                "array_job_id": array_id,
                "array_index": i,
                "chunk_offset": chunk.offset,
                "launcher_dir": f"{job_dir}/{LAUNCHER_DIR}",
                "submitted_at": now,
                "timeout_min": self.options.timeout_min,
            }
            if self.options.login_host:  # what fetch and localize_result need
                handle.update(
                    login_host=self.options.login_host,
                    rel=rel,
                    remote_sweep_dir=self.site.sweep_dir,
                    remote_job_dir=job_dir,
                    remote_cwd=self.site.code_dir,
                    local_cwd=str(self._sweep.code_dir) if self._sweep else None,
                    local_sweep_dir=str(self._sweep.sweep_dir) if self._sweep else None,
                )
            out[spec.job_id] = handle
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
    """Return value of a job in a dry run: the script and array index that would run it."""

    script: str
    array_index: int
    output_dir: str

    def __str__(self) -> str:
        return f"<dry run: array index {self.array_index} of {self.script} -> {self.output_dir}>"
