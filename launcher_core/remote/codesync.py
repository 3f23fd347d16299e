"""Ship the code dir to a host as a per-launch snapshot that is never modified afterwards
(rsync ``--link-dest`` on the previous one), and record the local git state next to the results.

Design: docs/remote_ssh.md ("Remote layout", "Starting jobs")
"""

from __future__ import annotations

import json
import logging
import os
import re
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


# --- rsync filter patterns, for copies made without rsync -------------------------------------
# ec2 builds its code tarball and its bare pulls from S3 in Python: the same patterns
# (DEFAULT_EXCLUDES, the user's excludes) must mean there what they mean to rsync.
# tests/test_ec2_snapshot.py compares this with rsync itself.


@dataclass(frozen=True)
class _Rule:
    include: bool
    regex: re.Pattern[str]
    dir_only: bool  # "name/": directories only
    anchored: bool  # "/name": at the transfer root only
    name_only: bool  # no "/" and no "**": matched against the last path element
    tail: int  # an inner "/" without "**": matched against this many elements at the end; 0: n/a
    any_suffix: bool  # an unanchored "**" (not leading): tried at the start and after every "/"
    wild2_prefix: bool  # a leading "**" may match at the very start ("**/x" matches "x")
    wild3_suffix: bool  # a trailing "/***" also matches the directory itself


def _wildcard_regex(pattern: str) -> str:
    """rsync's wildmatch as a regex: ``*``, ``?`` and ``[...]`` stop at ``/``, ``**`` does not; a
    backslash escapes the next character."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            negate = pattern[i + 1 : i + 2] in ("!", "^")
            first = i + 2 if negate else i + 1
            end = pattern.find("]", first + 1)  # a "]" right after "[" or "[!" is a member
            if end == -1:
                out.append(re.escape(c))
            else:
                members = re.sub(r"([\\\[\]&~|^]|-(?=-))", r"\\\1", pattern[first:end])
                out.append(f"(?!/)[{'^' if negate else ''}{members}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _rule(pattern: str, include: bool) -> _Rule:
    dir_only = len(pattern) > 1 and pattern.endswith("/")
    body = pattern[:-1] if dir_only else pattern
    wild = any(c in body for c in "*?[")  # without these, a backslash is an ordinary character
    wild2 = wild and "**" in body
    anchored = body.startswith("/")
    slashes = body.count("/")  # the anchoring "/" counts, as in rsync
    core = body[1:] if anchored else body
    return _Rule(
        include=include,
        regex=re.compile(_wildcard_regex(core) if wild else re.escape(core)),
        dir_only=dir_only,
        anchored=anchored,
        name_only=not slashes and not wild2,
        tail=slashes + 1 if not anchored and slashes and not wild2 else 0,
        any_suffix=not anchored and wild2 and not body.startswith("**"),
        wild2_prefix=wild2 and body.startswith("**"),
        wild3_suffix=wild2 and body.endswith("***"),
    )


def _rule_matches(rule: _Rule, path: str, is_dir: bool) -> bool:
    """rsync's ``rule_matches`` (exclude.c) for a path relative to the transfer root."""
    if not path or (rule.dir_only and not is_dir):
        return False
    if rule.name_only:
        path = path.rpartition("/")[2]
    elif rule.wild2_prefix:
        path = "/" + path
    if is_dir and rule.wild3_suffix:
        path += "/"
    if rule.tail:
        parts = path.split("/")
        if len(parts) < rule.tail:
            return False
        candidates = ["/".join(parts[-rule.tail :])]
    elif rule.any_suffix:
        candidates = [path] + [path[i + 1 :] for i, c in enumerate(path) if c == "/"]
    else:
        candidates = [path]
    return any(rule.regex.fullmatch(c) for c in candidates)


class RsyncFilter:
    """``--include``/``--exclude`` rules (as :func:`filter_args` passes them) applied the way rsync
    applies them, for copies made without rsync: the first rule that matches decides, and
    nothing inside an excluded directory is copied (rsync does not go in). Paths are
    ``/``-separated and relative to the transfer root (the code dir of a snapshot)."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.rules = [_rule(p, True) for p in include if p] + [_rule(p, False) for p in exclude if p]

    def excludes_entry(self, path: str, *, is_dir: bool) -> bool:
        """Whether this entry is left out, given that its parent dirs are copied (for a walk that
        does not enter excluded dirs)."""
        for rule in self.rules:
            if _rule_matches(rule, path, is_dir):
                return not rule.include
        return False

    def excludes(self, path: str, *, is_dir: bool = False, listed: str = "") -> bool:
        """Whether this entry is left out, itself or because one of its parent dirs is.

        ``listed``: the ``--files-from`` entry ``path`` lies in (a job's subdir in a fetch from
        the sweep dir); rsync checks that entry and what is below it, not the dirs above it."""
        parts = path.strip("/").split("/")
        skip_above = len(listed.strip("/").split("/")) if listed.strip("/") else 1
        for n in range(skip_above, len(parts)):
            if self.excludes_entry("/".join(parts[:n]), is_dir=True):
                return True
        return self.excludes_entry("/".join(parts), is_dir=is_dir)
