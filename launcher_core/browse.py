"""Finding a sweep's jobs by their config: ``launcher-core results | report | link | files``.

* ``link SWEEP DEST [--by k1,k2]``: a tree of symlinks named from config values
  (``DEST/model=cnn,lr=0.001 -> <job dir>``) for TensorBoard and humans. It replaces only its own
  links (symlinks into this sweep's dir); anything else in the way stops it before it changes
  anything.
* ``files SWEEP PATTERN [--copy DEST]``: the files matching a glob in every job, with the job's
  swept values; files still on the backend (jobs not pulled, or pulled ``--bare``) are listed as
  remote and fetched (a full pull of those jobs) on ``--copy``.

The commands' argparse registration lives here too (:func:`add_commands`), so ``cli.py`` only
calls it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core import results as res
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState, PullFilter
from launcher_core.state import JobRow, StateStore
from launcher_core.sweeps import fetch_rows, one_sweep, sweep_lock_waiting

MAX_NAME_BYTES = 255  # a file name on Linux file systems


# --- names from config values ---------------------------------------------------------------
def job_names(table: res.Results, keys: Sequence[str]) -> dict[int, str]:
    """``{job number: "model=cnn,lr=0.001"}``; jobs that would share a name get ``,#<num>``."""
    names = {row.num: _name(row, keys) for row in table}
    seen: dict[str, int] = {}
    for name in names.values():
        seen[name] = seen.get(name, 0) + 1
    return {num: f"{name},#{num}" if seen[name] > 1 else name for num, name in names.items()}


def _name(row: res.ResultRow, keys: Sequence[str]) -> str:
    parts = [f"{key}={res.format_value(row.params.get(key)) if key in row.params else '-'}" for key in keys]
    name = _safe(",".join(parts) or f"#{row.num}")
    if len(name.encode()) > MAX_NAME_BYTES - 12:  # room for ",#<num>"; keep it unique with a hash
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = name.encode()[: MAX_NAME_BYTES - 24].decode(errors="ignore") + "~" + digest
    return name


def _safe(name: str) -> str:
    """A single path component: ``/`` and NUL percent-encoded, never ``.``/``..``."""
    name = name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    return "%2E" + name[1:] if name in (".", "..") else name


def _check_keys(table: res.Results, keys: Sequence[str]) -> None:
    known = res._union_keys(r.params for r in table)
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
    table = res.load(sweep_dir, values=False)
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


def find_files(sweep_dir: Path, pattern: str) -> tuple[res.Results, list[FileEntry], list[str]]:
    """Every file matching ``pattern`` in every job, local or on the backend; plus notes."""
    regex = glob_regex(pattern)
    table = res.load(sweep_dir, values=False)
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        meta = store.meta()
        job_rows = {r.idx: r for r in store.jobs()}
    local_backend = meta.get("backend") == "local_pool" or res._shared_fs_slurm(meta)
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


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


# --- the commands ---------------------------------------------------------------------------
def _sweep(target: str) -> Path:
    return one_sweep(target)


def cmd_results(args: argparse.Namespace) -> int:
    table = res.load(_sweep(args.sweep), metrics_file=args.metrics)
    selected, columns = res.select(table, where=args.where, sort=args.sort, top=args.top, columns=args.columns)
    res.print_results(selected, columns, args.format)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from launcher_core.report import write_report

    sweep_dir = _sweep(args.sweep)
    out = Path(args.output) if args.output else sweep_dir / "report.html"
    path = write_report(sweep_dir, out, metric=args.metric, metrics_file=args.metrics)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    report = link_sweep(_sweep(args.sweep), Path(args.dest), by)
    print(
        f"{args.dest}: {report.created} links created, {report.replaced} replaced, {report.unchanged} unchanged"
        + (f"; {len(report.skipped or [])} jobs have no local dir yet (pull them)" if report.skipped else "")
    )
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    sweep_dir = _sweep(args.sweep)
    table, entries, notes = find_files(sweep_dir, args.pattern)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.copy:
        names = job_names(table, table.swept_keys)
        copied = copy_files(sweep_dir, entries, Path(args.copy), names)
        print(f"copied {copied} files of {len({e.num for e in entries})} jobs into {args.copy}")
        return 0
    _print_files(table.swept_keys, entries, args.format)
    if not entries:
        print(f"no file matches {args.pattern!r} in {len(table)} jobs", file=sys.stderr)
    return 0


def _print_files(keys: Sequence[str], entries: Iterable[FileEntry], fmt: str) -> None:
    columns = [res.NUM, *keys, "path", "size", "where"]
    rows = [
        res.ResultRow(
            num=e.num,
            job_id="",
            params=e.params,
            state="",
            duration_s=None,
            host=None,
            values={"path": str(e.local_path), "size": e.size, "where": e.where},
            reason=None,
            output_dir=e.local_path,
        )
        for e in entries
    ]
    table = res.Results(Path("."), rows, swept_keys=list(keys))
    table.metric_keys = ["path", "size", "where"]  # also when nothing matched: the header stays
    if fmt == "table":
        for row in rows:
            row.values["size"] = _human_size(row.values["size"])
    sys.stdout.write(res.render(table, columns, fmt))


METRICS_HELP = "JSON/YAML file in each job's output dir to read metrics from (e.g. metrics.json)"


def add_commands(sub: Any) -> None:
    """Register results, report, link and files on the ``launcher-core`` subparsers."""
    results = sub.add_parser("results", help="one row per job: swept values, state, duration, host, returned metrics")
    results.add_argument("sweep", help="sweep dir or sweep id")
    results.add_argument("--sort", help="column(s) to sort by, comma-separated; --sort=-COL sorts descending")
    results.add_argument("--where", action="append", default=[], help="KEY=VALUE (or !=, <, <=, >, >=); repeatable")
    results.add_argument("--columns", help="comma-separated columns or globs to show, in that order")
    results.add_argument("--top", type=int, help="only the first N rows (after sorting)")
    results.add_argument("--format", choices=res.FORMATS, default="table")
    results.add_argument("--metrics", metavar="FILE", help=METRICS_HELP)
    results.set_defaults(func=cmd_results)

    report = sub.add_parser("report", help="a self-contained HTML page: status, timeline, results table, plots")
    report.add_argument("sweep", help="sweep dir or sweep id")
    report.add_argument("-o", "--output", help="where to write it (default: SWEEP/report.html)")
    report.add_argument("--metric", help="result column to plot (default: the first numeric one)")
    report.add_argument("--metrics", metavar="FILE", help=METRICS_HELP)
    report.set_defaults(func=cmd_report)

    link = sub.add_parser("link", help="symlinks named by config values (DEST/model=cnn,lr=0.001 -> job dir)")
    link.add_argument("sweep", help="sweep dir or sweep id")
    link.add_argument("dest", help="directory to put the links in")
    link.add_argument("--by", help="comma-separated keys to name links by (default: the swept keys)")
    link.set_defaults(func=cmd_link)

    files = sub.add_parser("files", help="files matching a glob in every job, local or still on the backend")
    files.add_argument("sweep", help="sweep dir or sweep id")
    files.add_argument("pattern", help="glob relative to each job's dir: 'ckpt/*.pt', '**/events.*'")
    files.add_argument("--copy", metavar="DEST", help="copy them to DEST/<job name>/ (fetching remote ones first)")
    files.add_argument("--format", choices=res.FORMATS, default="table")
    files.set_defaults(func=cmd_files)
