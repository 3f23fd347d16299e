"""The pieces of a workspace on another machine that every backend reaching it over SSH shares
(remote_ssh hosts and a Slurm login node): snapshot tags, job configs pointed at the remote
sweep dir, pulled results pointed back at the local one, fetch filters, and the clean script.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Handle, remote_paths_of
from launcher_core.errors import BackendError, ConfigError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, PullFilter
from launcher_core.remote.paths import RemotePlan, check_root
from launcher_core.remote.scripts import parse_kv, setup_failure
from launcher_core.remote.ssh import RemoteCommandError, SSHConnection
from launcher_core.runtime.markers import CLEANUP_FILE

if TYPE_CHECKING:
    from launcher_core.backends.base import CleanReport, CleanRequest

log = logging.getLogger("launcher_core.remote")


def new_snapshot_tag() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def runtime_cwd(config: Any) -> str | None:
    """``hydra.runtime.cwd`` of a job config (None without one)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, "hydra.runtime.cwd", default=None) if config is not None else None
    return None if value is None else str(value)


def localize_result(path: Path, handle: Handle, local_dir: Path) -> None:
    """Rewrite a pulled JobReturn's paths from the host's to the local ones (the handle's
    :meth:`~launcher_core.backends.base.JobHandle.remote_paths`; a plain JSON handle with the
    same keys will do).

    The job ran in the remote sweep dir; locally its files are in ``local_dir``, and Hydra code
    reading ``JobReturn.working_dir`` / ``hydra.runtime.output_dir`` must find them there.
    Left unchanged if the result cannot be loaded here (the caller reports that when it reads it).
    """
    import cloudpickle
    from omegaconf import open_dict, read_write

    from launcher_core.runtime.worker import atomic_write_bytes, load_job_return

    if not path.exists():
        return
    try:
        ret = load_job_return(path)
    except Exception as exc:  # noqa: BLE001 - reported when the controller loads it
        log.debug("cannot localise %s: %s", path, exc)
        return
    paths = remote_paths_of(handle)
    remote_job = str(paths.remote_job_dir or "")
    if ret.working_dir and remote_job and str(ret.working_dir).startswith(remote_job):
        ret.working_dir = str(local_dir) + str(ret.working_dir)[len(remote_job) :]
    elif ret.working_dir and ret.working_dir == paths.remote_cwd and paths.local_cwd:
        ret.working_dir = paths.local_cwd
    hydra_cfg = getattr(ret, "hydra_cfg", None)
    if hydra_cfg is not None and "hydra" in hydra_cfg:
        node = hydra_cfg.hydra
        with read_write(node.runtime), open_dict(node.runtime):
            node.runtime.output_dir = str(local_dir)
        if paths.local_sweep_dir:
            with read_write(node.sweep), open_dict(node.sweep):
                node.sweep.dir = paths.local_sweep_dir
                node.sweep.subdir = paths.rel
    atomic_write_bytes(path, cloudpickle.dumps(ret))


def fetch_filter_args(pull_filter: PullFilter | None) -> list[str]:
    """rsync options of a fetch: never the payload back; a bare pull skips big/excluded files."""
    args = [f"--exclude={LAUNCHER_DIR}/job.pkl", f"--exclude={LAUNCHER_DIR}/{CLEANUP_FILE}"]
    if pull_filter is None or not pull_filter.is_bare:
        return args
    args.append(f"--include={LAUNCHER_DIR}/***")
    args += [f"--exclude={pattern}" for pattern in pull_filter.exclude]
    if pull_filter.max_size_bytes is not None:
        args.append(f"--max-size={int(pull_filter.max_size_bytes)}")
    return args


CLEAN_CHUNK = 500  # job dirs per clean script (one ssh command each)


def clean_root(handle: Handle) -> str:
    return check_root(remote_paths_of(handle).remote_dir, "the remote_dir of a job handle")


def clean_host(conn: SSHConnection, sweep_id: str, plan: Any) -> tuple[set[str], list[str], bool]:
    """Run the clean script on one host, in chunks; the sweep-level part goes with the last one.

    Returns (job ids whose dirs are gone, notes, whether every sweep-level part is gone).
    """
    from launcher_core.remote.scripts import clean_script, parse_clean

    cleaned: set[str] = set()
    notes: list[str] = []
    jobs = [(j.job_id, j.sweep_dir, j.job_dir) for j in plan.jobs]
    chunks = [jobs[i : i + CLEAN_CHUNK] for i in range(0, len(jobs), CLEAN_CHUNK)] or [[]]
    sweeps_done = True
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        sweeps = [(s.sweep_dir, s.snapshots, s.parents) for s in plan.sweeps] if last else []
        script = clean_script(sweep_id=sweep_id, jobs=chunk, sweeps=sweeps)
        timeout = max(conn.options.command_timeout_s, 600.0)  # rm -rf of big job dirs takes a while
        out = conn.call("clean", lambda s=script, t=timeout: conn.run_script(s, what="clean", timeout_s=t))
        done, refused, swept, kept = parse_clean(out)
        cleaned |= done & {j for j, _s, _d in chunk}
        if refused:
            notes.append(f"{len(refused)} job dirs kept: their sweep dir is not claimed by sweep {sweep_id}")
        notes += [f"sweep dir kept: {d} (holds another sweep, or is not this sweep's)" for d in sorted(kept)]
        if sweeps and len(swept) < len(sweeps):
            sweeps_done = False
    return cleaned, notes, sweeps_done


def local_sweep_root(local_dir: Path, rel: str) -> Path:
    """The local sweep dir of a job: its output dir without the trailing subdir ``rel``."""
    parts = Path(rel).parts
    if local_dir.parts[-len(parts) :] != parts:
        raise BackendError(f"local dir {local_dir} does not end with the job's subdir {rel}")
    return Path(*local_dir.parts[: -len(parts)]) if len(local_dir.parts) > len(parts) else Path("/")


def fetch_job_dirs(
    conn: SSHConnection,
    handles: Mapping[str, Handle],
    local_dirs: Mapping[str, Path],
    pull_filter: PullFilter | None,
) -> None:
    """Bring job dirs home: one rsync per (remote sweep dir, local sweep dir) pair, then the
    results get local paths. Handles' remote paths need ``remote_sweep_dir`` and ``rel``.

    A bare pull (``pull_filter``) skips large or excluded files in a first rsync, then brings
    every job's ``.launcher`` dir whole in a second one: launcher files are never skipped.
    """
    import tempfile

    groups: dict[tuple[str, str], list[str]] = {}
    for job_id, h in handles.items():
        sweep_dir, rel = _sweep_and_rel(h)
        local_root = local_sweep_root(Path(local_dirs[job_id]), rel)
        groups.setdefault((sweep_dir, str(local_root)), []).append(rel)
    for (remote_sweep, local_root), rels in groups.items():
        Path(local_root).mkdir(parents=True, exist_ok=True)
        unique = sorted(set(rels))
        passes = [(unique, fetch_filter_args(pull_filter))]
        if pull_filter is not None and pull_filter.is_bare:
            passes.append(([f"{r}/{LAUNCHER_DIR}" for r in unique], fetch_filter_args(None)))
        for paths, filters in passes:
            with tempfile.NamedTemporaryFile("w", prefix="hrl-fetch-", suffix=".txt") as listing:
                listing.write("".join(f"{p}\n" for p in paths))
                listing.flush()
                args = ["-a", "-r", f"--files-from={listing.name}", *filters]
                args += [conn.remote(remote_sweep + "/"), f"{local_root}/"]
                conn.call(f"download of {len(unique)} job dirs", lambda a=args: conn.rsync(a, what="result download"))
    for job_id, h in handles.items():
        local_dir = Path(local_dirs[job_id])
        localize_result(local_dir / LAUNCHER_DIR / RESULT_FILE, h, local_dir)


# one line of ``rsync --list-only``: permissions, size (with or without thousands separators), date, time, name
_LISTING_LINE = re.compile(rb"^(\S{10})\s+([\d,.]+)\s+\S+\s+\S+\s(.*)$")


def _sweep_and_rel(handle: Handle) -> tuple[str, str]:
    """The remote sweep dir of a job's handle and the job's subdir of it (a BackendError without)."""
    paths = remote_paths_of(handle)
    if paths.remote_sweep_dir is None or paths.rel is None:
        raise BackendError(f"a job handle without a remote sweep dir and subdir: {paths}")
    return str(paths.remote_sweep_dir), str(paths.rel)


def list_job_files(conn: SSHConnection, handles: Mapping[str, Handle]) -> dict[str, list[tuple[str, int]]]:
    """The files of job dirs on the host as a full fetch would bring them: ``{job_id: [(path in the
    job dir, size)]}``. One ``rsync --list-only`` per remote sweep dir (rsync is all a host needs)."""
    import tempfile

    groups: dict[str, dict[str, str]] = {}
    for job_id, h in handles.items():
        sweep_dir, rel = _sweep_and_rel(h)
        groups.setdefault(sweep_dir, {})[rel.strip("/")] = job_id
    out: dict[str, list[tuple[str, int]]] = {job_id: [] for job_id in handles}
    for remote_sweep, by_rel in groups.items():
        # rsync wants a destination with --files-from; --list-only writes nothing into it
        with (
            tempfile.NamedTemporaryFile("w", prefix="hrl-list-", suffix=".txt") as listing,
            tempfile.TemporaryDirectory(prefix="hrl-list-") as unused_dest,
        ):
            listing.write("".join(f"{rel}\n" for rel in sorted(by_rel)))
            listing.flush()
            args = ["-r", "--list-only", "--no-human-readable", f"--files-from={listing.name}"]
            args += [*fetch_filter_args(None), conn.remote(remote_sweep + "/"), f"{unused_dest}/"]
            text = conn.call("listing job files", lambda a=args: conn.rsync(a, what="file listing"))
        for path, size in _parse_listing(text or b""):
            rel = _owning_rel(path, by_rel)
            if rel is not None:
                out[by_rel[rel]].append((path[len(rel) + 1 :], size))
    return out


def _parse_listing(text: bytes) -> list[tuple[str, int]]:
    """(path, size) of the regular files in rsync's listing (names with rsync's ``\\#ooo`` escapes decoded)."""
    files = []
    for line in text.splitlines():
        match = _LISTING_LINE.match(line)
        if not match or not match.group(1).startswith(b"-"):
            continue
        raw = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), match.group(3))
        files.append((raw.decode(errors="surrogateescape"), int(match.group(2).replace(b",", b"").replace(b".", b""))))
    return files


def _owning_rel(path: str, rels: Mapping[str, str]) -> str | None:
    """The job subdir (``rel``) a listed path lies in (the longest match: subdirs may nest)."""
    parts = path.split("/")
    for n in range(len(parts) - 1, 0, -1):
        rel = "/".join(parts[:n])
        if rel in rels:
            return rel
    return None


# --- the workspace on a host: claim, code snapshot, runtime, uploads, logs, clean -------------------
def default_remote_dir(code_dir: Path | str) -> str:
    """Where a host keeps snapshots and sweep dirs when no ``remote_dir`` is set."""
    return f"~/hydra-remote-launcher/{Path(code_dir).name}"


def path_inside(path: Path | str, base: Path | str) -> str | None:
    """``path`` relative to ``base`` (both resolved) as a POSIX string; None unless strictly inside.
    The sweep dir inside the code dir is mirrored as ``<remote_dir>/runs/<this>`` on a host (else
    ``runs/by-id/<sweep_id>``); a job dir inside the sweep dir keeps this subdir there."""
    try:
        rel = Path(path).resolve().relative_to(Path(base).resolve())
    except (ValueError, OSError):
        return None
    text = rel.as_posix()
    return None if text in ("", ".") or "\n" in text else text


@dataclass(frozen=True)
class RemoteWorkspace:
    """A sweep's dirs on one host, as :func:`claim_workspace` found them (paths on the host)."""

    remote_dir: str
    sweep_dir: str  # the mirrored sweep dir, claimed for this sweep
    snapshot: str  # <remote_dir>/snapshots/<sweep_id>/<tag>: this launch's code snapshot
    snapshot_name: str  # <sweep_id>/<tag>, what snapshots/LATEST names once it is complete
    snapshot_complete: bool  # an earlier launch with the same tag finished it already
    latest: str | None  # the previous complete snapshot (rsync --link-dest), if any
    container_image: str | None = None  # the image's path there (``~/`` expanded), when asked


def claim_workspace(
    conn: SSHConnection,
    *,
    remote_dir: str,
    sweep_id: str,
    tag: str,
    rel_sweep: str | None,
    host_key: str,
    container_image: str | None = None,
    where: str | None = None,
) -> RemoteWorkspace:
    """Run :func:`~launcher_core.remote.scripts.prepare_script` on the host: create the dirs, claim
    the mirrored sweep dir and report the layout. With ``container_image`` (a path on the host) a
    missing or unreadable image is a ConfigError naming ``hydra.launcher.container.image``.
    ``where`` names the host in errors (default ``host <label>``)."""
    from launcher_core.remote.scripts import parse_kv, prepare_script

    script = prepare_script(
        remote_dir=remote_dir,
        sweep_id=sweep_id,
        tag=tag,
        rel_sweep=rel_sweep,
        host_key=host_key,
        container_image=container_image,
    )
    info = parse_kv(conn.call("preparing the remote dirs", lambda: conn.run_script(script, what="prepare")))
    answers = {"container_image_missing": "no image", "container_image_unreadable": "cannot read the image"}
    for marker, what in answers.items():
        if marker in info:
            resolved = info[marker]
            shown = repr(container_image) if resolved == container_image else f"{container_image!r} ({resolved})"
            raise ConfigError(
                f"hydra.launcher.container.image: {what} at {shown} on host {conn.label} "
                "(a .sif file or a sandbox directory)"
            )
    if "remote_dir" not in info or "sweep_dir" not in info:
        raise BackendError(f"{where or f'host {conn.label}'}: unexpected answer while preparing: {info}")
    return RemoteWorkspace(
        remote_dir=info["remote_dir"],
        sweep_dir=info["sweep_dir"],
        snapshot=f"{info['remote_dir']}/snapshots/{sweep_id}/{tag}",
        snapshot_name=f"{sweep_id}/{tag}",
        snapshot_complete=bool(info.get("snapshot_complete")),
        latest=info.get("latest"),
        container_image=info.get("container_image"),
    )


def sync_code_snapshot(
    conn: SSHConnection,
    workspace: RemoteWorkspace,
    code_dir: Path,
    local_sweep_dir: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
    prelude: str = "",
    uv_sync: str | None = None,
    check: SnapshotCheck | None = None,
) -> None:
    """Fill the workspace's new snapshot with the code dir (one rsync, ``--link-dest`` on the
    previous snapshot; ``exclude`` defaults to :data:`~launcher_core.remote.codesync.DEFAULT_EXCLUDES`,
    and the local sweep dir is left out when it lies in the code dir), then run
    :func:`~launcher_core.remote.scripts.finish_snapshot_script` (``prelude`` and ``uv sync`` first,
    then the snapshot is marked complete and becomes ``snapshots/LATEST``).

    Before any job starts there, a set-up line of ``prelude`` that fails (``checked_lines``) or
    a failing ``uv sync`` is a :class:`ConfigError` naming the host, the line and its message;
    ``check`` then judges the Python the jobs will run, in the environment they will have."""
    from launcher_core.remote.codesync import DEFAULT_EXCLUDES, excludes_for_local_outputs, filter_args, sync_snapshot
    from launcher_core.remote.scripts import finish_snapshot_script

    filters = filter_args(
        include,
        DEFAULT_EXCLUDES if exclude is None else exclude,
        excludes_for_local_outputs(code_dir, local_sweep_dir),
    )
    tic = time.monotonic()
    conn.call(
        "code sync",
        lambda: sync_snapshot(
            conn, code_dir, workspace.snapshot, filters=filters, link_dest=workspace.latest, extra_args=extra_args
        ),
    )
    finish = finish_snapshot_script(
        prelude=prelude,
        remote_dir=workspace.remote_dir,
        snapshot=workspace.snapshot,
        latest=workspace.snapshot_name,
        uv_sync=uv_sync,
        probe=check.probe if check else None,
    )
    try:
        answer = conn.call("finishing the code snapshot", lambda: conn.run_script(finish, what="snapshot setup"))
    except RemoteCommandError as exc:
        reason = setup_failure(parse_kv(str(exc)))
        if reason is None:
            raise
        raise ConfigError(f"host {conn.label}: {reason}") from None
    info = parse_kv(answer)
    if "uv_sync_failed" in info:
        said = [line[len("HRL-UV ") :] for line in answer.splitlines() if line.startswith("HRL-UV ")]
        raise ConfigError(
            f"host {conn.label}: `{info['uv_sync_failed']}` failed in the code snapshot {workspace.snapshot} "
            f"(hydra.launcher.env.setup=uv):\n  " + "\n  ".join(said or ["(no output)"])
        )
    log.info("code synced to %s:%s in %.1f s", conn.label, workspace.snapshot, time.monotonic() - tic)
    if check is not None:
        check.judge(answer)


@dataclass(frozen=True)
class SnapshotCheck:
    """What host preparation checks once a new snapshot's environment exists, before any job
    starts there: ``probe`` (a shell command that prints the pre-flight probe's answer) runs in
    the snapshot after the set-up lines and ``uv sync``, and ``judge`` gets the script's output
    and raises :class:`ConfigError` when the jobs could not run there."""

    probe: str | None
    judge: Callable[[str], None]


def ship_runtime(local_sweep_dir: Path, pylib_rel: Path | str) -> list[str]:
    """Copy the job-side package (:mod:`launcher_core.runtime`) to ``<local sweep dir>/<pylib_rel>``,
    to be uploaded with the payloads and put first on the jobs' PYTHONPATH (the host needs only
    hydra-core, omegaconf and cloudpickle); returns the files, relative to the local sweep dir."""
    from launcher_core.runtime import copy_runtime

    return [str(p.relative_to(local_sweep_dir)) for p in copy_runtime(Path(local_sweep_dir) / pylib_rel)]


def upload_files(conn: SSHConnection, local_root: Path, remote_root: str, files: Sequence[str], *, what: str) -> None:
    """One rsync of ``files`` (paths relative to ``local_root``) to the same paths under
    ``remote_root`` on the host."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", prefix="hrl-files-", suffix=".txt") as listing:
        listing.write("".join(f"{f}\n" for f in files))
        listing.flush()
        args = ["-a", f"--files-from={listing.name}", f"{local_root}/", conn.remote(remote_root + "/")]
        conn.call(what, lambda: conn.rsync(args, what=what))


def read_remote_log(conn: SSHConnection, path: str, offset: int) -> bytes:
    """The bytes of a log file on the host from ``offset`` on (nothing while it does not exist)."""
    from launcher_core.remote.scripts import read_log_script

    script = read_log_script(path, offset)
    return conn.call("reading a job log", lambda: conn.run_script_bytes(script, what="log read"))


def clean_workspaces(
    request: CleanRequest,
    *,
    host_of: Callable[[Handle], str],
    remote_dir_of: Callable[[Handle], str],
    run: Callable[[Mapping[str, RemotePlan]], tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> CleanReport:
    """``Backend.clean`` on SSH hosts: every path is planned and checked
    (:func:`~launcher_core.remote.paths.plan_remote`) before any host is contacted; ``run(plans)``
    runs :func:`clean_host` per host and returns ``(its results by host, errors by host)``."""
    from launcher_core.backends.base import CleanReport
    from launcher_core.remote.paths import plan_remote, plan_targets

    sweep_handles = request.sweep_handles
    plans = plan_remote(
        request.handles,
        sweep_id=request.sweep_id,
        sweep_handles=sweep_handles,
        host_of=host_of,
        remote_dir_of=remote_dir_of,
    )
    report = CleanReport()
    plan_targets(report, plans)
    if request.dry_run or not plans:
        report.sweep_cleaned = not request.dry_run and sweep_handles is not None
        return report
    results, errors = run(plans)
    for label, (cleaned, notes, sweeps_done) in results.items():
        report.cleaned |= cleaned
        report.notes += [f"{label}: {n}" for n in notes]
        if not sweeps_done:
            report.notes.append(f"{label}: sweep-level files kept")
    report.errors = [str(e) for e in errors.values()]
    report.sweep_cleaned = sweep_handles is not None and not errors and all(d for _c, _n, d in results.values())
    return report
