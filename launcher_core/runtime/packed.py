"""Several short jobs one after another in one process (slurm ``jobs_per_task``).

A job array task that starts a Python interpreter per job spends more time starting than
working when jobs last seconds. A packed task runs its jobs in one interpreter: it loads the
sweep payload once and forks a child per job (as ``local_pool`` does), so each job still gets
its own process, stdout/stderr logs, result file and exit file in its own launcher dir.

Exactly once across a requeue: a job whose exit file exists finished in an earlier run of
this task and is skipped; the job that was running when the task was stopped (SIGTERM from
the batch script's requeue handler, or a time limit) has no exit file and runs again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from launcher_core.runtime.markers import EXIT_FILE, RESULT_FILE, STDERR_FILE, STDOUT_FILE

_JOB_UMASK = 0o022


class _Stopped(Exception):
    """The task was told to stop (SIGTERM/SIGINT/SIGHUP) while a job ran."""


def _finished_before(launcher_dir: Path) -> bool:
    """Whether an earlier run of this task finished the job (exit file and, if it exited 0, a result)."""
    try:
        code = exit_code_in(launcher_dir)
    except (OSError, ValueError, IndexError):
        return False
    return code != 0 or (launcher_dir / RESULT_FILE).exists()


def _write_exit(launcher_dir: Path, code: int) -> None:
    from launcher_core.runtime.files import atomic_write_bytes

    node = os.environ.get("SLURMD_NODENAME", "")
    atomic_write_bytes(launcher_dir / EXIT_FILE, f"{code} {node}".strip().encode() + b"\n")


def exit_code_in(launcher_dir: Path) -> int:
    """The exit code of a job's exit file (``CODE [NODE]``, as the batch script writes it)."""
    return int((launcher_dir / EXIT_FILE).read_text().split()[0])


def _child(sweep: Any, entry: dict[str, Any], launcher_dir: Path) -> None:
    """In the forked child: own logs, default signals; run the job and leave."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        for fd, name in ((1, STDOUT_FILE), (2, STDERR_FILE)):
            target = os.open(launcher_dir / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(target, fd)
            os.close(target)
        os.umask(_JOB_UMASK)
        code = sweep.run(entry)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the job's stderr.log
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _run_one(sweep: Any, entry: dict[str, Any], launcher_dir: Path, running: list[int]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(sweep, entry, launcher_dir)
    running[:] = [pid]
    try:
        _pid, status = os.waitpid(pid, 0)  # a signal handler's _Stopped ends the wait
        return os.waitstatus_to_exitcode(status)
    finally:
        running.clear()


def run_packed(sweep: Any, entries: list[dict[str, Any]]) -> int:
    """Run ``entries`` one after another, skipping those finished before; 0 if all completed."""
    running: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        for pid in running:  # stop the job first: it must not run on without its task
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        running.clear()
        raise _Stopped(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    _ = sweep.composer  # the templates once, here: every forked job inherits them ready
    failed = 0
    for entry in entries:
        launcher_dir = Path(entry["result"]).parent
        launcher_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _finished_before(launcher_dir):
            print(f"[hydra-remote-launcher] job #{entry['idx']} finished in an earlier run: skipped", flush=True)
            failed += _exit_code(launcher_dir) != 0
            continue
        (launcher_dir / RESULT_FILE).unlink(missing_ok=True)
        try:
            code = _run_one(sweep, entry, launcher_dir, running)
        except _Stopped as stopped:
            print(f"[hydra-remote-launcher] {stopped}: job #{entry['idx']} stopped, it runs again", flush=True)
            return 128 + 15
        _write_exit(launcher_dir, code)
        failed += code != 0
    return 0 if not failed else 1


def _exit_code(launcher_dir: Path) -> int:
    try:
        return exit_code_in(launcher_dir)
    except (OSError, ValueError, IndexError):
        return 1
