"""Cost of freezing the code dir at launch (``launcher_core.snapshots.freeze_code``).

    python bench/bench_snapshot.py                     # 2,000 files / 50 MB, 5 launches
    python bench/bench_snapshot.py --files 500 --mb 10 --launches 3

Builds a code dir in a temp dir, then times, side by side in one run:

* ``cp -a`` of the whole dir (what a naive per-launch copy costs);
* ``freeze_code`` (Python, what launches use): the first snapshot (nothing to link to: a full
  copy), then each following launch, after editing one file (hard links to the previous snapshot
  for unchanged files), against the goal of 0.3 s;
* the same with ``rsync -a --link-dest`` and the same filters (what ``freeze_code`` ran before
  it was written in Python), when rsync is installed;

and reports the disk the following snapshots really took (blocks not shared by hard links).
Nothing uses the network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

GOAL_S = 0.3
Freeze = Callable[[Path, Path, Path], None]  # (code dir, snapshot, sweep dir)


def make_code_dir(root: Path, files: int, total_mb: float) -> None:
    size = int(total_mb * 2**20 / files)
    for i in range(files):
        path = root / f"pkg{i % 40}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((f"# module {i}\n".encode() + os.urandom(size // 2).hex().encode())[:size])


def disk_usage_kb(path: Path) -> int:
    """Blocks used by ``path`` counting each hard-linked inode once (``du`` does that)."""
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def python_freeze(code: Path, dest: Path, sweep_dir: Path) -> None:
    from launcher_core.snapshots import freeze_code

    freeze_code(code, dest, sweep_dir=sweep_dir)


def rsync_freezer() -> Freeze:
    """The rsync command ``freeze_code`` ran before (same filters, ``--link-dest`` on the previous
    snapshot it made), to compare with."""
    from launcher_core.remote.codesync import DEFAULT_EXCLUDES, excludes_for_local_outputs, filter_args

    previous: list[Path] = []

    def freeze(code: Path, dest: Path, sweep_dir: Path) -> None:
        filters = filter_args((), DEFAULT_EXCLUDES, excludes_for_local_outputs(code, sweep_dir))
        argv = ["rsync", "-a", "--modify-window=-1", "--chmod=go-rwx", *filters]
        argv += [f"--link-dest={p}" for p in previous[-1:]]
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*argv, f"{code}/", f"{dest}/"], check=True, capture_output=True)
        previous.append(dest)

    return freeze


def run_launches(freeze: Freeze, code: Path, root: Path, launches: int) -> tuple[list[float], float, float]:
    """Times of ``launches`` snapshots of ``code`` under ``root`` (one file edited between two);
    also the disk (MB) of the first and the mean disk of each later one."""
    seconds = []
    for n in range(launches):
        if n:
            (code / "pkg0" / "module_0.py").write_text(f"VERSION = {n} # {root.name}\n")  # one edit
        sweep = root / f"s{n}"
        tic = time.perf_counter()
        freeze(code, sweep / ".launcher" / "code" / "snap", sweep)
        seconds.append(time.perf_counter() - tic)
    first_kb = disk_usage_kb(root / "s0")
    later_kb = (disk_usage_kb(root) - first_kb) / max(launches - 1, 1)
    return seconds, first_kb / 1024, later_kb / 1024


def print_table(cp_s: float, results: dict[str, tuple[list[float], float, float]]) -> None:
    print(f"{'what':<34}{'seconds':>9}{'vs cp -a':>10}{'vs goal 0.3 s':>15}")
    print(f"{'cp -a (anchor)':<34}{cp_s:>9.3f}{1.0:>10.2f}{cp_s / GOAL_S:>15.2f}")
    for name, (seconds, _first_mb, _later_mb) in results.items():
        rows = [(f"{name}: first (full copy)", seconds[0])]
        rows += [(f"{name}: launch {n + 1} (links)", s) for n, s in enumerate(seconds[1:], start=1)]
        if len(seconds) > 1:
            rows.append((f"{name}: mean of later launches", sum(seconds[1:]) / len(seconds[1:])))
        for what, s in rows:
            print(f"{what:<34}{s:>9.3f}{s / cp_s:>10.2f}{s / GOAL_S:>15.2f}")
    for name, (_seconds, first_mb, later_mb) in results.items():
        print(f"{name}: disk per later snapshot {later_mb:.2f} MB (first: {first_mb:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--launches", type=int, default=5)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="hrl-bench-snapshot-"))
    os.environ["HYDRA_REMOTE_LAUNCHER_HOME"] = str(tmp / "home")  # keep the user's index out of it
    try:
        code = tmp / "code"
        make_code_dir(code, args.files, args.mb)
        print(f"code dir: {args.files} files, {disk_usage_kb(code) / 1024:.1f} MB", file=sys.stderr)
        tic = time.perf_counter()
        subprocess.run(["cp", "-a", str(code), str(tmp / "cp-copy")], check=True)
        cp_s = time.perf_counter() - tic
        methods: dict[str, Freeze] = {"python": python_freeze}
        if shutil.which("rsync"):
            methods["rsync"] = rsync_freezer()
        else:
            print("rsync is not installed: timing the Python snapshot only", file=sys.stderr)
        results = {name: run_launches(f, code, tmp / name, args.launches) for name, f in methods.items()}
        print_table(cp_s, results)
        python_later = results["python"][0][1:]
        if python_later and max(python_later) > GOAL_S:
            print(f"python: a later launch took {max(python_later):.3f} s, over the goal of {GOAL_S} s")
            return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
