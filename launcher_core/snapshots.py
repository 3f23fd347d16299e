"""Frozen code on this machine's file system, and the code record of every job.

Jobs that run from this file system (local_pool, and slurm on a shared file system) run the code
as it was at launch: each launch freezes the code dir into a snapshot, in Python (no rsync: a
fresh Debian or macOS machine has none), hard-linking every file whose size, nanosecond mtime and
mode equal the previous snapshot's of the same code dir, so unchanged files cost a link (a launch
costs milliseconds and almost no disk), and copying the others. No snapshot file is ever shared
with the live code dir (editing a file there never changes a snapshot). What is left out is
decided by the rsync filter rules the remote backends ship the code with
(:class:`~launcher_core.remote.codesync.RsyncFilter`, which tests compare with rsync itself).
Jobs import from the snapshot; their working directory and ``hydra.runtime.cwd`` stay what Hydra
makes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.remote.codesync import DEFAULT_EXCLUDES, GitState, RsyncFilter, excludes_for_local_outputs
from launcher_core.runtime.markers import CODE_FILE as CODE_FILE  # in each job's .launcher/ dir
from launcher_core.runtime.markers import LAUNCHER_DIR


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
    unchanged files); returns it. Reuses ``snapshot`` when it exists (a relaunch).

    What ``rsync -a --chmod=go-rwx`` with the default excludes copied before: files, dirs and
    symlinks (as links), mtimes to the nanosecond, modes without group/other bits. Sockets, fifos
    and devices are left out. Raises ``ConfigError`` when the code dir cannot be read."""
    if snapshot.is_dir():
        return snapshot
    partial = snapshot.with_name(snapshot.name + ".partial")
    _remove_tree(partial)  # a half snapshot of a killed launch: never used, never linked to
    partial.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    code_filter = RsyncFilter(exclude=[*DEFAULT_EXCLUDES, *excludes, *excludes_for_local_outputs(code_dir, sweep_dir)])
    try:
        _FreezeWalk(code_filter, _previous_snapshot(code_dir)).run(code_dir, partial)
    except OSError as exc:
        with contextlib.suppress(OSError):  # else the next launch removes it
            _remove_tree(partial)
        raise ConfigError(f"could not freeze the code dir {code_dir} into {snapshot}: {exc}") from exc
    os.replace(partial, snapshot)  # a snapshot dir exists only complete
    _write_pointer(code_dir, snapshot)
    return snapshot


def _private(mode: int) -> int:
    """The mode ``--chmod=go-rwx`` gave: the owner's bits only (execute bits kept)."""
    return stat.S_IMODE(mode) & 0o700


class _FreezeWalk:
    """One walk of the code dir into a new snapshot dir.

    Each entry is stat'ed once (``os.scandir``); a file is hard-linked to the previous snapshot's
    when that one has the same size, nanosecond mtime and (private) mode, as rsync's
    ``--link-dest`` with ``--modify-window=-1`` did; otherwise it is copied and given the
    source's mtime, so the next launch can link to it. Dirs get their modes and mtimes once
    filled (a read-only dir is still written into)."""

    def __init__(self, code_filter: RsyncFilter, previous: Path | None) -> None:
        self.filter = code_filter
        self.previous = previous
        self.dirs: list[tuple[str, int, int, int]] = []  # (dest, mode, atime_ns, mtime_ns), parents first

    def run(self, code_dir: Path, dest: Path) -> None:
        top = os.stat(code_dir)
        os.mkdir(dest, 0o700)
        skip = os.stat(dest)  # a sweep dir that is the code dir itself holds the snapshot being built
        self.dirs.append((str(dest), _private(top.st_mode), top.st_atime_ns, top.st_mtime_ns))
        stack = [(str(code_dir), str(dest), "")]
        while stack:
            src_dir, dest_dir, rel_dir = stack.pop()
            stack += self._copy_dir(src_dir, dest_dir, rel_dir, (skip.st_dev, skip.st_ino))
        for path, mode, atime_ns, mtime_ns in reversed(self.dirs):  # children before their parents
            os.utime(path, ns=(atime_ns, mtime_ns))
            os.chmod(path, mode)

    def _copy_dir(self, src_dir: str, dest_dir: str, rel_dir: str, skip: tuple[int, int]) -> list[tuple[str, str, str]]:
        """Copy the entries of one dir; returns its subdirs still to walk."""
        subdirs = []
        # plain string joins: os.path.join on every entry is a tenth of a relaunch
        prev_dir = None if self.previous is None else f"{self.previous}/{rel_dir}"
        with os.scandir(src_dir) as entries:
            for entry in entries:
                rel = rel_dir + entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while we walk: not part of the code any more
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if self.filter.excludes_entry(rel, is_dir=is_dir):
                    continue
                target = f"{dest_dir}/{entry.name}"
                if is_dir:
                    if (st.st_dev, st.st_ino) == skip:
                        continue
                    os.mkdir(target, 0o700)
                    self.dirs.append((target, _private(st.st_mode), st.st_atime_ns, st.st_mtime_ns))
                    subdirs.append((entry.path, target, rel + "/"))
                elif stat.S_ISREG(st.st_mode):
                    prev = None if prev_dir is None else prev_dir + entry.name
                    self._freeze_file(entry.path, target, st, prev)
                elif stat.S_ISLNK(st.st_mode):
                    _copy_link(entry.path, target, st)
        return subdirs

    def _freeze_file(self, src: str, target: str, st: os.stat_result, prev: str | None) -> None:
        mode = _private(st.st_mode)
        if prev is not None and _same_file(prev, st, mode):
            try:
                os.link(prev, target)
                return
            except OSError:  # another file system, too many links: a copy does it
                pass
        try:
            shutil.copyfile(src, target)
        except FileNotFoundError:
            if os.path.lexists(src):
                raise
            return  # removed while we walk
        os.chmod(target, mode)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _same_file(prev: str, st: os.stat_result, mode: int) -> bool:
    """Whether the previous snapshot's ``prev`` is what copying the source (``st``) would give."""
    try:
        old = os.lstat(prev)
    except OSError:
        return False
    return (
        stat.S_ISREG(old.st_mode)
        and old.st_size == st.st_size
        and old.st_mtime_ns == st.st_mtime_ns
        and stat.S_IMODE(old.st_mode) == mode
    )


def _copy_link(src: str, target: str, st: os.stat_result) -> None:
    """A symlink stays a link (``rsync -a``), pointing where it pointed, even outside the code dir."""
    try:
        os.symlink(os.readlink(src), target)
    except FileNotFoundError:
        if os.path.lexists(src):
            raise
        return
    if os.utime in os.supports_follow_symlinks:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _remove_tree(path: Path) -> None:
    """Remove ``path`` if it exists, also when a killed freeze had already made dirs read-only."""
    if not os.path.lexists(path):
        return
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        for root, _dirs, _files in os.walk(path):
            os.chmod(root, 0o700)
        shutil.rmtree(path)


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
    root = sweep_dir / LAUNCHER_DIR / "code"
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
        argv = ["diff", "-ruN", "--exclude=__pycache__", str(first.snapshot), str(second.snapshot)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except OSError as exc:  # no diff program on this machine
            return "\n".join(lines) + f"\n(cannot compare the frozen trees: {exc})\n"
        if proc.returncode > 1:  # 0: identical, 1: different, 2: trouble
            return "\n".join(lines) + f"\n(diff of the frozen trees failed: {proc.stderr.strip()})\n"
        body = proc.stdout or "the frozen code of both sweeps is identical\n"
        return "\n".join(lines) + "\n" + body
    body = _git_difference(first, second)
    return "\n".join(lines) + "\n" + body


def _git_difference(first: SweepCode, second: SweepCode) -> str:
    a, b = first.summary, second.summary
    out = []
    if a.get("commit") and b.get("commit") and a["commit"] != b["commit"]:
        code_dir = str(a.get("code_dir") or ".")
        argv = ["git", "-C", code_dir, "diff", str(a["commit"]), str(b["commit"]), "--", "."]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except OSError as exc:  # git is not installed here (a fresh Debian has none)
            out.append(f"(git diff of the commits failed: {exc})\n")
        else:
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
