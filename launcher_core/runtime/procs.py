"""Process-group helpers: kill a job's whole tree, reap it, become a child subreaper."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
import time
from dataclasses import dataclass

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned grandchildren re-parent to this process instead of PID 1.

    Then their zombies are ours to reap (``waitpid(-pgid)``), so "is this process group still
    alive?" gets an exact answer instead of waiting for a slow init to reap them.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_group(pgid: int) -> None:
    """Collect exit statuses of our (possibly adopted) children in process group ``pgid``."""
    for _ in range(10_000):
        try:
            pid, _status = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def group_alive(pgid: int) -> bool:
    reap_group(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return True
        raise


@dataclass
class GroupKill:
    """A process group being terminated: SIGTERM now, SIGKILL once ``grace_s`` has passed."""

    pgid: int
    grace_s: float
    started: float = 0.0
    killed: bool = False

    def step(self, now: float | None = None) -> bool:
        """Advance the kill; return True once the group is gone."""
        now = time.monotonic() if now is None else now
        if not group_alive(self.pgid):
            return True
        if not self.started:
            self.started = now
            signal_group(self.pgid, signal.SIGTERM)
        elif not self.killed and now - self.started >= self.grace_s:
            self.killed = True
            signal_group(self.pgid, signal.SIGKILL)
        return False


def kill_group_blocking(pgid: int, grace_s: float, timeout_s: float = 30.0) -> bool:
    """Terminate a process group and wait (bounded) until it is gone."""
    kill = GroupKill(pgid, grace_s)
    deadline = time.monotonic() + max(timeout_s, grace_s + 1)
    while time.monotonic() < deadline:
        if kill.step():
            return True
        time.sleep(0.02)
    return False


# Linux (and most Unix-likes but macOS) have /proc; elsewhere ps(1) tells a process's start time
_HAVE_PROC = os.path.exists("/proc/self/stat")


def process_start_time(pid: int) -> int | None:
    """Start time of the live process ``pid`` (clock ticks since boot from field 22 of
    /proc/PID/stat; seconds since the epoch from ps(1) where there is no /proc, as on macOS);
    None when there is none. Compare it only with a value from the same machine. A zombie counts
    as gone: it has ended, and its parent may never reap it (a subreaper that is not waiting, a
    slow init)."""
    if not _HAVE_PROC:
        return _ps_start_time(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie or dead
        return None
    return int(fields[19])


def _ps_start_time(pid: int) -> int | None:
    """:func:`process_start_time` from ``ps -o stat=,lstart=`` (BSD and procps ps both have them),
    in UTC so that every reader gets the same number whatever its time zone."""
    import calendar
    import subprocess

    env = {**os.environ, "TZ": "UTC0", "LC_ALL": "C"}
    argv = ["ps", "-o", "stat=,lstart=", "-p", str(pid)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) != 6 or fields[0].startswith("Z"):
        return None
    try:
        return calendar.timegm(time.strptime(" ".join(fields[1:]), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None


# test hook: a file read instead of the kernel's boot id, so a test can stand in for a reboot
# (a changed id) without rebooting; never set outside tests
BOOT_ID_FILE_ENV = "HYDRA_LAUNCHER_BOOT_ID_FILE"
_KERNEL_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str | None:
    """This machine's boot id (a new one at each boot; Linux), None where there is none."""
    path = os.environ.get(BOOT_ID_FILE_ENV) or _KERNEL_BOOT_ID
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def fd_identity(fd: int) -> tuple[int, int] | None:
    """(device, inode) of what ``fd`` is open on; None when it is not open."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def close_if_still(fd: int, identity: tuple[int, int] | None) -> None:
    """Close ``fd`` if it still is the file it was (``identity``, from :func:`fd_identity`): in a
    fork hook, a number closed and reused since (a job's exit pipe) is not ours to close."""
    if identity is not None and fd_identity(fd) == identity:
        with contextlib.suppress(OSError):
            os.close(fd)
