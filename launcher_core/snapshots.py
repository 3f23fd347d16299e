"""Frozen code on this machine's file system, and the code record of every job.

Jobs that run from this file system (local_pool, and slurm on a shared file system) run the code
as it was at launch: each launch freezes the code dir into a snapshot, rsync'ed with
``--link-dest`` on the previous snapshot of the same code dir, so unchanged files are hard links
(a launch costs milliseconds and almost no disk) and no snapshot file is ever shared with the
live code dir (editing a file there never changes a snapshot). Jobs import from the snapshot;
their working directory and ``hydra.runtime.cwd`` stay what Hydra makes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.remote.codesync import DEFAULT_EXCLUDES, GitState, excludes_for_local_outputs, filter_args
from launcher_core.runtime.markers import CODE_FILE as CODE_FILE  # in each job's .launcher/ dir

SNAPSHOT_TIMEOUT_S = 600.0


def _latest_pointer(code_dir: Path) -> Path:
    from launcher_core.state import launcher_home

    key = hashlib.sha256(str(code_dir.resolve()).encode()).hexdigest()[:16]
    return launcher_home() / "snapshots" / f"{key}.latest"


def _previous_snapshot(code_dir: Path) -> Path | None:
    try:
        path = Path(_latest_pointer(code_dir).read_text().strip())
    except OSError:
        return None
    return path if path.is_dir() else None


def freeze_code(code_dir: Path, snapshot: Path, *, sweep_dir: Path, excludes: Sequence[str] = ()) -> Path:
    """Copy ``code_dir`` into the new dir ``snapshot`` (hard links to the previous snapshot for
    unchanged files); returns it. Reuses ``snapshot`` when it exists (a relaunch)."""
    if snapshot.is_dir():
        return snapshot
    if shutil.which("rsync") is None:
        raise ConfigError("freezing the code for the jobs needs rsync on this machine (apt install rsync)")
    partial = snapshot.with_name(snapshot.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    filters = filter_args((), (*DEFAULT_EXCLUDES, *excludes), excludes_for_local_outputs(code_dir, sweep_dir))
    # nanosecond mtimes: a file edited within the second of the previous snapshot, same size, is
    # still seen as changed (rsync compares whole seconds by default)
    # private like everything in .launcher/ (the owner keeps the execute bits the code had)
    argv = ["rsync", "-a", "--modify-window=-1", "--chmod=go-rwx", *filters]
    previous = _previous_snapshot(code_dir)
    if previous is not None:
        argv.append(f"--link-dest={previous}")
    argv += [f"{str(code_dir).rstrip('/')}/", f"{partial}/"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=SNAPSHOT_TIMEOUT_S)
    if proc.returncode != 0:
        raise ConfigError(f"could not freeze the code dir {code_dir} into {snapshot}: {proc.stderr.strip()}")
    os.replace(partial, snapshot)  # a snapshot dir exists only complete
    _write_pointer(code_dir, snapshot)
    return snapshot


def _write_pointer(code_dir: Path, snapshot: Path) -> None:
    pointer = _latest_pointer(code_dir)
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        tmp = pointer.with_name(pointer.name + f".{os.getpid()}")
        tmp.write_text(str(snapshot))
        os.replace(tmp, pointer)
    except OSError:  # only the next launch's speed depends on it
        pass


def code_record(git: GitState, snapshot_id: str) -> dict[str, object]:
    """What each job's ``.launcher/code.json`` says about the code it ran."""
    return {
        "commit": git.commit,
        "branch": git.branch,
        "dirty": git.dirty,
        "diff_sha256": hashlib.sha256(git.diff.encode()).hexdigest() if git.diff else None,
        "untracked": git.untracked,
        "snapshot": snapshot_id,
        "code_dir": git.code_dir,
        "error": git.error,
    }


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, mode 0600 (its dir created 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_code_record(launcher_dir: Path, record: dict[str, object]) -> None:
    write_private(launcher_dir / CODE_FILE, json.dumps(record, indent=1) + "\n")


# --- comparing the code of sweeps (launcher-core diff) -----------------------------------------
@dataclass
class SweepCode:
    """The code a sweep's last launch ran, as recorded in its ``.launcher/code/``."""

    sweep_dir: Path
    code_id: str | None
    summary: dict[str, Any]
    diff: str
    snapshot: Path | None  # the frozen tree, for backends that run from this file system


def sweep_code(sweep_dir: Path) -> SweepCode:
    from launcher_core.state import StateStore

    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        code_id = store.meta().get("code_snapshot")
    if not code_id:
        raise ConfigError(f"{sweep_dir}: no code record (launched by an older version of hydra-remote-launcher)")
    root = sweep_dir / ".launcher" / "code"
    summary = json.loads((root / f"{code_id}.json").read_text())
    diff = (root / f"{code_id}.diff").read_text() if (root / f"{code_id}.diff").exists() else ""
    snapshot = root / code_id
    return SweepCode(sweep_dir, str(code_id), summary, diff, snapshot if snapshot.is_dir() else None)


def _label(code: SweepCode) -> str:
    s = code.summary
    commit = str(s.get("commit") or "no commit")[:12]
    return f"{code.sweep_dir}: {commit}{' +dirty' if s.get('dirty') else ''} ({s.get('branch') or '-'})"


def describe_code_difference(first: SweepCode, second: SweepCode | None) -> str:
    """What ``launcher-core diff`` prints: the commits, then the difference of the code itself."""
    lines = [f"a: {_label(first)}"]
    if second is None:
        untracked = first.summary.get("untracked") or []
        n_lines = len(first.diff.splitlines())
        lines.append(f"uncommitted changes: {n_lines} diff lines, {len(untracked)} untracked files")
        lines += [f"  untracked: {name}" for name in untracked]
        return "\n".join(lines) + "\n" + first.diff
    lines.append(f"b: {_label(second)}")
    if first.snapshot is not None and second.snapshot is not None:  # exact: the frozen trees
        proc = subprocess.run(
            ["diff", "-ruN", "--exclude=__pycache__", str(first.snapshot), str(second.snapshot)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        body = proc.stdout or "the frozen code of both sweeps is identical\n"
        return "\n".join(lines) + "\n" + body
    body = _git_difference(first, second)
    return "\n".join(lines) + "\n" + body


def _git_difference(first: SweepCode, second: SweepCode) -> str:
    a, b = first.summary, second.summary
    out = []
    if a.get("commit") and b.get("commit") and a["commit"] != b["commit"]:
        code_dir = str(a.get("code_dir") or ".")
        proc = subprocess.run(
            ["git", "-C", code_dir, "diff", str(a["commit"]), str(b["commit"]), "--", "."],
            capture_output=True,
            text=True,
            timeout=120,
        )
        failed = f"(git diff of the commits failed: {proc.stderr.strip()})\n"
        out.append(proc.stdout if proc.returncode == 0 else failed)
    elif a.get("commit") == b.get("commit"):
        out.append("same commit\n")
    if first.diff == second.diff:
        out.append("same uncommitted changes\n" if first.diff else "")
    else:
        import difflib

        out.append("uncommitted changes differ:\n")
        out += difflib.unified_diff(
            first.diff.splitlines(keepends=True),
            second.diff.splitlines(keepends=True),
            fromfile=f"a/{first.code_id}.diff",
            tofile=f"b/{second.code_id}.diff",
        )
    return "".join(out)
