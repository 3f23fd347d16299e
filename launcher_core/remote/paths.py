"""Which remote paths a launcher may fill and later delete.

Every remote dir a backend creates and every path ``launcher-core clean`` deletes (on an SSH host,
a Slurm login node or under an S3 prefix) goes through these checks: a path must be absolute,
free of ``~`` and ``..``, not a system or home dir, and strictly inside the sweep's own dirs.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Handle, remote_paths_of
from launcher_core.errors import ConfigError

if TYPE_CHECKING:
    from launcher_core.backends.base import CleanReport

_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr")


def check_remote_dir(key: str, path: str) -> None:
    """Refuse remote dirs a launcher must never fill (or later clean): the root, system dirs,
    a home dir itself, ``~user`` forms the shell would not expand once quoted, and ``..``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    why = None
    if ".." in parts:
        why = "must not contain '..'"
    elif path.startswith("~") and not path.startswith("~/"):
        why = "may start with '~/' (your home on the host) but not '~user' or '~' alone"
    elif path.startswith("~/") and len(parts) < 2:
        why = "must be a directory below your home, e.g. '~/hydra-remote-launcher', not the home itself"
    elif path.startswith("/") and (len(parts) < 2 or any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS)):
        why = "must not be the file system root, a top-level dir or a system dir"
    elif not path.startswith(("/", "~/")) and not parts:
        why = "must name a directory (relative paths are under your home on the host)"
    if why:
        raise ConfigError(f"{key} {why}, got {path!r}")


class CleanRefused(ConfigError):
    """A path to delete is empty, relative, has ``~`` or ``..``, or is outside the sweep's dirs."""


def _refuse(what: str, value: Any, why: str) -> CleanRefused:
    return CleanRefused(f"refusing to clean {what} {value!r}: {why}")


def check_root(value: Any, what: str = "remote_dir") -> str:
    """A remote root (``remote_dir`` as the host expanded it): absolute, not ``/``, not a system
    dir, a home dir itself or anything with ``~`` or ``..``. Returns it normalised."""
    if not isinstance(value, str) or not value.strip():
        raise _refuse(what, value, "it is empty")
    if "\n" in value or "\x00" in value:
        raise _refuse(what, value, "it contains a newline or NUL")
    if not value.startswith("/"):
        raise _refuse(what, value, "it is not an absolute path (the host's expanded path is expected)")
    try:
        check_remote_dir(what, value)
    except ConfigError as exc:
        raise _refuse(what, value, str(exc)) from None
    return posixpath.normpath(value)


def confined(value: Any, root: str, what: str) -> str:
    """``value`` normalised, if it is an absolute path strictly below ``root``; else CleanRefused
    naming the value. ``root`` must already be checked (:func:`check_root`)."""
    if not isinstance(value, str) or not value.strip() or value.strip() == "/":
        raise _refuse(what, value, "it is empty or the file system root")
    if "\n" in value or "\x00" in value:
        raise _refuse(what, value, "it contains a newline or NUL")
    if value.startswith("~"):
        raise _refuse(what, value, "'~' is not expanded here: an absolute path on the host is expected")
    if not value.startswith("/"):
        raise _refuse(what, value, "it is not an absolute path")
    if ".." in value.split("/"):
        raise _refuse(what, value, "it contains '..'")
    norm = posixpath.normpath(value)
    if not norm.startswith(root.rstrip("/") + "/"):
        raise _refuse(what, value, f"it is outside {root!r}")
    return norm


def empty_parents(path: str, stop: str) -> list[str]:
    """The dirs between ``path`` (excluded) and ``stop`` (excluded), deepest first: removed with
    ``rmdir`` after a sweep dir, so ``runs/multirun/2024-05-01`` does not linger empty."""
    out = []
    current = posixpath.dirname(path)
    for _ in range(64):  # bounded: paths are never that deep
        if current == stop or not current.startswith(stop + "/"):
            break
        out.append(current)
        current = posixpath.dirname(current)
    return out


# --- remote layout (remote_ssh and slurm login_host share it) --------------------------------
@dataclass
class RemoteJob:
    job_id: str
    sweep_dir: str
    job_dir: str


@dataclass
class RemoteSweep:
    sweep_dir: str
    snapshots: str  # <remote_dir>/snapshots/<sweep_id>: every launch's snapshot of this sweep
    parents: list[str]  # empty dirs to rmdir after the sweep dir, deepest first


@dataclass
class RemotePlan:
    """What to delete on one host."""

    jobs: list[RemoteJob] = field(default_factory=list)
    sweeps: list[RemoteSweep] = field(default_factory=list)


def remote_sweep_dir(handle: Handle, remote_dir: str) -> str:
    return confined(remote_paths_of(handle).remote_sweep_dir, f"{remote_dir}/runs", "the remote sweep dir")


def plan_remote(
    handles: Mapping[str, Handle],
    *,
    sweep_id: str,
    sweep_handles: Mapping[str, Handle] | None,
    host_of: Callable[[Handle], str],
    remote_dir_of: Callable[[Handle], str],
) -> dict[str, RemotePlan]:
    """Per host, the job dirs of ``handles`` and (with ``sweep_handles``: every job of the sweep)
    the sweep dirs and snapshot dirs; every path checked before anything is contacted."""
    if not sweep_id or "/" in sweep_id or sweep_id in (".", ".."):
        raise _refuse("the sweep id", sweep_id, "it is not a plain name")
    plans: dict[str, RemotePlan] = {}
    for job_id, handle in handles.items():
        root = remote_dir_of(handle)
        sweep_dir = remote_sweep_dir(handle, root)
        job_dir = confined(remote_paths_of(handle).remote_job_dir, sweep_dir, f"the remote dir of job {job_id}")
        plans.setdefault(host_of(handle), RemotePlan()).jobs.append(RemoteJob(job_id, sweep_dir, job_dir))
    seen: set[tuple[str, str]] = set()
    for handle in (sweep_handles or {}).values():
        host, root = host_of(handle), remote_dir_of(handle)
        sweep_dir = remote_sweep_dir(handle, root)
        if (host, sweep_dir) in seen:
            continue
        seen.add((host, sweep_dir))
        snapshots = confined(f"{root}/snapshots/{sweep_id}", f"{root}/snapshots", "the snapshot dir")
        sweep = RemoteSweep(sweep_dir, snapshots, empty_parents(sweep_dir, f"{root}/runs"))
        plans.setdefault(host, RemotePlan()).sweeps.append(sweep)
    return plans


def plan_targets(report: CleanReport, plans: Mapping[str, RemotePlan]) -> None:
    """Fill ``report.targets`` / ``report.jobs`` from remote plans."""
    for host, plan in plans.items():
        report.jobs[host] = len(plan.jobs)
        for job in plan.jobs:
            report.add_target(host, job.job_dir)
        for sweep in plan.sweeps:
            report.add_target(host, sweep.sweep_dir)
            report.add_target(host, sweep.snapshots)


# --- which jobs ------------------------------------------------------------------------------
