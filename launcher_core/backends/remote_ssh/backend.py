"""``remote_ssh``: run a sweep's jobs detached on SSH hosts and rsync their output dirs home.

Per host and launch: one SSH connection, one code snapshot, one upload and one command per batch
of jobs; a poll or a fetch is one call per host.

Design: docs/remote_ssh.md
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Backend, CleanReport, CleanRequest, Handle
from launcher_core.backends.remote_ssh.handle import RemoteSSHHandle
from launcher_core.backends.remote_ssh.hosts import HostPool, assign_to_hosts
from launcher_core.backends.remote_ssh.preflight import preflight as check_hosts
from launcher_core.backends.remote_ssh.preflight import snapshot_check
from launcher_core.backends.remote_ssh.settings import HostSettings, RemoteSSHSettings, is_uri
from launcher_core.container import job_binds, python_for, wrap_command
from launcher_core.errors import BackendError, ConfigError, SubmitError
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
from launcher_core.remote.codesync import (
    git_state,
    write_git_state,
)
from launcher_core.remote.scripts import (
    cancel_script,
    checked_lines,
    poll_script,
    start_script,
    status_from_line,
)
from launcher_core.remote.ssh import SSHConnection
from launcher_core.remote.workspace import (
    RemoteWorkspace,
    claim_workspace,
    clean_host,
    clean_root,
    clean_workspaces,
    default_remote_dir,
    fetch_job_dirs,
    new_snapshot_tag,
    path_inside,
    read_remote_log,
    runtime_cwd,
    ship_runtime,
    sync_code_snapshot,
    upload_files,
)
from launcher_core.runtime.runner import ATTACHED, EXIT_STATUS, PID, STARTED

if TYPE_CHECKING:
    from launcher_core.machines import Observation
    from launcher_core.preflight import Check, PreflightRequest

log = logging.getLogger("launcher_core.remote_ssh")

_SAFE_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAMED_JOBS = 10  # jobs named in an error; the rest are counted


# --- the backend ----------------------------------------------------------------------------
@dataclass
class _HostState:
    """A host after its remote preparation in this launch."""

    settings: HostSettings
    conn: SSHConnection
    workspace: RemoteWorkspace
    shipped_sweep_files: bool = False
    container_image: str | None = None  # the image on this host (``~/`` expanded)

    @property
    def remote_dir(self) -> str:
        return self.workspace.remote_dir

    @property
    def sweep_dir(self) -> str:
        return self.workspace.sweep_dir

    @property
    def snapshot(self) -> str:
        return self.workspace.snapshot


class RemoteSSHBackend(Backend):
    name = "remote_ssh"
    detached = True  # jobs outlive the controller; a relaunch re-attaches to them

    def __init__(
        self,
        settings: RemoteSSHSettings,
        *,
        task_function: Any = None,
        hydra_context: Any = None,
        snapshot_tag: str | None = None,
    ) -> None:
        self.settings = settings
        self.poll_interval_s = settings.poll_interval_s
        self._task_function = task_function
        self._hydra_context = hydra_context
        self.tag = snapshot_tag or new_snapshot_tag()
        self.hosts = HostPool(settings)
        self.pool = self.hosts.pool
        self._prepared: dict[str, _HostState] = {}
        self._sweep: SweepInfo | None = None
        self._code_dir: Path | None = None
        self._uid = uuid.uuid4().hex[:8]
        self._sweep_payload: Path | None = None
        self._runtime_cwd: tuple[str | None] | None = None  # see _local_cwd
        self._pylib: list[str] = []
        self._lock = threading.Lock()
        self._last_poll = 0.0

    def stored_config(self) -> dict[str, Any]:
        """Secret-free settings :func:`from_config` needs to poll, fetch and cancel later."""
        return self.settings.stored_config()

    @property
    def stats(self) -> Any:
        return self.hosts.stats()

    # --- contract -----------------------------------------------------------------------
    def prepare(self, sweep: SweepInfo) -> None:
        """Local part only; each host is prepared when it first gets jobs (see ``_host``)."""
        self._sweep = sweep
        code_dir = Path(self.settings.code_dir or sweep.code_dir).expanduser().resolve()
        if not code_dir.is_dir():
            raise BackendError(f"hydra.launcher.code_dir: {code_dir} is not a directory")
        self._code_dir = code_dir
        state = git_state(code_dir)
        write_git_state(state, self._local_tag_dir() / "code")
        if state.commit:
            log.info("code: %s at %s%s", code_dir, state.commit[:12], " (dirty)" if state.dirty else "")

    def resolve_resources(self, specs: Sequence[JobSpec]) -> None:
        """``resources_from.gpus_per_job``: each job's GPU count from its config; a job asking for
        more GPUs than any host has (``gpus``) is refused, naming the job, the key and the hosts."""
        from launcher_core.backends.remote_ssh.settings import RESOURCES
        from launcher_core.resources import read_job_resources

        resources_from = dict(self.settings.resources_from)
        read_job_resources(specs, resources_from, RESOURCES)
        if not self.settings.per_job_gpus:
            return
        most = max(h.gpus or 0 for h in self.settings.hosts)
        for spec in specs:
            wanted = self._gpus_of(spec)
            if wanted > most:
                hosts = ", ".join(f"{h.address.label}: {h.gpus}" for h in self.settings.hosts)
                raise ConfigError(
                    f"job #{spec.idx} ({' '.join(spec.overrides) or 'no overrides'}): "
                    f"hydra.launcher.resources_from.gpus_per_job: {resources_from['gpus_per_job']} asks for "
                    f"{wanted} GPUs, more than any host has ({hosts}; hydra.launcher.gpus / hosts[i].gpus). "
                    "Nothing was started."
                )

    def _gpus_of(self, spec: JobSpec) -> int:
        """GPUs the job needs: its own (``resources_from``) or ``gpus_per_job``."""
        return int(spec.resources.get("gpus_per_job", self.settings.gpus_per_job))

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, RemoteSSHHandle]:
        if self._sweep is None:
            raise BackendError("remote_ssh: submit() before prepare()")
        hosts = self.settings.hosts

        def fits(spec: JobSpec, i: int) -> bool:
            gpus = hosts[i].gpus
            return gpus is None or self._gpus_of(spec) <= gpus

        buckets = assign_to_hosts(list(jobs), [h.max_parallel for h in hosts], fits)
        work = {h.address.label: specs for h, specs in zip(hosts, buckets) if specs}
        self.hosts.ensure_logins(work)
        unprepared = self._prepare_hosts(work, len(jobs))
        ready = {label: specs for label, specs in work.items() if label not in unprepared}
        results, errors = self.hosts.per_host(ready, self._submit_host)
        errors = {**unprepared, **errors}
        started: dict[str, RemoteSSHHandle] = {}
        for handles in results.values():
            started.update(handles)
        if errors:
            raise _partial_error(errors, started, len(jobs))
        return started

    def poll(self, handles: Mapping[str, Handle]) -> Mapping[str, JobStatus]:
        """One ssh command per host for all its jobs, at most once per ``poll_interval_s``.

        The launch loop polls again at once after a change; with many jobs finishing one by
        one that would be a tight loop of ssh commands, hence the spacing here.
        """
        wait = self._last_poll + self.poll_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_poll = time.monotonic()
        by_host = self.hosts.due(_group_by_host(handles))
        self.hosts.ensure_logins(by_host)
        results, errors = self.hosts.per_host(by_host, self._poll_host)
        expired = self.hosts.note_contact(results, errors)
        if expired:  # down for longer than reconnect_grace_s: give up with the re-attach hint
            raise _poll_error(expired, self._sweep)
        statuses: dict[str, JobStatus] = {}
        for part in results.values():
            statuses.update(part)
        return statuses

    def unreachable(self) -> list[str]:
        """Hosts riding out an outage (``reconnect_grace_s``): their jobs were left unchanged."""
        return self.hosts.down()

    def fetch(
        self,
        jobs: Mapping[str, Handle],
        local_dirs: Mapping[str, Path],
        pull_filter: PullFilter | None = None,
    ) -> None:
        """One rsync per host for all the given jobs (incremental: unchanged files are skipped)."""
        by_host = _group_by_host(jobs)
        _results, errors = self.hosts.per_host(
            by_host, lambda label, hs: self._fetch_host(label, hs, local_dirs, pull_filter)
        )
        if errors:
            raise BackendError("; ".join(str(e) for e in errors.values()))

    def cancel(self, handles: Mapping[str, Handle]) -> None:
        by_host = _group_by_host(handles)
        _results, errors = self.hosts.per_host(by_host, self._cancel_host)
        if errors:
            raise BackendError("; ".join(str(e) for e in errors.values()))

    def clean_backend_files(self, request: CleanRequest) -> CleanReport:
        """Delete the job dirs of ``handles`` on their hosts; with ``sweep_handles`` (every job of
        the sweep, all clean after this) also the remote sweep dirs and the sweep's snapshots.

        Every path is checked to lie inside the handle's ``remote_dir`` before any host is
        contacted (:mod:`launcher_core.remote.paths`); one sh script per host and chunk of jobs.
        """

        def run(plans: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
            hosts = self.hosts
            hosts.ensure_logins(plans)
            return hosts.per_host(plans, lambda label, plan: clean_host(hosts.conn(label), request.sweep_id, plan))

        return clean_workspaces(
            request,
            host_of=lambda h: RemoteSSHHandle.of(h).host,
            remote_dir_of=clean_root,
            run=run,
        )

    def list_files(self, handles: Mapping[str, Handle]) -> Mapping[str, list[tuple[str, int]]]:
        """One ``rsync --list-only`` per host and remote sweep dir."""
        from launcher_core.remote.workspace import list_job_files

        by_host = _group_by_host(handles)
        results, errors = self.hosts.per_host(by_host, lambda label, hs: list_job_files(self.hosts.conn(label), hs))
        if errors:
            raise BackendError("; ".join(str(e) for e in errors.values()))
        return {job_id: files for part in results.values() for job_id, files in part.items()}

    def read_log(self, handle: Handle, stream: str, offset: int = 0) -> bytes:
        """Bytes of a job's live stdout/stderr log on the host, from ``offset`` on."""
        name = STDERR_FILE if stream == "stderr" else STDOUT_FILE
        job = RemoteSSHHandle.of(handle)
        return read_remote_log(self.hosts.conn(job.host), f"{job.launcher_dir}/{name}", offset)

    def close(self) -> None:
        stats = self.hosts.stats()
        log.debug(
            "remote_ssh: %d ssh connections, %d commands, %d rsyncs, %d retries",
            stats.masters_started,
            stats.commands,
            stats.rsyncs,
            stats.retries,
        )
        self.hosts.close()

    # --- per host -----------------------------------------------------------------------
    def _prepare_hosts(self, labels: Iterable[str], total: int) -> dict[str, BackendError]:
        """Prepare every host that gets jobs before any job starts anywhere.

        A setting refused by a host (container image or runtime missing there) stops the whole
        launch with nothing started. Connection problems are returned instead: the hosts that
        answered still get their jobs, as before.
        """
        refused: dict[str, ConfigError] = {}

        def prepare(label: str, _item: object) -> None:
            try:
                self._host(label)
            except ConfigError as exc:
                refused[label] = exc

        _results, errors = self.hosts.per_host(dict.fromkeys(labels), prepare)
        if refused:
            reasons = "\n".join(str(refused[label]) for label in sorted(refused))
            raise ConfigError(f"{reasons}\nnone of the {total} jobs was started; fix the setting and relaunch.")
        return errors

    def _host(self, label: str) -> _HostState:
        """Prepare a host once per launch: dirs, sweep dir claim, code snapshot (one rsync)."""
        if label in self._prepared:
            return self._prepared[label]
        assert self._sweep is not None and self._code_dir is not None
        sweep, code_dir = self._sweep, self._code_dir
        host = self.hosts.host(label)
        conn = self.hosts.conn(label)
        remote_dir = host.remote_dir or self.settings.remote_dir or default_remote_dir(code_dir)
        container = self.settings.container
        image = container.image if container and not is_uri(container.image) else None
        workspace = claim_workspace(
            conn,
            remote_dir=remote_dir,
            sweep_id=sweep.sweep_id,
            tag=self.tag,
            rel_sweep=path_inside(sweep.sweep_dir, code_dir),
            host_key=_host_key(label),
            container_image=image,
        )
        state = _HostState(
            settings=host,
            conn=conn,
            workspace=workspace,
            container_image=workspace.container_image or (container.image if container else None),
        )
        if not workspace.snapshot_complete:
            sync_code_snapshot(
                conn,
                workspace,
                code_dir,
                sweep.sweep_dir,
                include=self.settings.rsync_include,
                exclude=self.settings.rsync_exclude,
                extra_args=self.settings.rsync_args,
                prelude=self._prelude(state),
                uv_sync=self.settings.uv_command if self.settings.env_setup == "uv" else None,
                check=snapshot_check(self.settings, label, getattr(sweep, "payload_needs", None)),
            )
        self._prepared[label] = state
        return state

    def preflight(self, request: PreflightRequest) -> list[Check]:
        """One script per host (reachable, python and packages, rsync, free disk, GPUs, container
        runtime and image), before anything is created there: :mod:`.preflight`."""
        return check_hosts(self.settings, self.hosts, request)

    def _pythonpath(self, state: _HostState) -> list[str]:
        pythonpath = [self._remote_tag_dir(state) + "/pylib", state.snapshot]
        script_dir = path_inside(sys.path[0], self._code_dir) if self._code_dir and sys.path and sys.path[0] else None
        if script_dir:
            pythonpath.append(f"{state.snapshot}/{script_dir}")
        return pythonpath

    def _prelude(self, state: _HostState) -> str:
        assert self._sweep is not None
        pythonpath = self._pythonpath(state)
        extra = {
            "HRL_SWEEP_ID": self._sweep.sweep_id,
            "HRL_REMOTE_SWEEP_DIR": state.sweep_dir,
            "HRL_CODE_DIR": state.snapshot,
        }
        return env_prelude(self.settings, snapshot=state.snapshot, pythonpath=pythonpath, extra_env=extra)

    def _remote_tag_dir(self, state: _HostState) -> str:
        return f"{state.sweep_dir}/{LAUNCHER_DIR}/remote_ssh/{self.tag}"

    def _local_tag_dir(self) -> Path:
        assert self._sweep is not None
        return self._sweep.sweep_dir / LAUNCHER_DIR / "remote_ssh" / self.tag

    def _submit_host(self, label: str, specs: list[JobSpec]) -> dict[str, RemoteSSHHandle]:
        state = self._host(label)
        conn = state.conn
        batch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        files, handles, batch_file = self._write_batch(state, specs, batch_id)
        assert self._sweep is not None
        local_root = self._sweep.sweep_dir
        upload_files(conn, local_root, state.sweep_dir, files, what=f"upload of {len(specs)} job payloads")
        state.shipped_sweep_files = True
        script = start_script(prelude=self._prelude(state), python=self.settings.python_command, batch_file=batch_file)
        output = conn.call(f"start of {len(specs)} jobs", lambda: conn.run_script(script, what="job start"))
        started = {}
        for line in output.splitlines():
            word, _, job_id = line.strip().partition(" ")
            if word in (STARTED, ATTACHED) and job_id in handles:
                started[job_id] = handles[job_id]
        if len(started) < len(specs):
            raise SubmitError(_not_started(label, [s for s in specs if s.job_id not in started], len(specs)), started)
        log.info("started %d jobs on %s (%s)", len(started), label, state.sweep_dir)
        return started

    def _write_batch(
        self, state: _HostState, specs: list[JobSpec], batch_id: str
    ) -> tuple[list[str], dict[str, RemoteSSHHandle], str]:
        """Write payloads and the batch file locally; return (files to upload, handles, remote batch file)."""
        from launcher_core.backends.base import sweep_payload_for
        from launcher_core.runtime.worker import atomic_write_bytes, job_entry

        assert self._sweep is not None
        sweep_dir = self._sweep.sweep_dir
        tag_rel = Path(LAUNCHER_DIR) / "remote_ssh" / self.tag
        remote_tag = self._remote_tag_dir(state)
        files: list[str] = []
        with self._lock:  # hosts are served by parallel threads: write the shared files once
            if self._sweep_payload is None:
                path = sweep_dir / tag_rel / f"sweep-{self._uid}.pkl"
                atomic_write_bytes(path, sweep_payload_for(self._sweep, self._task_function))
                self._pylib = ship_runtime(sweep_dir, tag_rel / "pylib")
                self._sweep_payload = path
        files.append(str(self._sweep_payload.relative_to(sweep_dir)))
        sweep_payload = f"{state.sweep_dir}/{self._sweep_payload.relative_to(sweep_dir)}"
        if not state.shipped_sweep_files:
            files += self._pylib
            files += [str(tag_rel / "code" / n) for n in ("git.json", "git_diff.patch")]
        batch_rel = tag_rel / "batches" / f"{batch_id}.json"
        batch_file = f"{state.sweep_dir}/{batch_rel}"
        jobs: list[dict[str, Any]] = []
        handles: dict[str, RemoteSSHHandle] = {}
        for index, spec in enumerate(specs):
            rel = _job_rel(spec, sweep_dir)
            remote_job = f"{state.sweep_dir}/{rel}"
            launcher_dir = f"{remote_job}/{LAUNCHER_DIR}"
            (spec.launcher_dir / RESULT_FILE).unlink(missing_ok=True)  # a stale result must not be collected
            # the batch file is also the job table: the job composes its config from its entry there
            job = job_entry(
                spec.idx, spec.overrides, f"{launcher_dir}/{RESULT_FILE}", state.sweep_dir, rel, attempt=spec.attempt
            )
            job.update(job_id=spec.job_id, launcher_dir=launcher_dir, index=index, gpus=self._gpus_of(spec))
            if self.settings.container is not None:
                job["argv"] = self._container_argv(state, sweep_payload, batch_file, index, self._gpus_of(spec))
            jobs.append(job)
            handles[spec.job_id] = RemoteSSHHandle(
                host=state.settings.address.label,
                remote_dir=state.remote_dir,
                remote_sweep_dir=state.sweep_dir,
                remote_job_dir=remote_job,
                rel=rel,
                launcher_dir=launcher_dir,
                pid_file=f"{launcher_dir}/{PID}",
                exit_file=f"{launcher_dir}/{EXIT_STATUS}",
                runner_pid_file=f"{remote_tag}/batches/{batch_id}.runner.pid",
                batch=batch_id,
                remote_cwd=state.snapshot,
                local_cwd=self._local_cwd(spec),
                local_sweep_dir=str(sweep_dir),
            )
        batch = {
            "batch_id": batch_id,
            "batch_dir": f"{remote_tag}/batches",
            "slots_dir": f"{state.remote_dir}/slots/{_host_key(state.settings.address.label)}",
            "max_parallel": state.settings.max_parallel,
            "gpus_per_job": self.settings.gpus_per_job,
            "gpus": state.settings.gpus,  # known: the runner hands out free GPU ids (runtime/runner.py)
            "jobs_per_gpu": self.settings.jobs_per_gpu,
            "gpu_lock_dir": self.settings.gpu_lock_dir,  # null: runtime/gpus.py's machine-wide default
            "cwd": state.snapshot,
            "sweep_payload": sweep_payload,
            "table": batch_file,
            "jobs": jobs,
        }
        atomic_write_bytes(sweep_dir / batch_rel, json.dumps(batch, separators=(",", ":")).encode())
        files.append(str(batch_rel))
        return files, handles, batch_file

    def _local_cwd(self, spec: JobSpec) -> str | None:
        """``hydra.runtime.cwd`` the job's config will have (the launch dir: the same for every job
        of the batch), to map the host's paths in its result back to local ones."""
        if self._runtime_cwd is None:
            self._runtime_cwd = (runtime_cwd(spec.config),)
            spec.release_config()
        return self._runtime_cwd[0]

    def _container_argv(self, state: _HostState, sweep_payload: str, table: str, index: int, gpus: int) -> list[str]:
        """The job's command on ``state``'s host: the worker run by the image's Python inside the
        container, with the snapshot and the remote sweep dir bound (payloads in, results out)."""
        container = self.settings.container
        assert container is not None and state.container_image is not None
        on_host = dataclasses.replace(container, image=state.container_image)
        argv = [python_for(on_host, self.settings.python), "-m", "launcher_core.runtime.remote_worker"]
        binds = job_binds([state.snapshot, state.sweep_dir, *self._pythonpath(state)])
        return wrap_command([*argv, sweep_payload, table, str(index)], on_host, binds, gpus_requested=gpus > 0)

    def _poll_host(self, label: str, handles: dict[str, RemoteSSHHandle]) -> dict[str, JobStatus]:
        conn = self.hosts.conn(label)
        jobs = [(j, h.launcher_dir, h.runner_pid_file) for j, h in handles.items()]
        script = poll_script(jobs, self.settings.kill_grace_s)
        output = conn.call(f"status check of {len(jobs)} jobs", lambda: conn.run_script(script, what="status check"))
        return _statuses_from(output, handles, label)

    def observe(self, handles: Mapping[str, Handle]) -> Observation:
        """One ssh command per host, on its kept master: the poll script with the host's load,
        ``nvidia-smi`` and the stdout tail of each job appended (:mod:`launcher_core.machines`)."""
        from launcher_core.machines import Observation

        by_host = _group_by_host(handles)
        masters = {label: self.hosts.conn(label).stats.masters_started for label in by_host}
        results, errors = self.hosts.per_host(by_host, self._observe_host)
        seen = Observation(errors={label: str(e) for label, e in errors.items()})
        for label, (statuses, host, jobs) in results.items():
            seen.statuses.update(statuses)
            seen.hosts[label] = host
            seen.jobs.update(jobs)
        for label in by_host:
            conn = self.hosts.conn(label)
            seen.commands[f"ssh {label}"] += 1
            seen.commands[f"ssh login {label}"] += conn.stats.masters_started - masters[label]
        return seen

    def _observe_host(self, label: str, handles: dict[str, RemoteSSHHandle]) -> tuple[Any, Any, Any]:
        from launcher_core.machines import parse_probe, poll_answer, probe_script

        conn = self.hosts.conn(label)
        jobs = [(j, h.launcher_dir, h.runner_pid_file) for j, h in handles.items()]
        script = poll_script(jobs, self.settings.kill_grace_s) + probe_script(
            [(j, h.launcher_dir) for j, h in handles.items()], PID
        )
        output = conn.call(f"look at {len(jobs)} jobs", lambda: conn.run_script(script, what="top"))
        host, readings = parse_probe(output)
        return _statuses_from(poll_answer(output), handles, label), host, readings

    def _fetch_host(
        self,
        label: str,
        handles: dict[str, RemoteSSHHandle],
        local_dirs: Mapping[str, Path],
        pull_filter: PullFilter | None,
    ) -> None:
        fetch_job_dirs(self.hosts.conn(label), handles, local_dirs, pull_filter)

    def _cancel_host(self, label: str, handles: dict[str, RemoteSSHHandle]) -> None:
        conn = self.hosts.conn(label)
        script = cancel_script([h.launcher_dir for h in handles.values()], self.settings.kill_grace_s)
        timeout = self.settings.ssh.command_timeout_s + self.settings.kill_grace_s
        conn.call(f"cancel of {len(handles)} jobs", lambda: conn.run_script(script, what="cancel", timeout_s=timeout))


# --- helpers --------------------------------------------------------------------------------
def _statuses_from(output: str, handles: Mapping[str, Any], label: str) -> dict[str, JobStatus]:
    """The poll script's answer: one line per job (a job it did not name is still queued)."""
    lines = {}
    for line in output.splitlines():
        words = line.split()
        if words and words[0] in handles:
            lines[words[0]] = words[1:]
    return {
        j: status_from_line(lines[j], label) if j in lines else JobStatus(JobState.SUBMITTED, host=label)
        for j in handles
    }


def env_prelude(
    settings: RemoteSSHSettings, *, snapshot: str, pythonpath: Sequence[str], extra_env: Mapping[str, str]
) -> str:
    """Shell lines that enter the snapshot and activate the job environment explicitly.

    Non-interactive ssh shells do not read ~/.bashrc, so nothing is assumed to be set up.
    """
    lines = [f"cd {shlex.quote(snapshot)}"]
    path = ":".join(shlex.quote(p) for p in pythonpath)
    lines.append(f'PYTHONPATH={path}"${{PYTHONPATH:+:$PYTHONPATH}}"; export PYTHONPATH')
    for name, value in (*extra_env.items(), *settings.env_vars):
        lines.append(f"{name}={shlex.quote(value)}; export {name}")
    if settings.env_setup == "conda":
        # conda_command is the user's own shell word (e.g. ~/miniconda3/bin/conda): not quoted on purpose
        lines.append(f'eval "$({settings.conda_command} shell.posix hook)"')
        lines.append(f"conda activate {shlex.quote(settings.conda_env or '')}")
    # each line checked: the first that fails stops the script, named with its message
    lines.append(checked_lines(settings.setup_commands, f"hydra.launcher.{settings.setup_commands_key}"))
    return "\n".join(lines)


def _host_key(label: str) -> str:
    return _SAFE_LABEL.sub("_", label).strip("_") or "host"


def _group_by_host(handles: Mapping[str, Handle]) -> dict[str, dict[str, RemoteSSHHandle]]:
    """The jobs of each host (a job without a handle has none)."""
    out: dict[str, dict[str, RemoteSSHHandle]] = {}
    for job_id, handle in RemoteSSHHandle.typed(handles).items():
        out.setdefault(handle.host, {})[job_id] = handle
    return out


def _job_rel(spec: JobSpec, sweep_dir: Path) -> str:
    try:
        rel = spec.output_dir.relative_to(sweep_dir)
    except ValueError as exc:
        raise BackendError(
            f"job #{spec.idx}: its output dir {spec.output_dir} is not inside the sweep dir {sweep_dir}; "
            "remote_ssh mirrors the sweep dir on the host, so hydra.sweep.subdir must stay inside it"
        ) from exc
    text = rel.as_posix()
    if text in ("", ".") or "\n" in text:
        raise BackendError(f"job #{spec.idx}: hydra.sweep.subdir must name a subdirectory, got {text!r}")
    return text


def _partial_error(errors: Mapping[str, BackendError], started: Mapping[str, Any], total: int) -> SubmitError:
    """A SubmitError naming the failed hosts and carrying the handles of every job that did start
    (on any host, those a host's own partial failure reports included).

    The controller records those as submitted before re-raising, so a relaunch re-attaches to
    them and starts only the others (no duplicates, none lost).
    """
    all_started = dict(started)
    for err in errors.values():
        if isinstance(err, SubmitError):
            all_started.update(err.started)
    messages = "; ".join(str(e) for e in errors.values())
    text = f"could not start jobs on {', '.join(errors)}: {messages}"
    if all_started:
        text += (
            f"\n{len(all_started)} of {total} jobs were started and keep running; relaunching the same command "
            "re-attaches to them and starts only the others."
        )
    elif total:
        text += f"\nnone of the {total} jobs was started; fix the problem and relaunch the same command."
    return SubmitError(text, all_started)


def _not_started(label: str, missing: Sequence[JobSpec], total: int) -> str:
    """``host h: 1 of 4 jobs were not started (#3 +t=2)``: the counts and the jobs, by number."""
    shown = ", ".join(f"#{s.idx} {' '.join(s.overrides)}".rstrip() for s in missing[:MAX_NAMED_JOBS])
    more = f" and {len(missing) - MAX_NAMED_JOBS} more" if len(missing) > MAX_NAMED_JOBS else ""
    return f"host {label}: {len(missing)} of {total} jobs were not started ({shown}{more})"


def _poll_error(errors: Mapping[str, BackendError], sweep: SweepInfo | None) -> BackendError:
    messages = "; ".join(str(e) for e in errors.values())
    where = f" {sweep.sweep_dir}" if sweep else ""
    return BackendError(
        f"lost contact with {', '.join(errors)}: {messages}\nThe jobs keep running there: run the same "
        f"command again to re-attach, or collect the results later with `python -m launcher_core.pull{where}`."
    )


def from_config(config: Mapping[str, Any]) -> RemoteSSHBackend:
    """Rebuild the backend from :meth:`RemoteSSHBackend.stored_config` (another process, no Hydra).

    It can poll, fetch, cancel and read logs; it cannot submit (it has no task function).
    """
    return RemoteSSHBackend(RemoteSSHSettings.from_mapping(config))
