"""``local_pool``: run a sweep's jobs as forked child processes on this machine, ``n_jobs`` at a
time, each leading its own process group; what is left of the group is killed when the job ends
or times out. With ``gpus`` set, a job also waits for its GPUs (:mod:`.gpus`) and sees only those.

Design: docs/local_pool.md
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Backend, Handle
from launcher_core.backends.local_pool.gpus import GpuSettings, LocalGpus, gpu_settings
from launcher_core.backends.local_pool.handle import LocalPoolHandle
from launcher_core.jobs import (
    PID_FILE,
    RESULT_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    JobSpec,
    JobState,
    JobStatus,
    LossCause,
    SweepInfo,
)
from launcher_core.runtime.gpus import GpuClaim, visible_env
from launcher_core.runtime.procs import (
    GroupKill,
    become_subreaper,
    boot_id,
    close_if_still,
    fd_identity,
    kill_group_blocking,
    process_start_time,
)

if TYPE_CHECKING:
    from launcher_core.machines import Observation

log = logging.getLogger("launcher_core.local_pool")

_SUBMITTED = JobStatus(JobState.SUBMITTED)


@dataclass
class _Running:
    spec: JobSpec
    pid: int
    started: float
    wake_fd: int | None  # readable once the job exits (a pidfd, else an exit pipe): wait() wakes at once
    timeout_kill: GroupKill | None = None
    # its wake_fd was readable: an exit pipe is as soon as the job closes its files, a moment
    # before it can be reaped; from then on it is polled, not waited for (which would spin)
    woke: bool = False


# how long wait() blocks at most while orphans are being killed (their groups are stepped on poll)
_CLEANUP_STEP_S = 0.02


def local_pool_settings(params: Mapping[str, Any]) -> Any:
    """``hydra.launcher`` of local_pool, validated; keys and defaults are those of
    ``LocalPoolLauncherConf`` (the one settings source)."""
    from launcher_core.backends.local_pool.schema import LocalPoolLauncherConf
    from launcher_core.settings import settings_from_mapping
    from launcher_core.validation import check_optional_positive, check_positive, env_vars

    settings = settings_from_mapping(LocalPoolLauncherConf, params, "local_pool")
    check_optional_positive("hydra.launcher.n_jobs", settings.n_jobs, integer=True)
    check_optional_positive("hydra.launcher.timeout_s", settings.timeout_s)
    check_positive("hydra.launcher.kill_grace_s", settings.kill_grace_s, allow_zero=True)
    settings.env_vars = dict(env_vars("hydra.launcher.env_vars", settings.env_vars))
    gpu_settings(settings)  # refuses bad GPU keys now, naming them
    return settings


def local_pool_gpus(settings: Any) -> GpuSettings | None:
    """The GPU keys of validated settings (None: ``gpus`` not set, no GPU is handed out)."""
    return gpu_settings(settings)


class LocalPoolBackend(Backend):
    name = "local_pool"
    runs_local_code = True
    poll_interval_s = 1.0  # an upper bound: wait() returns as soon as a job exits

    def __init__(
        self,
        *,
        n_jobs: int | None,
        timeout_s: float | None,
        kill_grace_s: float,
        task_function: Any,
        hydra_context: Any,
        env_vars: Mapping[str, str] | None = None,
        gpus: GpuSettings | None = None,
    ) -> None:
        # n_jobs None: one job per GPU slot with gpus, else one per CPU core (see resolve_resources)
        self.env_vars = dict(env_vars or {})  # set in each job's process before its task runs
        self._n_jobs_set = n_jobs is not None
        self.n_jobs = int(n_jobs or os.cpu_count() or 1)
        self._gpus = LocalGpus(gpus) if gpus is not None else None
        self._fewest_gpus = 0  # the smallest GPU count a submitted job asks (first fit stops below it)
        self.timeout_s = timeout_s
        self.kill_grace_s = kill_grace_s
        self._task_function = task_function
        self._hydra_context = hydra_context
        self._queue: deque[JobSpec] = deque()
        self._queued: set[str] = set()  # ids in _queue: O(1) "still queued?" for every poll
        self._running: dict[str, _Running] = {}
        self._done: dict[str, JobStatus] = {}
        self._cleanups: list[GroupKill] = []
        self._code: tuple[Path, Path] | None = None  # (code dir, its frozen snapshot)
        self._code_record: dict[str, Any] | None = None  # each started job's .launcher/code.json
        self._pidfds = _pidfds_work()  # Linux >= 5.3; elsewhere each job gets an exit pipe

    # --- contract -----------------------------------------------------------------------
    def resolve_resources(self, specs: Sequence[JobSpec]) -> None:
        """With ``gpus``: this machine's GPUs and each job's count, checked before anything starts
        (a job asking for more GPUs than there are is refused naming the job and the key)."""
        if self._gpus is None:
            return
        self._gpus.resolve(specs)
        if not self._n_jobs_set:
            self.n_jobs = self._gpus.slots

    def prepare(self, sweep: SweepInfo) -> None:
        become_subreaper()
        self._code = (sweep.code_dir, sweep.code_snapshot) if sweep.code_snapshot else None
        self._code_record = sweep.code_record

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, LocalPoolHandle]:
        """Queue the jobs; they start at the next :meth:`poll`, after the controller recorded them
        as submitted (a launcher killed in between never leaves a running job unrecorded)."""
        self._queue.extend(jobs)
        self._queued.update(j.job_id for j in jobs)
        if self._gpus is not None and jobs:
            fewest = min(self._gpus.wanted(j) for j in jobs)
            self._fewest_gpus = fewest if len(self._queue) == len(jobs) else min(self._fewest_gpus, fewest)
        for job in jobs:  # a new attempt of a job whose last one ended here
            self._done.pop(job.job_id, None)
        booted = boot_id()  # a changed boot id tells a reboot
        return {
            j.job_id: LocalPoolHandle(host="localhost", pid_file=str(j.launcher_dir / PID_FILE), boot_id=booted)
            for j in jobs
        }

    def poll(self, handles: Mapping[str, Handle]) -> Mapping[str, JobStatus]:
        """States of the given jobs; jobs still queued here are left out (they are as submitted),
        so a poll costs O(running + finished), not O(sweep)."""
        self._reap_finished()
        self._enforce_timeouts()
        self._start_queued()
        self._cleanups = [c for c in self._cleanups if not c.step()]
        asked = handles.keys() - self._queued  # a set operation: no Python loop over the sweep
        return {job_id: self._status(job_id, handles[job_id]) for job_id in asked}

    def reattachable(self, handle: Handle) -> bool:
        """A job of a killed launcher that started (it wrote its pid file) runs on as an orphan
        and writes its own result: wait for it rather than start it again."""
        return _read_pid_file(handle) is not None

    def wait(self, timeout_s: float) -> None:
        """Block until a running job exits, a timeout is due, or ``timeout_s`` has passed."""
        self._start_queued()  # submitted jobs start at once when a slot is free
        if self._cleanups:
            timeout_s = min(timeout_s, _CLEANUP_STEP_S)
        if self.timeout_s is not None and self._running:
            now = time.monotonic()
            due = min(r.started + self.timeout_s for r in self._running.values())
            timeout_s = min(timeout_s, max(due - now, 0.0) + 0.001)
            if any(r.timeout_kill is not None for r in self._running.values()):
                timeout_s = min(timeout_s, _CLEANUP_STEP_S)
        waiting = {r.wake_fd: r for r in self._running.values() if r.wake_fd is not None and not r.woke}
        if len(waiting) < len(self._running):  # nothing (more) wakes us for some job: poll it soon
            timeout_s = min(timeout_s, 0.01)
        for fd in _wait_readable(list(waiting), timeout_s):
            waiting[fd].woke = True

    def fetch(
        self, jobs: Mapping[str, dict[str, Any]], local_dirs: Mapping[str, Path], pull_filter: Any = None
    ) -> None:
        """Results are written locally by the job itself: nothing to fetch."""

    def observe(self, handles: Mapping[str, Handle]) -> Observation:
        """States (as :meth:`poll`), and each running job's last stdout line and GPUs, read here
        (this machine's load and GPUs are ``top``'s own reading of ``localhost``)."""
        from launcher_core.machines import Observation, read_local_job

        statuses = dict(self.poll(handles))
        jobs = {}
        for job_id, status in statuses.items():
            if status.state is JobState.RUNNING:
                pid_info = _read_pid_file(handles[job_id])
                launcher_dir = Path(LocalPoolHandle.of(handles[job_id]).pid_file).parent
                jobs[job_id] = read_local_job(launcher_dir, pid_info[0] if pid_info else None)
        return Observation(statuses=statuses, jobs=jobs)

    def cancel(self, handles: Mapping[str, Handle]) -> None:
        wanted = set(handles)
        ours = wanted & (self._queued | self._running.keys() | self._done.keys())
        self._queue = deque(j for j in self._queue if j.job_id not in wanted)
        self._queued -= wanted
        for job_id in ours:
            run = self._running.get(job_id)
            if run is not None:
                kill_group_blocking(run.pid, self.kill_grace_s)
                self._reap_finished()
            self._done.setdefault(job_id, JobStatus(JobState.CANCELLED, "cancelled"))
            left = self._running.pop(job_id, None)
            if left is not None and left.wake_fd is not None:
                os.close(left.wake_fd)
        # stale handles from an earlier controller that died: kill by pid if it is still ours
        for job_id, handle in handles.items():
            if job_id not in ours or self._done[job_id].state is JobState.CANCELLED:
                kill_stale_handle(handle, self.kill_grace_s)

    def close(self) -> None:
        if self._gpus is not None:
            self._gpus.stop_waiting()
        if self._running or self._queue:
            self.cancel({j: {} for j in [*self._running, *(q.job_id for q in self._queue)]})
        deadline = time.monotonic() + self.kill_grace_s + 5
        while self._cleanups and time.monotonic() < deadline:
            self._cleanups = [c for c in self._cleanups if not c.step()]
            time.sleep(0.02)

    # --- internals ----------------------------------------------------------------------
    def stored_config(self) -> dict[str, Any]:
        """What ``status``/``cancel`` in another process need (see :func:`from_config`)."""
        return {"kill_grace_s": self.kill_grace_s}

    def _status(self, job_id: str, handle: Handle) -> JobStatus:
        if job_id in self._done:
            return self._done[job_id]
        if job_id in self._running:
            return JobStatus(JobState.RUNNING, host="localhost")
        if job_id in self._queued:
            return _SUBMITTED
        return _stale_status(handle)

    def _start_queued(self) -> None:
        if self._gpus is not None:
            self._start_fitting(self._gpus)
            return
        while self._queue and len(self._running) < self.n_jobs:
            self._start(self._queue.popleft(), None)

    def _start_fitting(self, gpus: LocalGpus) -> None:
        """First fit: start every queued job whose GPUs are free now, in order; a job that waits
        for more GPUs does not hold back a smaller one behind it. Jobs asking for at least as many
        GPUs as one refused in this pass are skipped, and the pass ends once no job can fit, so a
        pass over a long queue stays short."""
        if not self._queue:
            gpus.stop_waiting()
            return
        refused_at: int | None = None  # the fewest GPUs refused in this pass
        i = 0
        while i < len(self._queue) and len(self._running) < self.n_jobs:
            if refused_at is not None and refused_at <= self._fewest_gpus:
                return  # no queued job asks for fewer GPUs than were just refused
            spec = self._queue[i]
            wanted = gpus.wanted(spec)
            claim = None if refused_at is not None and wanted >= refused_at else gpus.claim(spec)
            if claim is None:
                refused_at = wanted if refused_at is None else min(refused_at, wanted)
                i += 1
                continue
            del self._queue[i]
            self._start(spec, claim)

    def _start(self, spec: JobSpec, claim: GpuClaim | None) -> None:
        self._queued.discard(spec.job_id)
        try:
            pid, exit_pipe = self._fork_job(spec, None if claim is None else visible_env(claim.ids))
        finally:
            if claim is not None:
                claim.release()  # the job holds its own copies of the locks until it ends
        wake_fd = _open_pidfd(pid) if exit_pipe is None else exit_pipe
        self._running[spec.job_id] = _Running(spec, pid, time.monotonic(), wake_fd)

    def _fork_job(self, spec: JobSpec, env: Mapping[str, str] | None = None) -> tuple[int, int | None]:
        """Start the job (with ``env`` added to its environment); returns its pid and, without
        pidfds, the read end of its exit pipe."""
        spec.launcher_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(spec.launcher_dir, 0o700)  # pid, logs and result are the user's own
        if self._code_record is not None:
            from launcher_core.snapshots import write_code_record

            try:
                write_code_record(spec.launcher_dir, self._code_record)
            except OSError as exc:  # a full disk: the job (and the state store) will say so
                log.warning("job #%d: could not write its code record: %s", spec.idx, exc)
        sys.stdout.flush()
        sys.stderr.flush()
        read_end, write_end = (None, None) if self._pidfds else os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns
            try:
                if read_end is not None and write_end is not None:
                    os.close(read_end)
                    _hold_exit_pipe(write_end)
                os.environ.update(self.env_vars)
                _child_main(self._task_function, self._hydra_context, spec, self._code, env)
            except BaseException:  # noqa: BLE001 - reported; the child never returns into the launcher's code
                import traceback

                traceback.print_exc()
            finally:
                os._exit(1)  # _child_main exits itself: this is reached only if that failed
        if write_end is not None:
            os.close(write_end)  # the child holds the only write end: its exit makes read_end readable
        return pid, read_end

    def _reap_finished(self) -> None:
        for job_id, run in list(self._running.items()):
            try:
                pid, status = os.waitpid(run.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = run.pid, 0
            if pid == 0:
                continue
            del self._running[job_id]
            if run.wake_fd is not None:
                os.close(run.wake_fd)
            self._done[job_id] = self._final_status(run, status)
            # the job leader is gone; anything left in its group is an orphan: clean it up
            self._cleanups.append(GroupKill(run.pid, self.kill_grace_s))

    def _final_status(self, run: _Running, status: int) -> JobStatus:
        if run.timeout_kill is not None:
            return JobStatus(JobState.FAILED, f"timeout: killed after {self.timeout_s:g} s")
        has_result = run.spec.result_path.exists()
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            return JobStatus(JobState.FAILED, f"killed by {sig}")
        code = os.WEXITSTATUS(status)
        if not has_result:
            reason = f"exited with code {code} without writing a result"
            if _disk_full(run.spec.launcher_dir):
                reason += f" (no space left on device under {run.spec.launcher_dir.parent})"
            return JobStatus(JobState.FAILED, reason)
        if code == 0:
            return JobStatus(JobState.COMPLETED)
        return JobStatus(JobState.FAILED, "task raised an exception")

    def _enforce_timeouts(self) -> None:
        if self.timeout_s is None:
            return
        now = time.monotonic()
        for run in self._running.values():
            if run.timeout_kill is None and now - run.started > self.timeout_s:
                run.timeout_kill = GroupKill(run.pid, self.kill_grace_s)
            if run.timeout_kill is not None:
                run.timeout_kill.step(now)


def from_config(config: Mapping[str, Any]) -> LocalPoolBackend:
    """A backend for looking at (and cancelling) jobs of a local sweep from another process.

    It cannot start jobs (it has no task function); it knows jobs only by their pid files.
    """
    settings = local_pool_settings(config)
    return LocalPoolBackend(
        n_jobs=1, timeout_s=None, kill_grace_s=float(settings.kill_grace_s), task_function=None, hydra_context=None
    )


def _read_pid_file(handle: Handle) -> tuple[int, int] | None:
    """(PID, start time) the job wrote; None before it started (or for an empty handle)."""
    if not handle:
        return None
    try:
        pid_text, start_text = Path(LocalPoolHandle.of(handle).pid_file).read_text().split()
        return int(pid_text), int(start_text)
    except (OSError, ValueError):
        return None


def _stale_status(handle: Handle) -> JobStatus:
    """State of a job started by another (possibly dead) controller, from its files."""
    pid_info = _read_pid_file(handle)
    if pid_info is None:
        return JobStatus(JobState.SUBMITTED)
    pid, start = pid_info
    if process_start_time(pid) == start:
        return JobStatus(JobState.RUNNING, host="localhost")
    result_path = Path(LocalPoolHandle.of(handle).pid_file).with_name(RESULT_FILE)
    if not result_path.exists():
        return _gone_status(handle)
    from hydra.core.utils import JobStatus as HydraJobStatus

    from launcher_core.runtime.worker import load_job_return

    if load_job_return(result_path).status == HydraJobStatus.COMPLETED:
        return JobStatus(JobState.COMPLETED)
    return JobStatus(JobState.FAILED, "task raised an exception")


def _gone_status(handle: Handle) -> JobStatus:
    """A job of a launcher that died (the runner that watched it), whose process is gone with no
    result: lost, since no exit status says the task ended on its own; the machine rebooted if
    its boot id changed since the job was submitted."""
    reason = "process gone without writing a result"
    then = LocalPoolHandle.of(handle).boot_id
    if then is not None and boot_id() not in (None, then):
        return JobStatus.lost(LossCause.HOST_REBOOTED, reason, "localhost")
    return JobStatus.lost(LossCause.RUNNER_DIED, reason, "localhost")


def kill_stale_handle(handle: Handle, grace_s: float) -> None:
    """Kill a job left running by a controller that died, if its PID still is that job.

    The job wrote "PID START_TIME" to its pid file; comparing the start time guards against
    the PID having been reused by an unrelated process since.
    """
    pid_info = _read_pid_file(handle)
    if pid_info is not None and process_start_time(pid_info[0]) == pid_info[1]:
        kill_group_blocking(pid_info[0], grace_s)


def _child_main(
    task_function: Any,
    hydra_context: Any,
    spec: JobSpec,
    frozen: tuple[Path, Path] | None,
    env: Mapping[str, str] | None = None,
) -> None:
    code = 1
    try:
        os.setsid()
        os.environ.update(env or {})  # its GPUs: CUDA_VISIBLE_DEVICES and the like
        if frozen is not None:  # imports made while the job runs find the code as it was at launch
            from launcher_core.runtime.worker import enter_snapshot

            enter_snapshot(*frozen)
        _write_pid_file(spec.launcher_dir / PID_FILE)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _redirect(1, spec.launcher_dir / STDOUT_FILE)
        _redirect(2, spec.launcher_dir / STDERR_FILE)
        from launcher_core.runtime.worker import run_and_save, set_attempt

        set_attempt(spec.attempt)

        code = run_and_save(task_function, spec.config, hydra_context, spec.idx, spec.result_path)
    except BaseException:  # noqa: BLE001 - report anything, then leave without cleanup
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of our child ``pid`` (Linux >= 5.3), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _pidfds_work() -> bool:
    """Whether this system gives pidfds (not macOS, not Linux before 5.3 or under a seccomp
    filter that refuses them)."""
    fd = _open_pidfd(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return True


def _hold_exit_pipe(write_end: int) -> None:
    """In a job without a pidfd: keep the exit pipe's write end open for as long as the job
    runs (its end closes it, waking the controller), but not in processes the job forks
    (multiprocessing workers), which could outlive it and delay the wake-up. Programs it
    executes do not get it anyway (the fd is close-on-exec)."""
    ident = fd_identity(write_end)
    os.register_at_fork(after_in_child=lambda: close_if_still(write_end, ident))


def _wait_readable(fds: Sequence[int], timeout_s: float) -> list[int]:
    """Block until one of ``fds`` is readable (or hung up) or ``timeout_s`` has passed; returns
    those that are. poll(2): no limit on fd numbers, unlike select(2)'s 1024."""
    if not fds:
        time.sleep(timeout_s)
        return []
    if not hasattr(select, "poll"):  # a Python built without it
        return select.select(fds, [], [], timeout_s)[0]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _events in poller.poll(max(timeout_s, 0.0) * 1000)]


def _disk_full(path: Path, min_free: int = 64 * 1024) -> bool:
    """Whether the filesystem holding ``path`` is (practically) full: why a job may have left no result."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < min_free


def _write_pid_file(path: Path) -> None:
    pid = os.getpid()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid} {process_start_time(pid)}\n")


def _redirect(fd: int, path: Path) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(target, fd)
    os.close(target)
