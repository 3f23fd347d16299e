"""Finding a sweep's jobs and files by their config: ``launcher-core link | files``.

* ``link SWEEP DEST [--by k1,k2]``: a tree of symlinks named from config values
  (``DEST/model=cnn,lr=0.001 -> <job dir>``) for TensorBoard and humans. It replaces only its own
  links (symlinks into this sweep's dir); anything else in the way stops it before it changes
  anything.
* ``files SWEEP PATTERN [--copy DEST]``: the files matching a glob in every job, with the job's
  swept values; files still on the backend (jobs not pulled, or pulled ``--bare``) are listed as
  remote and fetched (a full pull of those jobs) on ``--copy``.

The commands themselves (argument parsing, printing) are :mod:`launcher_core.results.commands`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState, PullFilter
from launcher_core.overrides import format_value
from launcher_core.results.loading import load, results_are_local
from launcher_core.results.table import ResultRow, Results, union_keys
from launcher_core.state import JobRow, StateStore
from launcher_core.sweeps import fetch_rows, sweep_lock_waiting

MAX_NAME_BYTES = 255  # a file name on Linux file systems


# --- names from config values ---------------------------------------------------------------
def job_names(table: Results, keys: Sequence[str]) -> dict[int, str]:
    """``{job number: "model=cnn,lr=0.001"}``; jobs that would share a name get ``,#<num>``."""
    names = {row.num: _name(row, keys) for row in table}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name] = seen.get(name, 0) + 1
    return {num: f"{name},#{num}" if seen[name] > 1 else name for num, name in names.items()}


def _name(row: ResultRow, keys: Sequence[str]) -> str:
    parts = [f"{key}={format_value(row.params.get(key)) if key in row.params else '-'}" for key in keys]
    name = _safe(",".join(parts) or f"#{row.num}")
    if len(name.encode()) > MAX_NAME_BYTES - 12:  # room for ",#<num>"; keep it unique with a hash
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME_BYTES - 24].decode(errors="ignore") + "~" + digest
    return name


def _safe(name: str) -> str:
    """A single path component: ``/`` and NUL percent-encoded, never ``.``/``..``."""
    name = name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    return "%2E" + name[1:] if name in (".", "..") else name


def _check_keys(table: Results, keys: Sequence[str]) -> None:
    known = union_keys(r.params for r in table)
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(f"--by {','.join(unknown)}: not a key of this sweep's overrides; keys: {', '.join(known)}")


# --- link ---------------------------------------------------------------------------------------
@dataclass
class LinkReport:
    created: int = 0
    replaced: int = 0
    unchanged: int = 0
    skipped: list[int] | None = None  # job numbers whose output dir is not here (not pulled)


def link_sweep(sweep_dir: Path, dest: Path, by: Sequence[str] | None = None) -> LinkReport:
    """Symlink every job's output dir into ``dest`` under a name made of its config values."""
    table = load(sweep_dir, values=False)
    keys = list(by) if by else table.swept_keys
    _check_keys(table, keys)
    names = job_names(table, keys)
    targets = {names[r.num]: r.output_dir.resolve() for r in table if r.output_dir.is_dir()}
    report = LinkReport(skipped=[r.num for r in table if not r.output_dir.is_dir()])
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"link destination {dest} exists and is not a directory")
    sweep_root = Path(sweep_dir).resolve()
    for name in targets:  # check everything first: refuse before changing anything
        _check_replaceable(dest / name, sweep_root)
    dest.mkdir(parents=True, exist_ok=True)
    for name, target in targets.items():
        path = dest / name
        if path.is_symlink():
            if Path(os.readlink(path)) == target:
                report.unchanged += 1
                continue
            report.replaced += 1
        else:
            report.created += 1
        tmp = dest / f".{name[:200]}.hrl-link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, path)  # atomic: the old link or the new one, never none
    return report


def _check_replaceable(path: Path, sweep_root: Path) -> None:
    """Only our own links may be replaced: symlinks pointing into this sweep's dir."""
    if not path.is_symlink():
        if path.exists():
            raise ConfigError(f"{path} exists and is not a link made by `launcher-core link`: refusing to replace it")
        return
    target = Path(os.path.normpath(path.parent / os.readlink(path)))
    if sweep_root != target and sweep_root not in target.parents:
        raise ConfigError(f"{path} is a symlink to {target}, outside this sweep: refusing to replace it")


# --- files ----------------------------------------------------------------------------------------
@dataclass
class FileEntry:
    num: int
    params: dict[str, Any]
    path: str  # relative to the job's output dir
    size: int | None
    where: str  # "local" or "remote"
    local_path: Path


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob relative to a job dir as a regex: ``*``/``?``/``[...]`` within one path component,
    ``**`` across any number of them (``ckpt/*.pt``, ``**/events.*``)."""
    if not pattern or pattern.startswith("/") or ".." in pattern.split("/"):
        raise ConfigError(f"pattern {pattern!r}: give a glob relative to each job's dir, e.g. 'ckpt/*.pt'")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def local_matches(job_dir: Path, regex: re.Pattern[str]) -> dict[str, int]:
    """``{relative path: size}`` of the files under ``job_dir`` the pattern matches."""
    found: dict[str, int] = {}
    if not job_dir.is_dir():
        return found
    for root, _dirs, files in os.walk(job_dir):
        rel_root = os.path.relpath(root, job_dir)
        for name in files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if regex.fullmatch(rel):
                try:
                    found[rel] = (Path(root) / name).stat().st_size
                except OSError:
                    continue
    return found


def _on_backend(row: JobRow, local_backend: bool) -> bool:
    """Whether some of the job's files may exist only on the backend."""
    if local_backend or row.cleaned_at is not None:
        return False
    not_pulled = row.state in (JobState.COMPLETED, JobState.FAILED)
    bare = row.state is JobState.PULLED and row.pull_mode == "bare"
    return not_pulled or bare


def find_files(sweep_dir: Path, pattern: str) -> tuple[Results, list[FileEntry], list[str]]:
    """Every file matching ``pattern`` in every job, local or on the backend; plus notes."""
    regex = glob_regex(pattern)
    table = load(sweep_dir, values=False)
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        meta = store.meta()
        job_rows = {r.idx: r for r in store.jobs()}
    local_backend = results_are_local(meta)
    remote_rows = [r for r in job_rows.values() if _on_backend(r, local_backend)]
    remote, notes = _remote_listing(meta, remote_rows)
    entries: list[FileEntry] = []
    for row in table:
        found = local_matches(row.output_dir, regex)
        entries += [FileEntry(row.num, row.params, p, s, "local", row.output_dir / p) for p, s in sorted(found.items())]
        job = job_rows[row.num]
        for rel, size in sorted(remote.get(job.job_id, [])):
            if regex.fullmatch(rel) and found.get(rel) != size:
                entries.append(FileEntry(row.num, row.params, rel, size, "remote", row.output_dir / rel))
    entries.sort(key=lambda e: (e.num, e.path))
    return table, entries, notes


Listing = Mapping[str, list[tuple[str, int]]]


def _remote_listing(meta: Mapping[str, Any], rows: list[JobRow]) -> tuple[Listing, list[str]]:
    if not rows:
        return {}, []
    from launcher_core.backends import backend_for_meta

    backend = backend_for_meta(meta)
    try:
        listing = backend.list_files({r.job_id: r.handle or {} for r in rows})
    finally:
        backend.close()
    if listing is None:
        return {}, [f"{len(rows)} jobs are not pulled and {backend.name} cannot list them: run `launcher-core pull`"]
    return listing, []


def copy_files(sweep_dir: Path, entries: list[FileEntry], dest: Path, names: Mapping[int, str]) -> int:
    """Copy the entries to ``DEST/<job name>/<path>``; jobs with remote entries are fetched first
    (a full pull of those jobs, recorded in the state store as the pull daemon does)."""
    targets = {(e.num, e.path): dest / names[e.num] / e.path for e in entries}
    for entry in entries:  # never overwrite a different file
        target = targets[(entry.num, entry.path)]
        if target.exists() and not (entry.where == "local" and _same_file(entry.local_path, target)):
            raise ConfigError(f"{target} exists: refusing to overwrite it (copy into an empty DEST)")
    _fetch_jobs(sweep_dir, sorted({e.num for e in entries if e.where == "remote"}))
    copied = 0
    for entry in entries:
        target = targets[(entry.num, entry.path)]
        if not entry.local_path.is_file():
            raise ConfigError(f"job #{entry.num}: {entry.path} did not arrive from the backend")
        if target.exists() and _same_file(entry.local_path, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(entry.local_path, target)
        copied += 1
    return copied


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return sa.st_size == sb.st_size and int(sa.st_mtime) == int(sb.st_mtime)


def _fetch_jobs(sweep_dir: Path, nums: Sequence[int]) -> None:
    """A full pull of the given jobs, under the sweep's pull lock (another pull waits or skips)."""
    if not nums:
        return
    from launcher_core.backends import backend_for_meta

    with sweep_lock_waiting(sweep_dir) as locked:
        if not locked:
            raise ConfigError(f"a pull process holds {sweep_dir}: retry when it is done")
        with StateStore.for_sweep_dir(sweep_dir) as store:
            rows = [r for r in store.jobs() if r.idx in set(nums)]
            backend = backend_for_meta(store.meta())
            try:
                fetch_rows(backend, store, rows, PullFilter())
            finally:
                backend.close()
