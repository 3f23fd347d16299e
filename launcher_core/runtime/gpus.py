"""GPUs of one machine, handed to jobs so that no GPU is ever given to two running jobs.

The one implementation of GPU locking, used by every backend that places jobs on GPUs itself:
``local_pool`` (in the launcher's process) and ``remote_ssh`` (in the runner on each host,
:mod:`launcher_core.runtime.runner`). Slurm hands out GPUs itself (gres); a packed Slurm task's
jobs run one after another on the GPUs Slurm gave the task.

Locks are machine-wide: one lock file per GPU, ``gpu-<id>``, in one directory every sweep on the
machine uses (:data:`DEFAULT_LOCK_DIR`, whoever runs it: a sweep on this machine and a remote_ssh
sweep logging in here as another user must see the same locks), taken with ``flock`` without
waiting, lowest free ids first, never holding a partial set. A lock is held by an open file
description that the job's own process (local_pool) or its monitor (remote_ssh) inherits; it is
released when that process ends, however it ends (``kill -9`` included), so a crash never leaves
a GPU taken, and a job left running by a killed launcher keeps its GPUs.

``jobs_per_gpu`` N > 1 lets up to N jobs share a GPU: each takes ``gpu-<id>`` shared (so no
exclusive job can have it meanwhile) and one of ``gpu-<id>.share-<k>``, k < N, exclusively.

Standard library only: this module is shipped to hosts with the rest of ``runtime/``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launcher_core.runtime.procs import close_if_still, fd_identity

# The same path for every user of a machine (not per uid): a sticky, world-writable directory
# like /tmp itself; lock files are world-readable (flock needs only a read-only descriptor).
DEFAULT_LOCK_DIR = "/tmp/hydra-launcher-gpus"
_LIST_LINE = re.compile(r"^GPU (\d+): ")
NVIDIA_SMI = "nvidia-smi"
SHARED_MODE = 0o644  # a machine-wide lock file: flock needs only read access, for any user


class GpuLockError(OSError):
    """The lock directory or a lock file cannot be used by this user (the message says why)."""


@dataclass
class GpuClaim:
    """GPUs held by this process through ``fds`` (open, locked file descriptions)."""

    ids: list[int]
    fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        """Close this process's descriptors: the locks go once no process holds them any more
        (a forked job keeps its own copies)."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def lock_dir(setting: str | None = None) -> Path:
    """The machine's GPU lock directory, created sticky and world-writable (like ``/tmp``) when
    missing; ``setting`` (``gpu_lock_dir``) replaces :data:`DEFAULT_LOCK_DIR`."""
    path = Path(setting or DEFAULT_LOCK_DIR).expanduser()
    try:
        path.mkdir(mode=0o1777, parents=True)
        os.chmod(path, 0o1777)  # mkdir's mode is cut by the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise GpuLockError(exc.errno, f"cannot create the GPU lock dir {path}: {exc.strerror}") from exc
    if not path.is_dir():
        raise GpuLockError(errno.ENOTDIR, f"the GPU lock dir {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        owner = path.stat().st_uid
        raise GpuLockError(
            errno.EACCES,
            f"the GPU lock dir {path} (owner uid {owner}) is not writable by uid {os.getuid()}: "
            "make it sticky and world-writable (chmod 1777) or choose another with gpu_lock_dir",
        )
    return path


def _open_lock(path: Path, mode: int) -> int:
    """A read-only descriptor of lock file ``path``, created with ``mode`` if missing.

    Opened without O_CREAT when it exists: Linux's ``fs.protected_regular`` refuses O_CREAT on
    another user's file in a sticky directory, even one we may read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(3):
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        except PermissionError as exc:
            raise GpuLockError(errno.EACCES, f"cannot open the GPU lock file {path}: {exc.strerror}") from exc
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue  # another process created it meanwhile: open theirs
        os.fchmod(fd, mode)  # the umask (the runner's is 077) must not hide a GPU lock from other users
        return fd
    raise GpuLockError(errno.EAGAIN, f"cannot open the GPU lock file {path}")


def _try_flock(path: Path, operation: int, mode: int = SHARED_MODE) -> int | None:
    """``path`` locked (``LOCK_EX`` or ``LOCK_SH``) without waiting: its descriptor, or None.
    Created with ``mode`` if missing (machine-wide locks: readable by every user)."""
    fd = _open_lock(path, mode)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GpuLockError(errno.EINVAL, f"the GPU lock file {path} is not a regular file")
    return fd


def lock_first_free(paths: Sequence[Path], wanted: int, mode: int = 0o600) -> list[tuple[int, int]] | None:
    """``wanted`` of ``paths`` locked exclusively without waiting (lowest index first), as
    ``(index, fd)``; None, with nothing kept locked, if fewer are free. A missing file is created
    with ``mode`` (private by default: remote_ssh's slots are the user's own)."""
    taken: list[tuple[int, int]] = []
    for index, path in enumerate(paths):
        if len(taken) == wanted:
            break
        fd = _try_flock(path, fcntl.LOCK_EX, mode)
        if fd is not None:
            taken.append((index, fd))
    if len(taken) < wanted:
        for _index, fd in taken:
            os.close(fd)
        return None
    return taken


def _claim_one(directory: Path, gpu: int, jobs_per_gpu: int) -> list[int] | None:
    """GPU ``gpu`` for one job: its descriptors, or None if it is full."""
    main = directory / f"gpu-{gpu}"
    if jobs_per_gpu <= 1:
        fd = _try_flock(main, fcntl.LOCK_EX)
        return None if fd is None else [fd]
    shared = _try_flock(main, fcntl.LOCK_SH)
    if shared is None:
        return None  # an exclusive job has it
    seat = lock_first_free([directory / f"gpu-{gpu}.share-{k}" for k in range(jobs_per_gpu)], 1, SHARED_MODE)
    if seat is None:
        os.close(shared)
        return None
    return [shared, seat[0][1]]


class GpuLine:
    """This process's place in the machine's line for GPUs, so that two sweeps take turns.

    A sweep whose job just ended is woken at once and would take the freed GPU again before a
    sweep that only looks now and then, for as long as it has jobs. So a process that could not
    get its GPUs joins the line (a lock file ``wait-<time>-<pid>-<its GPU ids>`` it holds while it
    waits; it dies with the process), and a process claims only if nobody still alive who may use
    one of the same GPUs joined before it. Freed GPUs then go to the longest waiter; a job of 0
    GPUs never waits in line."""

    def __init__(self, directory: Path, gpu_ids: Sequence[int]) -> None:
        self.directory = directory
        self.gpu_ids = frozenset(gpu_ids)
        self._name: str | None = None
        self._fd: int | None = None
        self._fd_identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file _fd locks
        self._fork_hook = False

    def ahead(self) -> bool:
        """Whether a live process (not this one) that may use one of our GPUs has been waiting
        longer than this one."""
        mine = None if self._name is None else _line_entry(self._name)[0]
        for name in sorted(n for n in os.listdir(self.directory) if n.startswith("wait-")):
            key, ids = _line_entry(name)
            if mine is not None and key >= mine:
                return False
            if name != self._name and ids & self.gpu_ids and _alive(self.directory / name):
                return True
        return False

    def join(self) -> None:
        if self._name is None:
            ids = ".".join(str(i) for i in sorted(self.gpu_ids))
            name = f"wait-{time.time_ns():020d}-{os.getpid()}-{ids}"
            hidden = self.directory / f".{name}"  # locked before it shows: never taken for a dead one
            fd = _try_flock(hidden, fcntl.LOCK_EX)
            if fd is not None:
                os.rename(hidden, self.directory / name)
                self._name, self._fd = name, fd
                self._fd_identity = fd_identity(fd)
                if not self._fork_hook:
                    os.register_at_fork(after_in_child=self._forget)
                    self._fork_hook = True

    def _forget(self) -> None:
        """In a forked child (a job): the place in line stays the parent's, so it goes with the
        parent and no job that outlives a killed launcher keeps others waiting for it. Only our
        own lock file's descriptor is closed: should the number have been closed and reused for
        something else (a job's exit pipe), the child keeps it."""
        if self._fd is not None:
            close_if_still(self._fd, self._fd_identity)
        self._name = self._fd = self._fd_identity = None

    def leave(self) -> None:
        if self._name is not None and self._fd is not None:
            with contextlib.suppress(OSError):
                (self.directory / self._name).unlink()
            os.close(self._fd)
        self._name = self._fd = self._fd_identity = None


def _line_entry(name: str) -> tuple[tuple[int, int], frozenset[int]]:
    """``((time, pid), GPU ids)`` of a ``wait-`` file name (an unreadable one sorts first, ids none)."""
    try:
        _wait, ns, pid, ids = name.split("-", 3)
        return (int(ns), int(pid)), frozenset(int(i) for i in ids.split(".") if i)
    except ValueError:
        return (0, 0), frozenset()


def _alive(path: Path) -> bool:
    """Whether the process that joined the line as ``path`` still holds it (a dead one's file is
    removed, where this user may)."""
    try:
        fd = _try_flock(path, fcntl.LOCK_SH)
    except OSError:
        return False
    if fd is None:
        return True
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)
    return False


def claim(
    directory: Path, gpu_ids: Sequence[int], wanted: int, jobs_per_gpu: int = 1, line: GpuLine | None = None
) -> GpuClaim | None:
    """``wanted`` GPUs out of ``gpu_ids`` (lowest first) for one job, or None, holding nothing,
    if fewer are free (or, with ``line``, if another process has been waiting longer: this one
    then joins the line). ``wanted`` 0 is an empty claim (the job sees no GPU)."""
    if wanted == 0:
        return GpuClaim([])
    if line is not None and line.ahead():
        line.join()
        return None
    held = _claim_free(directory, gpu_ids, wanted, jobs_per_gpu)
    if line is not None and held is not None:
        line.leave()
    elif line is not None:
        line.join()
    return held


def _claim_free(directory: Path, gpu_ids: Sequence[int], wanted: int, jobs_per_gpu: int) -> GpuClaim | None:
    held = GpuClaim([])
    for gpu in sorted(gpu_ids):
        if len(held.ids) == wanted:
            break
        fds = _claim_one(directory, gpu, jobs_per_gpu)
        if fds is not None:
            held.ids.append(gpu)
            held.fds.extend(fds)
    if len(held.ids) < wanted:
        held.release()
        return None
    held.fds.append(_pin_dir(directory))
    return held


def _pin_dir(directory: Path) -> int:
    """A shared lock on the lock dir itself, held with the GPUs: systemd-tmpfiles' age clean-up
    of /tmp skips a directory so locked, so a lock file held for weeks is never removed (a new
    one in its place would let a second job take the GPU)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return fd


def visible_env(gpu_ids: Sequence[int]) -> dict[str, str]:
    """What a job holding ``gpu_ids`` (nvidia-smi indices) must see: exactly those GPUs, for CUDA
    (numbered as nvidia-smi numbers them: PCI bus order) and for containers (NVIDIA's runtime);
    no GPU at all for an empty claim."""
    ids = ",".join(str(i) for i in gpu_ids)
    return {
        "CUDA_VISIBLE_DEVICES": ids,
        "NVIDIA_VISIBLE_DEVICES": ids or "none",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


def parse_gpu_list(text: str) -> list[int]:
    """GPU indices from ``nvidia-smi -L`` (``GPU 0: NVIDIA A100 (UUID: GPU-...)`` per GPU)."""
    return [int(m.group(1)) for line in text.splitlines() if (m := _LIST_LINE.match(line.strip()))]


def list_gpus(command: str = NVIDIA_SMI, timeout_s: float = 60.0) -> list[int]:
    """The GPU indices this machine's ``nvidia-smi -L`` lists. FileNotFoundError without
    ``nvidia-smi``; OSError when it fails (its message included)."""
    try:
        proc = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise OSError(errno.ETIMEDOUT, f"{command} -L did not answer in {timeout_s:g} s") from exc
    if proc.returncode != 0:
        why = (proc.stdout + proc.stderr).strip().splitlines()
        raise OSError(errno.EIO, f"{command} -L failed (exit {proc.returncode}): {why[-1] if why else 'no output'}")
    return parse_gpu_list(proc.stdout)
