"""The backend: each job a detached process group running the job-side worker, its output dir in
``remote_dir`` (the "other machine") until fetched.

Layout under ``remote_dir``, one dir per sweep (``<sweep id>/``): ``SWEEP_ID`` (the claim: clean
deletes only a dir that names its sweep), ``payloads/`` (sweep payloads and job tables, as
:func:`launcher_core.backends.base.sweep_payload_for` and
:func:`launcher_core.runtime.worker.job_table_bytes` make them) and ``sweep/<subdir>/`` (each
job's output dir, ``.launcher/`` with its logs, result and exit file).

A job is started by a short-lived ``sh`` in a new session that puts the job's own ``sh`` in the
background and prints its PID: the job is nobody's child here (the launching process may end at
any time), its process group is that session's, and its ``sh`` writes the worker's exit code to
``.launcher/toy_exit`` when it ends. Handles hold that PID, its start time (a reused PID is not
the job) and the group, so any process can poll, cancel or fetch the job from them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hrl_toy_backend.settings import NAME, ToySettings
from launcher_core.backends.base import Backend, CleanReport, CleanRequest, sweep_payload_for
from launcher_core.errors import BackendError
from launcher_core.jobs import (
    LAUNCHER_DIR,
    RESULT_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    JobSpec,
    JobState,
    JobStatus,
    PullFilter,
    SweepInfo,
)
from launcher_core.remote.paths import check_root, confined
from launcher_core.remote.workspace import localize_result
from launcher_core.runtime.files import atomic_write_bytes
from launcher_core.runtime.procs import kill_group_blocking, process_start_time
from launcher_core.runtime.worker import CODE_SNAPSHOT_ENV, failure_summary, job_entry, job_table_bytes

log = logging.getLogger("hrl_toy_backend")

CLAIM_FILE = "SWEEP_ID"
PAYLOADS = "payloads"
JOBS = "sweep"
EXIT_FILE = "toy_exit"
CANCELLED_FILE = "toy_cancelled"
WORKER = "launcher_core.runtime.worker"

# the job: $1 its launcher dir, then the worker's argv; the exit code lands in EXIT_FILE atomically
JOB_SCRIPT = f"""dir=$1; shift
"$@" >"$dir/{STDOUT_FILE}" 2>"$dir/{STDERR_FILE}" </dev/null
code=$?
printf '%s\\n' "$code" >"$dir/.{EXIT_FILE}.tmp" && mv -f "$dir/.{EXIT_FILE}.tmp" "$dir/{EXIT_FILE}"
"""
# run in a new session: the job in the background (its own stdio away from our pipe), its PID out
START_SCRIPT = 'sh -c "$0" toy-job "$@" </dev/null >/dev/null 2>&1 & echo "$!"'


class ToyBackend(Backend):
    name = NAME
    detached = True  # jobs run on without the launching process
    runs_local_code = True  # jobs import this machine's code (its frozen snapshot)

    def __init__(self, settings: ToySettings, *, task_function: Any = None) -> None:
        self.settings = settings
        self.poll_interval_s = settings.poll_interval_s
        self.root = Path(str(settings.remote_dir))
        self._task_function = task_function
        self._sweep: SweepInfo | None = None
        self._env: dict[str, str] = {}

    # --- required ---------------------------------------------------------------------------------
    def prepare(self, sweep: SweepInfo) -> None:
        """The sweep's dir under ``remote_dir``, claimed for it; the jobs' environment."""
        self._sweep = sweep
        base = self._sweep_root(sweep.sweep_id)
        for sub in (PAYLOADS, JOBS):
            (base / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        claim = base / CLAIM_FILE
        if claim.exists() and claim.read_text().strip() != sweep.sweep_id:
            raise BackendError(f"{base} is claimed by sweep {claim.read_text().strip()!r}")
        atomic_write_bytes(claim, f"{sweep.sweep_id}\n".encode())
        self._env = _job_env(sweep, self._task_function)

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, dict[str, Any]]:
        """One payload and job table for the batch, then each job started detached."""
        if not jobs:
            return {}
        sweep = self._prepared()
        base = self._sweep_root(sweep.sweep_id)
        entries = [self._entry(spec) for spec in jobs]
        payload = _content_addressed(base / PAYLOADS, "sweep", ".pkl", sweep_payload_for(sweep, self._task_function))
        table = _content_addressed(base / PAYLOADS, "jobs", ".json", job_table_bytes(entries))
        handles = {}
        for i, spec in enumerate(jobs):
            handles[spec.job_id] = self._start(spec, [str(payload), str(table), str(i)])
        return handles

    def poll(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, JobStatus]:
        return {job_id: _status(handle) for job_id, handle in handles.items()}

    def fetch(
        self, jobs: Mapping[str, dict[str, Any]], local_dirs: Mapping[str, Path], pull_filter: PullFilter | None = None
    ) -> None:
        """Copy each job's remote dir into its local output dir (changed files only, each one
        atomically), then point the result at the local paths."""
        for job_id, handle in jobs.items():
            src, dst = Path(handle["remote_job_dir"]), Path(local_dirs[job_id])
            if not src.is_dir():
                log.warning("job %s: its remote dir %s is gone", job_id, src)
                continue
            for rel, size in sorted(_files_under(src).items()):
                if not _skipped(rel, size, pull_filter):
                    _copy_if_changed(src / rel, dst / rel)
            localize_result(dst / LAUNCHER_DIR / RESULT_FILE, handle, dst)

    def cancel(self, handles: Mapping[str, dict[str, Any]]) -> None:
        """Mark each unfinished job cancelled, then kill its process group (TERM, then KILL)."""
        for handle in handles.values():
            if not handle.get("remote_job_dir"):
                continue
            ldir = Path(handle["remote_job_dir"]) / LAUNCHER_DIR
            if ldir.is_dir() and not (ldir / EXIT_FILE).exists():
                atomic_write_bytes(ldir / CANCELLED_FILE, b"cancelled\n")
            if _alive(handle):
                kill_group_blocking(int(handle["pgid"]), self.settings.kill_grace_s)

    # --- optional -----------------------------------------------------------------------------------
    def stored_config(self) -> dict[str, Any]:
        return self.settings.stored()

    def read_log(self, handle: Mapping[str, Any], stream: str, offset: int = 0) -> bytes | None:
        name = STDOUT_FILE if stream == "stdout" else STDERR_FILE
        try:
            with open(Path(handle["remote_job_dir"]) / LAUNCHER_DIR / name, "rb") as f:
                f.seek(offset)
                return f.read()
        except (OSError, KeyError):
            return b""

    def list_files(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, list[tuple[str, int]]]:
        return {j: sorted(_files_under(Path(h["remote_job_dir"])).items()) for j, h in handles.items()}

    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """Delete the remote dirs of the given jobs (and with ``sweep_handles`` the sweep's whole
        remote dir), every path checked to be inside this sweep's remote dir first."""
        report = CleanReport()
        root = check_root(str(self.root), "hydra.launcher.remote_dir")
        base = confined(f"{root}/{request.sweep_id}", root, "the sweep's remote dir")
        dirs = {
            job_id: confined(handle.get("remote_job_dir"), f"{base}/{JOBS}", f"the remote dir of job {job_id}")
            for job_id, handle in request.handles.items()
        }
        location = f"remote_dir {root}"
        for path in dirs.values():
            report.add_target(location, path)
        if request.sweep_handles is not None:
            report.add_target(location, base)
        report.jobs[location] = len(dirs)
        if request.dry_run:
            return report
        claimed = _read_text(Path(base) / CLAIM_FILE)
        if Path(base).exists() and claimed != request.sweep_id:
            report.notes.append(f"{base} kept: it is claimed by {claimed or 'no sweep'}, not {request.sweep_id}")
            return report
        for job_id, path in dirs.items():
            if _remove(path, report):
                report.cleaned.add(job_id)
        if request.sweep_handles is not None and not report.errors:
            report.sweep_cleaned = _remove(base, report)
        return report

    # --- internals ----------------------------------------------------------------------------------
    def _prepared(self) -> SweepInfo:
        if self._sweep is None:
            raise BackendError("ToyBackend.prepare() was not called")
        return self._sweep

    def _sweep_root(self, sweep_id: str) -> Path:
        return self.root / sweep_id

    def _rel(self, spec: JobSpec) -> str:
        """The job's output dir relative to the sweep dir (Hydra's subdir)."""
        try:
            rel = spec.output_dir.relative_to(self._prepared().sweep_dir).as_posix()
        except ValueError:
            rel = ""
        return rel if rel not in ("", ".") else f"job-{spec.job_id}"

    def _remote_job_dir(self, spec: JobSpec) -> Path:
        return self._sweep_root(self._prepared().sweep_id) / JOBS / self._rel(spec)

    def _entry(self, spec: JobSpec) -> dict[str, Any]:
        """The job's job-table entry: its config relocated to the remote sweep dir."""
        remote_sweep = self._sweep_root(self._prepared().sweep_id) / JOBS
        result = self._remote_job_dir(spec) / LAUNCHER_DIR / RESULT_FILE
        return job_entry(spec.idx, spec.overrides, str(result), str(remote_sweep), self._rel(spec))

    def _start(self, spec: JobSpec, worker_args: list[str]) -> dict[str, Any]:
        """Start one job detached; its handle."""
        sweep = self._prepared()
        job_dir = self._remote_job_dir(spec)
        ldir = job_dir / LAUNCHER_DIR
        ldir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in (EXIT_FILE, CANCELLED_FILE, RESULT_FILE):  # of an earlier attempt of this job
            (ldir / stale).unlink(missing_ok=True)
        python = self.settings.python or sys.executable
        argv = ["sh", "-c", START_SCRIPT, JOB_SCRIPT, str(ldir), python, "-m", WORKER, *worker_args]
        proc = subprocess.run(
            argv, cwd=sweep.code_dir, env=self._env, capture_output=True, text=True, start_new_session=True, timeout=60
        )
        pid_text = proc.stdout.strip()
        if proc.returncode != 0 or not pid_text.isdigit():
            raise BackendError(f"job #{spec.idx}: could not start it ({proc.returncode}): {proc.stderr.strip()}")
        pid = int(pid_text)
        return {
            "pid": pid,
            "start": process_start_time(pid),
            "pgid": _process_group(pid),
            "remote_job_dir": str(job_dir),
            "remote_sweep_dir": str(self._sweep_root(sweep.sweep_id) / JOBS),
            "rel": self._rel(spec),
            "local_sweep_dir": str(sweep.sweep_dir),
        }


def from_config(config: Mapping[str, Any]) -> ToyBackend:
    """The backend of another process (the pull daemon, ``status``, ``cancel``): it polls,
    fetches, cancels and cleans from the handles; it cannot submit (no task function)."""
    return ToyBackend(ToySettings.from_mapping(config))


# --- jobs ----------------------------------------------------------------------------------------------
def _job_env(sweep: SweepInfo, task_function: Any) -> dict[str, str]:
    """This process's environment, plus the frozen code to import from and the app script's dir."""
    env = dict(os.environ)
    env.pop(CODE_SNAPSHOT_ENV, None)
    if sweep.code_snapshot is not None:
        env[CODE_SNAPSHOT_ENV] = json.dumps([str(sweep.code_dir), str(sweep.code_snapshot)])
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if getattr(task_function, "__module__", None) == "__main__" and script:
        script_dir = os.path.dirname(os.path.abspath(script))
        if Path(script_dir) != Path(sweep.code_dir):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (script_dir, env.get("PYTHONPATH", "")) if p)
    return env


def _process_group(pid: int) -> int:
    """The process group of the job's ``sh``: its starter's new session, which cancel kills."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return pid


def _content_addressed(folder: Path, prefix: str, suffix: str, data: bytes) -> Path:
    """``data`` written once as ``<prefix>-<hash><suffix>``: jobs still reading older ones keep them."""
    path = folder / f"{prefix}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path


def _alive(handle: Mapping[str, Any]) -> bool:
    """The job's ``sh`` still runs (the same process: its start time matches)."""
    pid, start = handle.get("pid"), handle.get("start")
    return bool(pid) and start is not None and process_start_time(int(pid)) == start


def _exit_code(ldir: Path) -> int | None:
    text = _read_text(ldir / EXIT_FILE)
    return int(text) if text.lstrip("-").isdigit() else None


def _status(handle: Mapping[str, Any]) -> JobStatus:
    ldir = Path(handle["remote_job_dir"]) / LAUNCHER_DIR
    code = _exit_code(ldir)
    if code is None and _alive(handle):
        return JobStatus(JobState.RUNNING, host="localhost")
    if code is None:
        code = _exit_code(ldir)  # it may have ended between the two looks
    if code == 0 and (ldir / RESULT_FILE).exists():
        return JobStatus(JobState.COMPLETED, host="localhost")
    if (ldir / CANCELLED_FILE).exists():
        return JobStatus(JobState.CANCELLED, "cancelled")
    if code is None:
        return JobStatus(JobState.FAILED, "the job's process is gone without an exit code")
    reason = failure_summary(ldir / RESULT_FILE) or f"exited with code {code}"
    return JobStatus(JobState.FAILED, reason if (ldir / RESULT_FILE).exists() else f"{reason} without a result")


# --- files -----------------------------------------------------------------------------------------------
def _files_under(root: Path) -> dict[str, int]:
    if not root.is_dir():
        return {}
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.name.startswith(f".{EXIT_FILE}.tmp"):
            out[path.relative_to(root).as_posix()] = path.stat().st_size
    return out


def _skipped(rel: str, size: int, pull_filter: PullFilter | None) -> bool:
    """A bare pull leaves big or excluded files, never a ``.launcher/`` file."""
    if pull_filter is None or not pull_filter.is_bare or rel.startswith(f"{LAUNCHER_DIR}/"):
        return False
    if pull_filter.max_size_bytes is not None and size > pull_filter.max_size_bytes:
        return True
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in pull_filter.exclude)


def _copy_if_changed(src: Path, dst: Path) -> None:
    """``src`` to ``dst`` unless ``dst`` has its size and mtime; a reader sees the old or the new file."""
    st = src.stat()
    try:
        here = dst.stat()
        if here.st_size == st.st_size and here.st_mtime_ns == st.st_mtime_ns:
            return
    except FileNotFoundError:
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.toy-tmp{os.getpid()}")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _remove(path: str, report: CleanReport) -> bool:
    """Delete a dir tree; True once it is gone (also when it was gone already)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        report.errors.append(f"{path}: {exc}")
        return False
    return True
