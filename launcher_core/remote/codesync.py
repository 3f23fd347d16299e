"""Ship the code dir to a host as a per-launch snapshot that is never modified afterwards
(rsync ``--link-dest`` on the previous one), and record the local git state next to the results.

Design: docs/remote_ssh.md ("Remote layout", "Starting jobs")
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launcher_core.errors import ConfigError
from launcher_core.remote.ssh import SSHConnection

log = logging.getLogger("launcher_core.remote.codesync")

# Sane defaults: version control, caches, virtualenvs, and the usual data / output dirs at the
# top of the project (anchored with "/" so a package named e.g. ``mypkg/data`` still ships).
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "venv/",
    ".conda/",
    ".tox/",
    ".nox/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".ipynb_checkpoints/",
    "node_modules/",
    "*.egg-info/",
    ".DS_Store",
    "/data/",
    "/datasets/",
    "/outputs/",
    "/multirun/",
    "/wandb/",
    "/lightning_logs/",
)

GIT_TIMEOUT_S = 30.0
MAX_DIFF_BYTES = 50 * 1024 * 1024


def filter_args(include: Sequence[str], exclude: Sequence[str], extra_excludes: Sequence[str] = ()) -> list[str]:
    """rsync filter options. rsync uses the first rule that matches, so includes come first
    and can bring back something an exclude would drop (``rsync_include: [data/small/**]``)."""
    return [f"--include={p}" for p in include] + [f"--exclude={p}" for p in (*exclude, *extra_excludes)]


def snapshot_rsync_args(
    code_dir: Path,
    remote_snapshot: str,
    *,
    filters: Sequence[str],
    link_dest: str | None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """rsync arguments (without ``-e``) that copy ``code_dir`` into ``remote_snapshot``.

    ``remote_snapshot`` is already in rsync's ``host:path`` form.
    """
    args = ["-a", "--delete", *filters]
    if link_dest:
        args.append(f"--link-dest={link_dest}")
    return [*args, *extra_args, f"{str(code_dir).rstrip('/')}/", f"{remote_snapshot.rstrip('/')}/"]


def sync_snapshot(
    conn: SSHConnection,
    code_dir: Path,
    remote_snapshot: str,
    *,
    filters: Sequence[str],
    link_dest: str | None,
    extra_args: Sequence[str] = (),
) -> None:
    """One rsync of the code dir into a new snapshot dir on the host (through its master)."""
    args = snapshot_rsync_args(
        code_dir, conn.remote(remote_snapshot), filters=filters, link_dest=link_dest, extra_args=extra_args
    )
    conn.rsync(args, what=f"code sync of {code_dir}")


def excludes_for_local_outputs(code_dir: Path, sweep_dir: Path) -> list[str]:
    """An anchored exclude for the local sweep dir when it lies inside the code dir.

    Otherwise the outputs of this very sweep (and payloads) would be shipped as code.
    """
    try:
        rel = sweep_dir.resolve().relative_to(code_dir.resolve())
    except ValueError:
        return []
    if str(rel) in ("", "."):
        return []
    return [f"/{rel.as_posix()}/"]


@dataclass
class GitState:
    """The local code's version: commit, whether it was dirty, the diff and untracked files."""

    code_dir: str
    commit: str | None = None
    branch: str | None = None
    dirty: bool = False
    untracked: list[str] = field(default_factory=list)
    diff: str = ""
    error: str | None = None  # why nothing could be recorded (not a git repository, ...)

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("diff")
        data["diff_bytes"] = len(self.diff.encode())
        return data


def _git(code_dir: Path, *args: str) -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    proc = subprocess.run(
        ["git", "-C", str(code_dir), *args],
        capture_output=True,
        timeout=GIT_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace").strip() or f"git {args[0]} failed")
    return proc.stdout.decode(errors="replace")


def git_state(code_dir: Path) -> GitState:
    """Read the git state of ``code_dir`` (limited to files under it); never raises."""
    state = GitState(code_dir=str(code_dir))
    try:
        state.commit = _git(code_dir, "rev-parse", "HEAD").strip()
        state.branch = _git(code_dir, "rev-parse", "--abbrev-ref", "HEAD").strip()
        status = _git(code_dir, "status", "--porcelain=v1", "--untracked-files=normal", "--", ".")
        state.untracked = [line[3:] for line in status.splitlines() if line.startswith("?? ")]
        state.diff = _git(code_dir, "diff", "HEAD", "--binary", "--", ".")
        state.dirty = bool(state.diff) or bool(state.untracked)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        state.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if len(state.diff.encode()) > MAX_DIFF_BYTES:
        state.diff = state.diff.encode()[:MAX_DIFF_BYTES].decode(errors="ignore") + "\n# ... diff truncated\n"
    return state


def write_git_state(state: GitState, dest_dir: Path) -> list[Path]:
    """Write ``git.json`` (commit, branch, dirty, untracked) and ``git_diff.patch``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    info = dest_dir / "git.json"
    info.write_text(json.dumps(state.summary(), indent=2) + "\n")
    patch = dest_dir / "git_diff.patch"
    patch.write_text(state.diff)
    return [info, patch]


def check_filters_keep(code_dir: Path, needed: Sequence[Path], filters: Sequence[str], key: str) -> None:
    """Refuse rsync filters that would leave files the jobs need (the app's entry script) out
    of the snapshot. rsync itself decides, in a local dry run, so its rule order is honoured."""
    code_dir = code_dir.resolve()
    wanted = {}
    for path in needed:
        try:
            wanted[path.resolve().relative_to(code_dir).as_posix()] = path
        except ValueError:  # not inside the code dir: not ours to ship
            continue
    if not wanted:
        return
    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run(
            ["rsync", "-a", "--dry-run", "--out-format=%n", *filters, f"{code_dir}/", f"{empty}/"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if proc.returncode != 0:
        raise ConfigError(f"{key}: rsync rejected the filters: {proc.stderr.strip()}")
    shipped = set(proc.stdout.splitlines())
    missing = sorted(rel for rel in wanted if rel not in shipped)
    if missing:
        raise ConfigError(
            f"{key} would leave {', '.join(missing)} out of the code snapshot, but the jobs need it "
            "(the app's entry script): remove the pattern or add it to rsync_include"
        )
