"""The shared rsync pattern matcher (``launcher_core.remote.codesync.RsyncFilter``) against rsync
itself, and the two places ec2 uses it instead of rsync: its code tarball and its bare pulls."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from launcher_core.backends.ec2.snapshot import EC2_EXCLUDES, build_snapshot, snapshot_filter
from launcher_core.backends.ec2.store import bare_filter as _bare_filter
from launcher_core.jobs import PullFilter
from launcher_core.remote.codesync import DEFAULT_EXCLUDES, RsyncFilter, filter_args

TREE = [
    "main.py",
    "top.pyc",
    "abc",
    "aXc",
    "a.txt",
    "b.txt",
    "c.txt",
    "cache",
    ".env",
    "x.egg-info",
    ".git/config",
    "mypkg.egg-info/PKG-INFO",
    "outputs/o.txt",
    "multirun/m.txt",
    "data/y.csv",
    "data/raw/x.csv",
    "data/small/s.txt",
    "logs/c.txt",
    "logs/a/b.txt",
    "pkg/mod.py",
    "pkg/mod.pyc",
    "pkg/.env",
    "pkg/outputs/o.txt",
    "pkg/data/w.csv",
    "pkg/data/raw/z.csv",
    "pkg/__pycache__/mod.cpython-311.pyc",
    "sub/.git",
    "sub/x.txt",
    "sub/dir/x.txt",
    "x/logs/d.txt",
    "deep/q/cache/e.txt",
    "deep/q/r/e.txt",
    "venv/bin/python",
    "runs/sweep/0/.launcher/job.pkl",
    "runs/sweep/0/out.txt",
    "runs/old/.launcher/state.db",
]


def _tree(root: Path, files: list[str] = TREE) -> Path:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    return root


def _rsync_listing(src: Path, args: list[str]) -> set[str]:
    """What rsync would copy (a dry run): files, and dirs with a trailing ``/``."""
    proc = subprocess.run(
        ["rsync", "-a", "--dry-run", "--out-format=%n", *args, f"{src}/", f"{src.parent / 'dst'}/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {line for line in proc.stdout.splitlines() if line and line != "./"}


def _our_listing(src: Path, rsync_filter: RsyncFilter) -> set[str]:
    """The same through the matcher, two ways: a pruning walk, and every path checked whole."""
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        dirnames[:] = [d for d in dirnames if not rsync_filter.excludes_entry(prefix + d, is_dir=True)]
        walked |= {f"{prefix}{d}/" for d in dirnames}
        walked |= {prefix + f for f in filenames if not rsync_filter.excludes_entry(prefix + f, is_dir=False)}
    whole = set()
    for path in src.rglob("*"):
        rel = path.relative_to(src).as_posix()
        if not rsync_filter.excludes(rel, is_dir=path.is_dir()):
            whole.add(f"{rel}/" if path.is_dir() else rel)
    assert walked == whole
    return walked


CASES = [
    ([], ["*.pyc"]),
    ([], [".git/"]),  # the dir, not sub/.git (a file, as in a submodule)
    ([], [".git"]),
    ([], ["/outputs/"]),  # the top one only
    ([], ["outputs"]),
    ([], ["data/raw"]),  # an inner "/": matched at the end of the path, at any depth
    ([], ["data/*.csv"]),  # "*" stops at "/"
    ([], ["/pkg/data/"]),
    ([], ["**/cache"]),  # the top file and the deep dir
    ([], ["deep/**/e.txt"]),
    ([], ["deep/**"]),
    ([], ["logs/***"]),  # the dir and everything in it
    ([], ["a?c"]),
    ([], ["[ab].txt"]),
    ([], ["[!a].txt"]),
    ([], ["*.egg-info/"]),  # the dir, not the file
    ([], ["*/x.txt"]),
    ([], ["/*.txt"]),
    ([], ["sub/"]),
    ([], ["nothing-matches", ""]),
    ([], [*DEFAULT_EXCLUDES, *EC2_EXCLUDES]),
    (["data/small/**"], ["/data/"]),  # the include cannot help: rsync never enters data/
    (["data/", "data/small/***"], ["data/*"]),
    (["*/", "*.py"], ["*"]),  # the classic "only .py files"
    (["pkg/.env"], [".env"]),  # the first match wins
]


@pytest.mark.parametrize("include, exclude", CASES, ids=[" ".join(c[0] + c[1])[:60] for c in CASES])
def test_rsync_filter_agrees_with_rsync(tmp_path: Path, include: list[str], exclude: list[str]) -> None:
    src = _tree(tmp_path / "src")
    expected = _rsync_listing(src, filter_args(include, [p for p in exclude if p]))
    assert _our_listing(src, RsyncFilter(include, exclude)) == expected


def test_ec2_snapshot_ships_what_rsync_would(tmp_path: Path) -> None:
    """The tarball's ``code/`` holds exactly the files rsync would copy with the same excludes:
    the defaults every snapshot has, ec2's own, ``code_excludes`` and the sweep dir inside."""
    code_dir = _tree(tmp_path / "src")
    sweep_dir = code_dir / "runs" / "sweep"
    code_excludes = ["*.csv", "/sub/dir/"]
    code_filter = snapshot_filter(code_dir, sweep_dir, code_excludes)
    archive = tmp_path / "snapshot.tar.gz"
    build_snapshot(code_dir, archive, code_filter=code_filter, max_bytes=2**20, check=lambda data, what: None)
    with tarfile.open(archive) as tar:
        shipped = {n[len("code/") :] for n in tar.getnames() if n.startswith("code/")}
    patterns = [*DEFAULT_EXCLUDES, *EC2_EXCLUDES, *code_excludes, "/runs/sweep/"]
    expected = {n for n in _rsync_listing(code_dir, filter_args((), patterns)) if not n.endswith("/")}
    assert shipped == expected
    assert {"main.py", "pkg/mod.py", "sub/x.txt", "data/small/s.txt"} - shipped == {"data/small/s.txt"}
    assert not {".env", "pkg/.env", "runs/old/.launcher/state.db", "runs/sweep/0/out.txt"} & shipped


JOB_FILES = [
    "0/out.txt",
    "0/model.ckpt",
    "0/ckpt/b.pt",
    "0/ckpt/keep.txt",
    "0/sub/ckpt/c.pt",
    "x=1/out.txt",
    "x=1/logs/l.txt",
    "a/b/out.txt",
    "a/b/ckpt/d.pt",
]


@pytest.mark.parametrize(
    "exclude",
    [["*.ckpt"], ["ckpt/"], ["/ckpt/"], ["/0/ckpt/"], ["ckpt/*.pt"], ["x=*"], ["/a/"], ["**/*.pt"], ["0"]],
)
def test_ec2_bare_pull_skips_what_an_rsync_fetch_skips(tmp_path: Path, exclude: list[str]) -> None:
    """A bare pull from S3 skips the files the other backends' rsync fetch (``--files-from`` the
    job subdirs, from the sweep dir) skips with the same ``--bare-exclude`` patterns."""
    sweep = _tree(tmp_path / "src", JOB_FILES)
    rels = ["0", "x=1", "a/b"]
    listing = tmp_path / "files-from.txt"
    listing.write_text("".join(f"{r}\n" for r in rels))
    fetched = _rsync_listing(sweep, ["-r", f"--files-from={listing}", *[f"--exclude={p}" for p in exclude]])
    pull_filter = PullFilter(exclude=tuple(exclude))
    ours = set()
    for rel in rels:
        skip = _bare_filter(pull_filter, rel)
        assert skip is not None
        for path in (sweep / rel).rglob("*"):
            if path.is_file() and not skip(PurePosixPath(path.relative_to(sweep / rel).as_posix()), 1):
                ours.add(path.relative_to(sweep).as_posix())
    assert ours == {n for n in fetched if not n.endswith("/")}


def test_ec2_bare_pull_size_limit() -> None:
    skip = _bare_filter(PullFilter(max_size_bytes=10), "0")
    assert skip is not None and skip(PurePosixPath("big.bin"), 11) and not skip(PurePosixPath("small.bin"), 10)
    assert _bare_filter(None, "0") is None and _bare_filter(PullFilter(), "0") is None
