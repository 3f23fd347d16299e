"""Job runner on an SSH host: ``python -m launcher_core.runtime.runner BATCH_JSON`` accepts a batch
of jobs (never starting one twice) and runs them detached, ``max_parallel`` at a time per host.
Standard library and ``launcher_core.runtime`` only: it runs under whatever Python the host has.

Design: docs/remote_ssh.md ("Starting jobs")
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from launcher_core.runtime import gpus as gpu_locks
from launcher_core.runtime.markers import ATTACHED_LINE as ATTACHED
from launcher_core.runtime.markers import BATCH_FILE as BATCH
from launcher_core.runtime.markers import BOOT_ID_FILE as BOOT_ID
from launcher_core.runtime.markers import CANCELLED_FILE as CANCELLED
from launcher_core.runtime.markers import CLEANUP_FILE as CLEANUP
from launcher_core.runtime.markers import EXIT_STATUS_FILE as EXIT_STATUS
from launcher_core.runtime.markers import RESULT_FILE as RESULT
from launcher_core.runtime.markers import RUNNER_PID_FILE as PID
from launcher_core.runtime.markers import STARTED_LINE as STARTED
from launcher_core.runtime.markers import STDERR_FILE as STDERR
from launcher_core.runtime.markers import STDOUT_FILE as STDOUT
from launcher_core.runtime.procs import become_subreaper, boot_id, process_start_time

STALE_MARKERS = (EXIT_STATUS, PID, CANCELLED, CLEANUP, RESULT, BOOT_ID)
READY_TIMEOUT_S = 30.0
_JOB_UMASK = 0o022  # the umask the runner was started with (set in main)
LOCK_WAIT_S = 20.0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_file_alive(path: Path) -> bool:
    """True if the process named in a "PID START_TIME" file is still that process."""
    try:
        pid_text, start_text = path.read_text().split()
        return process_start_time(int(pid_text)) == int(start_text)
    except (OSError, ValueError):
        return False


def _write_pid_file(path: Path) -> None:
    pid = os.getpid()
    _atomic_write(path, f"{pid} {process_start_time(pid)}\n")


# --- foreground -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m launcher_core.runtime.runner BATCH_JSON", file=sys.stderr)
        return 2
    global _JOB_UMASK
    _JOB_UMASK = os.umask(0o077)  # markers, logs and locks are private; the job gets the user's umask back
    batch = json.loads(Path(args[0]).read_text())
    if batch.get("gpus") is not None:
        try:  # an unusable GPU lock dir is told to the launcher, before any job is accepted
            gpu_locks.lock_dir(batch.get("gpu_lock_dir"))
        except gpu_locks.GpuLockError as exc:
            print(f"gpu_lock_dir: {exc.strerror}", file=sys.stderr)
            return 5
    batch_dir = Path(batch["batch_dir"])
    batch_dir.mkdir(parents=True, exist_ok=True)
    bid = batch["batch_id"]
    lock = batch_dir / f"{bid}.lock"
    accepted = batch_dir / f"{bid}.accepted"
    if not _take_lock(lock, accepted, batch_dir / f"{bid}.runner.pid"):
        return _report_earlier(accepted)
    lines, queue = _triage(batch["jobs"], bid)
    if queue and not _spawn_daemon(batch, queue, batch_dir / f"{bid}.runner.pid", batch_dir / f"{bid}.runner.log"):
        _release(lock)
        print(f"the job runner did not start, see {batch_dir / f'{bid}.runner.log'}", file=sys.stderr)
        return 3
    _atomic_write(accepted, "".join(f"{line}\n" for line in lines))
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
    return 0


def _take_lock(lock: Path, accepted: Path, runner_pid: Path) -> bool:
    """Claim the batch; False if an earlier attempt of the same batch owns it (and is not stale)."""
    for _ in range(2):
        try:
            lock.mkdir()
            (lock / "owner").write_text(f"{os.getpid()} {process_start_time(os.getpid())}\n")
            return True
        except FileExistsError:
            if accepted.exists() or _pid_file_alive(lock / "owner") or _pid_file_alive(runner_pid):
                return False
            _release(lock)  # an earlier attempt died before accepting anything: start over
    return False


def _release(lock: Path) -> None:
    (lock / "owner").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        lock.rmdir()


def _report_earlier(accepted: Path) -> int:
    deadline = time.monotonic() + LOCK_WAIT_S
    while not accepted.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not accepted.exists():
        print(f"an earlier attempt of this batch is still starting ({accepted} missing)", file=sys.stderr)
        return 4
    sys.stdout.write(accepted.read_text())
    sys.stdout.flush()
    return 0


def _triage(jobs: list[dict[str, Any]], batch_id: str) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    queue: list[dict[str, Any]] = []
    for job in jobs:
        d = Path(job["launcher_dir"])
        if _pid_file_alive(d / PID) and not (d / EXIT_STATUS).exists():
            lines.append(f"{ATTACHED} {job['job_id']}")  # started by an earlier launch, still running
            continue
        d.mkdir(parents=True, exist_ok=True)
        for name in STALE_MARKERS:
            (d / name).unlink(missing_ok=True)
        _atomic_write(d / BATCH, f"{batch_id}\n")
        queue.append(job)
        lines.append(f"{STARTED} {job['job_id']}")
    return lines, queue


def _spawn_daemon(batch: dict[str, Any], queue: list[dict[str, Any]], pid_file: Path, log_file: Path) -> bool:
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            _daemonize(log_file)
            _write_pid_file(pid_file)
            os.write(write_fd, b"ok")
            os.close(write_fd)
            if any("argv" not in job for job in queue):  # containerised jobs never fork from here
                preload()
            run_queue(batch, queue)
        except BaseException:  # noqa: BLE001 - the log file is all a daemon has
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], READY_TIMEOUT_S)
        return bool(ready) and os.read(read_fd, 2) == b"ok"
    finally:
        os.close(read_fd)


def _daemonize(log_file: Path) -> None:
    """Leave the ssh session: new session, stdio away from the ssh channel, reap orphans."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    become_subreaper()


# --- daemon ---------------------------------------------------------------------------------
def run_queue(batch: dict[str, Any], queue: list[dict[str, Any]]) -> None:
    """Start the queued jobs as slots (and GPUs) free up, then reap until none is left.

    A job needs one of ``max_parallel`` slots (lock files shared by every sweep using the same
    ``remote_dir``). When the host's GPU count is known (``batch["gpus"]``) it also needs
    ``job["gpus"]`` free GPUs, locked in the machine-wide GPU lock dir (:mod:`.gpus`, shared
    with every sweep on the machine, local_pool ones included), so no GPU is ever given to two
    running jobs; the queue is then served first fit (a job that fits starts before an earlier
    one that waits for more GPUs). Without it, jobs start in order. The monitor of a job inherits
    its locks and holds them until the job has ended, whatever happens to this daemon.
    """
    slots_dir = Path(batch["slots_dir"])
    slots_dir.mkdir(parents=True, exist_ok=True)
    max_parallel = max(1, int(batch["max_parallel"]))
    host_gpus = batch.get("gpus")
    if host_gpus is not None:
        batch["gpu_lock_dir"] = str(gpu_locks.lock_dir(batch.get("gpu_lock_dir")))
        _LINE[0] = gpu_locks.GpuLine(Path(batch["gpu_lock_dir"]), range(int(host_gpus)))
    pending = list(queue)
    delay = 0.05
    while pending:
        started = _start_fitting(batch, pending, slots_dir, max_parallel, host_gpus)
        if pending and not started:
            _reap_some()
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        else:
            delay = 0.05
    if _LINE[0] is not None:
        _LINE[0].leave()  # nothing of this batch waits for GPUs any more
    while True:  # reap monitors and adopted orphans until none is left
        try:
            os.wait()
        except ChildProcessError:
            return
        except InterruptedError:
            continue


_LINE: list[gpu_locks.GpuLine | None] = [None]  # the daemon's place in the machine's line for GPUs


def _still_ours(launcher_dir: Path, batch_id: str) -> bool:
    try:
        return (launcher_dir / BATCH).read_text().strip() == batch_id
    except OSError:
        return False


def _start_fitting(
    batch: dict[str, Any], pending: list[dict[str, Any]], slots_dir: Path, max_parallel: int, host_gpus: int | None
) -> int:
    """One pass over the queue: start every job that fits now (removed from ``pending``)."""
    started = 0
    for job in list(pending):
        d = Path(job["launcher_dir"])
        if (d / CANCELLED).exists():
            pending.remove(job)  # cancelled while queued
            continue
        wanted = _gpus_of(batch, job)
        if host_gpus is not None and wanted > int(host_gpus):
            pending.remove(job)  # the launcher refuses such jobs; never wait for what cannot come
            _fail_unstartable(d, f"the job needs {wanted} GPUs, the host has {host_gpus}")
            continue
        slot = gpu_locks.lock_first_free([slots_dir / f"slot-{i}" for i in range(max_parallel)], 1)
        if slot is None:
            break  # every slot is taken: no job fits
        claim = _claim_gpus(batch, wanted, host_gpus)
        if claim is None:
            _unlock(slot)
            continue  # not enough free GPUs for this one; a later, smaller job may fit
        pending.remove(job)
        try:
            if _still_ours(d, batch["batch_id"]):  # else a later launch took it over: never run it twice
                _start_monitor(batch, job, slot[0][0], None if host_gpus is None else claim.ids)
                started += 1
        finally:
            _unlock(slot)  # the monitor keeps the locks (same open file descriptions)
            claim.release()
    return started


def _claim_gpus(batch: dict[str, Any], wanted: int, host_gpus: int | None) -> gpu_locks.GpuClaim | None:
    """The job's GPUs on this machine (nothing to lock when the host's GPU count is unknown)."""
    if host_gpus is None:
        return gpu_locks.GpuClaim([])
    jobs_per_gpu = int(batch.get("jobs_per_gpu") or 1)
    return gpu_locks.claim(Path(batch["gpu_lock_dir"]), range(int(host_gpus)), wanted, jobs_per_gpu, _LINE[0])


def _gpus_of(batch: dict[str, Any], job: dict[str, Any]) -> int:
    value = job.get("gpus")
    return int(batch.get("gpus_per_job") or 0) if value is None else int(value)


def _unlock(locks: list[tuple[int, int]]) -> None:
    for _index, fd in locks:
        os.close(fd)


def _fail_unstartable(launcher_dir: Path, reason: str) -> None:
    """A job that can never start here: its stderr says why and its exit status ends its wait."""
    with contextlib.suppress(OSError):
        with open(launcher_dir / STDERR, "a") as err:
            err.write(f"[hydra-remote-launcher] not started: {reason}\n")
        _atomic_write(launcher_dir / EXIT_STATUS, "2\n")


def _reap_some() -> None:
    for _ in range(1000):
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _start_monitor(batch: dict[str, Any], job: dict[str, Any], slot: int, gpu_ids: list[int] | None) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        try:
            _monitor_main(batch, job, slot, gpu_ids)
        finally:
            os._exit(0)


def _job_env(batch: dict[str, Any], job: dict[str, Any], slot: int, gpu_ids: list[int] | None) -> dict[str, str]:
    """The job's environment: ``CUDA_VISIBLE_DEVICES`` is the GPUs it holds (empty for a job
    without GPUs on a host whose GPUs are counted), or, without a GPU count, GPUs
    ``slot * gpus_per_job`` on."""
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in batch.get("env", {}).items()})
    env["HRL_JOB_ID"] = job["job_id"]
    env["HRL_SLOT"] = str(slot)
    gpus = int(batch.get("gpus_per_job") or 0)
    if gpu_ids is not None:
        env.update(gpu_locks.visible_env(gpu_ids))
    elif gpus > 0:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot * gpus + k) for k in range(gpus))
    return env


def _monitor_main(batch: dict[str, Any], job: dict[str, Any], slot: int, gpu_ids: list[int] | None) -> None:
    """Leader of the job's process group: run the worker, record how it ended."""
    d = Path(job["launcher_dir"])
    os.setsid()
    _atomic_write(d / BOOT_ID, f"{boot_id() or ''}\n")  # before the pid file: a poll that sees one sees both
    _write_pid_file(d / PID)
    # A handler (not SIG_IGN): the worker gets default signal dispositions back (after exec, or
    # explicitly after fork), while the monitor survives a SIGTERM to the group long enough
    # to write the exit status.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    code = 127
    with open(d / STDOUT, "wb") as out, open(d / STDERR, "wb") as err:
        try:
            env = _job_env(batch, job, slot, gpu_ids)
            forked = _PRELOADED and "argv" not in job
            code = _fork_worker(batch, job, env, out, err) if forked else _exec_worker(batch, job, env, out, err)
        except BaseException:  # noqa: BLE001 - e.g. python not found: tell the user in stderr.log
            err.write(traceback.format_exc().encode())
    _atomic_write(d / EXIT_STATUS, f"{code}\n")


def _worker_args(batch: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """The worker's arguments: the sweep payload and the job's entry in the batch file (its job table)."""
    return [batch["sweep_payload"], batch["table"], str(job["index"])]


def _exec_worker(batch: dict[str, Any], job: dict[str, Any], env: dict[str, str], out: Any, err: Any) -> int:
    """A fresh process: the job's own ``argv`` (a container) or the interpreter the environment
    set-up resolved for the runner. ``argv[0]`` is looked up on the job environment's PATH."""
    argv = job.get("argv") or [sys.executable, "-m", "launcher_core.runtime.remote_worker", *_worker_args(batch, job)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=batch["cwd"], env=env, umask=_JOB_UMASK
    )
    return proc.wait()


def _fork_worker(batch: dict[str, Any], job: dict[str, Any], env: dict[str, str], out: Any, err: Any) -> int:
    """A fork of this process, which already imported Hydra (see :func:`preload`).

    Saves a fresh interpreter and the Hydra imports per job (~0.4 s of CPU each); the job
    still gets its own process, environment, cwd and log files.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.umask(_JOB_UMASK)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.chdir(batch["cwd"])
            os.environ.clear()
            os.environ.update(env)
            from launcher_core.runtime import remote_worker

            sys.argv = ["launcher_core.runtime.remote_worker", *_worker_args(batch, job)]
            code = remote_worker.main(sys.argv[1:])
        except SystemExit as exc:  # the task called sys.exit()
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported in stderr.log
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


_PRELOADED = False


def preload() -> bool:
    """Import what every job imports, once, before forking the jobs (fall back to exec if not)."""
    global _PRELOADED
    try:
        import cloudpickle  # noqa: F401
        import hydra.core.hydra_config  # noqa: F401
        import hydra.core.utils  # noqa: F401

        import launcher_core.runtime.payload  # noqa: F401
        import launcher_core.runtime.results  # noqa: F401
        import launcher_core.runtime.worker  # noqa: F401
    except Exception:  # noqa: BLE001 - the jobs will report the real import error themselves
        traceback.print_exc()
        return False
    _PRELOADED = True
    return True


if __name__ == "__main__":
    sys.exit(main())
