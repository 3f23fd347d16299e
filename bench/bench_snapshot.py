"""Cost of freezing the code dir at launch (``launcher_core.snapshots.freeze_code``).

    python bench/bench_snapshot.py                     # 2,000 files / 50 MB, 5 launches
    python bench/bench_snapshot.py --files 500 --mb 10 --launches 3

Builds a code dir in a temp dir, then times, side by side in one run:

* ``cp -a`` of the whole dir (what a naive per-launch copy costs);
* the first ``freeze_code`` (nothing to link to: a full copy by rsync);
* each following launch (``--link-dest`` on the previous snapshot), after editing one file,
  against the goal of 0.3 s;

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
from pathlib import Path

GOAL_S = 0.3


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--launches", type=int, default=5)
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="hrl-bench-snapshot-"))
    os.environ["HYDRA_REMOTE_LAUNCHER_HOME"] = str(tmp / "home")  # keep the user's index out of it
    from launcher_core.snapshots import freeze_code

    try:
        code = tmp / "code"
        make_code_dir(code, args.files, args.mb)
        print(f"code dir: {args.files} files, {disk_usage_kb(code) / 1024:.1f} MB", file=sys.stderr)
        tic = time.perf_counter()
        subprocess.run(["cp", "-a", str(code), str(tmp / "cp-copy")], check=True)
        cp_s = time.perf_counter() - tic
        runs: list[tuple[str, float]] = []
        for n in range(args.launches):
            if n:
                (code / "pkg0" / "module_0.py").write_text(f"VERSION = {n}\n")  # one edit between launches
            dest = tmp / "sweeps" / f"s{n}" / ".launcher" / "code" / "snap"
            tic = time.perf_counter()
            freeze_code(code, dest, sweep_dir=tmp / "sweeps" / f"s{n}")
            elapsed = time.perf_counter() - tic
            runs.append(("first (full copy)" if n == 0 else f"launch {n + 1} (--link-dest)", elapsed))
        total_kb = disk_usage_kb(tmp / "sweeps")
        first_kb = disk_usage_kb(tmp / "sweeps" / "s0")
        print(f"{'what':<26}{'seconds':>9}{'vs cp -a':>10}{'vs goal 0.3 s':>15}")
        print(f"{'cp -a (anchor)':<26}{cp_s:>9.3f}{1.0:>10.2f}{cp_s / GOAL_S:>15.2f}")
        for what, seconds in runs:
            print(f"{what:<26}{seconds:>9.3f}{seconds / cp_s:>10.2f}{seconds / GOAL_S:>15.2f}")
        later = runs[1:]
        if later:
            mean = sum(s for _, s in later) / len(later)
            print(f"{'mean of later launches':<26}{mean:>9.3f}{mean / cp_s:>10.2f}{mean / GOAL_S:>15.2f}")
            extra_kb = (total_kb - first_kb) / len(later)
            print(f"disk per later snapshot: {extra_kb / 1024:.2f} MB (first: {first_kb / 1024:.1f} MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
