"""The pieces of a workspace on another machine that every backend reaching it over SSH shares
(remote_ssh hosts and a Slurm login node): snapshot tags, job configs pointed at the remote
sweep dir, pulled results pointed back at the local one, fetch filters, and the clean script.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from launcher_core.errors import BackendError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, PullFilter
from launcher_core.remote.paths import check_root
from launcher_core.remote.ssh import SSHConnection
from launcher_core.runtime.markers import CLEANUP_FILE

log = logging.getLogger("launcher_core.remote")

def new_snapshot_tag() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@contextmanager
def remote_job_config(config: Any, remote_sweep_dir: str, rel: str) -> Iterator[Any]:
    """The job config as the host runs it: Hydra writes into the remote sweep dir, same subdir.

    The config is changed in place and restored on exit (a deep copy per job costs more
    than the rest of a submission).
    """
    from omegaconf import open_dict, read_write

    if config is None:
        raise BackendError("a job without a composed config cannot be submitted")
    sweep = config.hydra.sweep
    with read_write(sweep), open_dict(sweep):
        old_dir, old_subdir = sweep._get_node("dir")._value(), sweep._get_node("subdir")._value()
        sweep.dir, sweep.subdir = remote_sweep_dir, rel
    try:
        yield config
    finally:
        with read_write(sweep), open_dict(sweep):
            sweep.dir, sweep.subdir = old_dir, old_subdir


def runtime_cwd(config: Any) -> str | None:
    """``hydra.runtime.cwd`` of a job config (None without one)."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, "hydra.runtime.cwd", default=None) if config is not None else None
    return None if value is None else str(value)


def localize_result(path: Path, handle: Mapping[str, Any], local_dir: Path) -> None:
    """Rewrite a pulled JobReturn's paths from the host's to the local ones.

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
    remote_job = str(handle.get("remote_job_dir") or "")
    if ret.working_dir and remote_job and str(ret.working_dir).startswith(remote_job):
        ret.working_dir = str(local_dir) + str(ret.working_dir)[len(remote_job) :]
    elif ret.working_dir and ret.working_dir == handle.get("remote_cwd") and handle.get("local_cwd"):
        ret.working_dir = handle["local_cwd"]
    hydra_cfg = getattr(ret, "hydra_cfg", None)
    if hydra_cfg is not None and "hydra" in hydra_cfg:
        node = hydra_cfg.hydra
        with read_write(node.runtime), open_dict(node.runtime):
            node.runtime.output_dir = str(local_dir)
        if handle.get("local_sweep_dir"):
            with read_write(node.sweep), open_dict(node.sweep):
                node.sweep.dir = handle["local_sweep_dir"]
                node.sweep.subdir = handle["rel"]
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


def clean_root(handle: Mapping[str, Any]) -> str:
    return check_root(handle.get("remote_dir"), "the remote_dir of a job handle")


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
    handles: Mapping[str, Mapping[str, Any]],
    local_dirs: Mapping[str, Path],
    pull_filter: PullFilter | None,
) -> None:
    """Bring job dirs home: one rsync per (remote sweep dir, local sweep dir) pair, then the
    results get local paths. Handles need ``remote_sweep_dir`` and ``rel``.

    A bare pull (``pull_filter``) skips large or excluded files in a first rsync, then brings
    every job's ``.launcher`` dir whole in a second one: launcher files are never skipped.
    """
    import tempfile

    groups: dict[tuple[str, str], list[str]] = {}
    for job_id, h in handles.items():
        local_root = local_sweep_root(Path(local_dirs[job_id]), str(h["rel"]))
        groups.setdefault((str(h["remote_sweep_dir"]), str(local_root)), []).append(str(h["rel"]))
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
