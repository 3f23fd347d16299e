"""Sweeps of 1,000 to 100,000 jobs: what the launching side costs, today's code against the code
before the scale work (``ANCHOR``), side by side in one run.

Part 1, dry runs (``hydra/launcher=slurm hydra.launcher.dry_run=true``, nothing submitted, no
cluster needed): wall time of the whole ``python app.py -m x=range(N)`` process, the files the
launcher wrote into the sweep dir, and the process's peak memory. The anchor runs from a
``git worktree`` of ``ANCHOR`` (its own ``launcher_core`` and plugin first on ``PYTHONPATH``).

Part 2, on a real single-node Slurm cluster started for the run (tests/slurm_cluster.py; root and
Debian's slurm packages): a 10,000-job sweep launched with ``wait=false``, timed until its first
job runs (its launcher dir appears) against Hydra's start-up alone (a 1-job dry run); then the
same sweep held in the queue (``sbatch --hold``: nothing changes while we measure) for
``launcher-core status`` and one ``pull --once`` cycle with nothing new, the state store's size
and the launching process's peak memory; 100,000 jobs the same way with ``jobs_per_task=100``
(100,000 array tasks would exceed any cluster's MaxJobCount).

Part 3, remote_ssh to one loopback host (tests/sshd.py; root and openssh-server): 10,000 jobs
launched with ``wait=false``, timed until the host's runner accepted every job, with the files
written locally for it; anchor and now (then cancelled).

    .venv/bin/python bench/bench_scale.py --part dry          # ~3 min (the anchor composes ~6 ms a job)
    .venv/bin/python bench/bench_scale.py --part cluster      # ~4 min
    .venv/bin/python bench/bench_scale.py --part ssh          # ~3 min
    .venv/bin/python bench/bench_scale.py                     # all three
    .venv/bin/python bench/bench_scale.py --sizes 1000,10000 --anchor-max 10000

Goals (issue 14): a 10,000-job dry run <= 5 s with <= 20 files written, 100,000 jobs <= 40 s;
first job running <= 3 s after Hydra's start-up; status and a pull cycle <= 1 s each on 10,000
jobs; state store <= 50 MB; launching memory <= 500 MB at 100,000 jobs. Only loopback is used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP_REL = "bench/noop_app/app.py"
ANCHOR = "aa33411"  # main just before "Jobs compose their own config where they run" (1ef8de7)
sys.path.insert(0, str(REPO))

# runs the app and writes the process's peak RSS (KB) to $BENCH_RSS_FILE at exit
RSS_WRAPPER = (
    "import atexit, os, resource, runpy, sys\n"
    "atexit.register(lambda: open(os.environ['BENCH_RSS_FILE'], 'w').write("
    "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Launch:
    wall_s: float
    files: int
    rss_mb: float
    ok: bool
    error: str = ""


@contextlib.contextmanager
def anchor_tree(workdir: Path) -> Iterator[Path]:
    """A worktree of ``ANCHOR`` (removed afterwards)."""
    tree = workdir / "anchor"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ANCHOR],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
            timeout=120,
        )


def launch(code: Path, sweep: Path, overrides: list[str], env: dict[str, str], timeout_s: float) -> Launch:
    """``python <code>/bench/noop_app/app.py -m <overrides>`` with ``code`` first on PYTHONPATH."""
    return launch_app(code, code / APP_REL, sweep, overrides, env, timeout_s)


def launch_app(
    code: Path,
    app: Path,
    sweep: Path,
    overrides: list[str],
    env: dict[str, str],
    timeout_s: float,
    cwd: Path | None = None,
) -> Launch:
    """``python APP -m <overrides>`` with ``code`` first on PYTHONPATH: wall time, files in the
    sweep dir afterwards, peak memory."""
    sweep.parent.mkdir(parents=True, exist_ok=True)
    if cwd is None:
        cwd = sweep.parent / f"{sweep.name}-cwd"  # an empty code dir: its frozen snapshot is not what we count
        cwd.mkdir(exist_ok=True)
    rss_file = sweep.parent / f"{sweep.name}.rss"
    run_env = {**env, "PYTHONPATH": str(code), "BENCH_RSS_FILE": str(rss_file)}
    argv = [sys.executable, "-c", RSS_WRAPPER, str(app), "-m", *overrides, f"hydra.sweep.dir={sweep}"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Launch(time.perf_counter() - started, 0, float("nan"), False, f"timed out after {timeout_s:g} s")
    wall = time.perf_counter() - started
    files = sum(1 for p in sweep.rglob("*") if p.is_file()) if sweep.exists() else 0  # Hydra's multirun.yaml too
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else float("nan")
    return Launch(wall, files, rss, proc.returncode == 0, proc.stderr.strip()[-800:] if proc.returncode else "")


def dry_runs(workdir: Path, sizes: list[int], anchor_max: int, env: dict[str, str]) -> list[str]:
    rows = []
    with anchor_tree(workdir) as anchor:
        for n in sizes:
            cells = []
            for label, code in (("anchor", anchor), ("now", REPO)):
                if label == "anchor" and n > anchor_max:
                    cells.append(None)
                    continue
                say(f"dry run, {n} jobs, {label} code")
                sweep = workdir / f"dry-{label}-{n}"
                overrides = ["hydra/launcher=slurm", "hydra.launcher.dry_run=true", f"x=range({n})"]
                result = launch(code, sweep, overrides, env, timeout_s=120 + n * 0.02)
                if not result.ok:
                    say(f"{label} failed: {result.error}")
                cells.append(result)
                shutil.rmtree(sweep, ignore_errors=True)
            rows.append(_dry_row(n, *cells))
    head = "| jobs | anchor s | now s | anchor / now | anchor files | now files | anchor MB | now MB |"
    return [head, "|---|---|---|---|---|---|---|---|", *rows]


def _dry_row(n: int, old: Launch | None, new: Launch | None) -> str:
    def cell(r: Launch | None, attr: str, fmt: str) -> str:
        return "skipped" if r is None else ("failed" if not r.ok else format(getattr(r, attr), fmt))

    ratio = f"{old.wall_s / new.wall_s:.0f}x" if old and new and old.ok and new.ok else "-"
    return (
        f"| {n} | {cell(old, 'wall_s', '.1f')} | {cell(new, 'wall_s', '.2f')} | {ratio} | {cell(old, 'files', 'd')} "
        f"| {cell(new, 'files', 'd')} | {cell(old, 'rss_mb', '.0f')} | {cell(new, 'rss_mb', '.0f')} |"
    )


def timed(argv: list[str], env: dict[str, str], repeat: int = 3) -> float:
    """Median wall time of a command (a fresh process each time)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, timeout=600, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def first_job_running(code: Path, workdir: Path, n: int, env: dict[str, str]) -> float:
    """Seconds from process start until the first job's stdout.log appears: the batch script
    creates it when the task starts (the anchor wrote each job's launcher dir before submitting)."""
    sweep = workdir / f"first-{code.name}-{n}"
    sweep.mkdir(parents=True)
    first = sweep / "0" / ".launcher" / "stdout.log"
    run_env = {**env, "PYTHONPATH": str(code)}
    argv = [sys.executable, str(code / APP_REL), "-m", "hydra/launcher=slurm", "hydra.launcher.wait=false"]
    argv += ["hydra.launcher.timeout_min=30", f"x=range({n})", f"hydra.sweep.dir={sweep}"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=workdir, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = float("nan")
    deadline = started + 300
    while time.perf_counter() < deadline:
        if first.exists():
            seen = time.perf_counter() - started
            break
        time.sleep(0.02)
    proc.wait(timeout=600)
    return seen


def cluster_part(workdir: Path, env: dict[str, str]) -> list[str]:
    from tests.slurm_cluster import SlurmCluster

    lines = []
    # 10,000-job sweeps, anchor then now, each cancelled: slurmctld keeps finished jobs for 300 s
    with SlurmCluster(workdir / "cluster", cpus=8, max_job_count=60_000) as cluster, anchor_tree(workdir) as anchor:
        env = {**env, **cluster.env}
        say("Hydra's start-up alone (a 1-job dry run)")
        startup = launch(
            REPO, workdir / "startup", ["hydra/launcher=slurm", "hydra.launcher.dry_run=true", "x=0"], env, 120
        ).wall_s
        firsts = {}
        for label, code in (("anchor", anchor), ("now", REPO)):
            say(f"10,000 jobs, {label} code: time to the first job running")
            firsts[label] = first_job_running(code, workdir, 10_000, env)
            cluster.run("scancel", "--me", check=False)
        lines += [
            "| 10,000 jobs | anchor | now | goal |",
            "|---|---|---|---|",
            f"| Hydra start-up (1-job dry run) s | {startup:.2f} | {startup:.2f} | |",
            f"| first job running after start s | {firsts['anchor']:.1f} | {firsts['now']:.1f} | |",
            f"| ... minus Hydra's start-up s | {firsts['anchor'] - startup:.1f} | {firsts['now'] - startup:.1f} "
            "| <= 3 |",
        ]
        held = ["hydra/launcher=slurm", "hydra.launcher.wait=false", "+hydra.launcher.additional_parameters.hold=true"]
        # a queue of 10,000 cancelled jobs keeps slurmctld busy for a while: allow slow sbatch answers
        held.append("hydra.launcher.command_timeout_s=600")
        for n, extra in ((10_000, []), (100_000, ["hydra.launcher.jobs_per_task=100"])):
            say(f"{n} held jobs: launch, status, pull")
            sweep = workdir / f"held-{n}"
            result = launch(REPO, sweep, [*held, *extra, f"x=range({n})"], env, 600)
            if not result.ok:
                say(f"held launch failed: {result.error}")
                continue
            status = timed([sys.executable, "-m", "launcher_core", "status", str(sweep)], env)
            pull = timed([sys.executable, "-m", "launcher_core.pull", str(sweep), "--once"], env)
            store_mb = (sweep / ".launcher" / "state.sqlite").stat().st_size / 2**20
            cluster.run("scancel", "--me", check=False)
            say(f"{n} held jobs: launch {result.wall_s:.1f} s, status {status:.2f} s, pull {pull:.2f} s")
            lines += [
                "",
                f"| {n:,} held jobs{' (jobs_per_task=100)' if extra else ''} | now | goal |",
                "|---|---|---|",
                f"| launch (wait=false) s | {result.wall_s:.1f} | |",
                f"| launching process peak MB | {result.rss_mb:.0f} | <= 500 |",
                f"| state store MB | {store_mb:.1f} | <= 50 |",
                f"| launcher-core status s | {status:.2f} | <= 1 at 10,000 |",
                f"| pull --once, nothing new s | {pull:.2f} | <= 1 at 10,000 |",
            ]
    return lines


def ssh_part(workdir: Path, n: int, env: dict[str, str]) -> list[str]:
    """remote_ssh, ``wait=false``, to one loopback host (tests/sshd.py; root and openssh-server):
    until the host's runner accepted every job, and the files written locally for it."""
    from tests import sshd

    sshd.ensure_users()
    python = sshd.ensure_remote_python()
    server = sshd.new_server("scale")
    run_id = f"scale-{os.getpid()}"
    remote_dir = f"{sshd.TESTS_DIR}/{run_id}"
    work = sshd.shared_dir("hrl-bench-scale")
    rows = []
    try:
        with anchor_tree(workdir) as anchor:
            for label, code in (("anchor", anchor), ("now", REPO)):
                say(f"remote_ssh, {n} jobs, {label} code")
                proj = sshd.make_project(work / f"proj-{label}")
                sweep = proj / "multirun" / "scale"
                overrides = [
                    "hydra/launcher=remote_ssh",
                    "hydra.launcher.wait=false",
                    "hydra.launcher.max_parallel=1",
                    f"hydra.launcher.hosts=[{server.alias()}]",
                    f"hydra.launcher.ssh_config={server.ssh_config}",
                    f"hydra.launcher.python={python}",
                    f"hydra.launcher.remote_dir={remote_dir}-{label}",
                    f"hydra.launcher.rsync_path={server.rsync_wrapper}",
                    f"x=range({n})",
                ]
                # the project's own app (tests/sshd.py), run with `code` first on PYTHONPATH
                result = launch_app(code, proj / "app.py", sweep, overrides, env, timeout_s=900, cwd=proj)
                cancel_env = {**env, "PYTHONPATH": str(code)}
                subprocess.run(
                    [sys.executable, "-m", "launcher_core", "cancel", str(sweep)],
                    env=cancel_env,
                    capture_output=True,
                    timeout=300,
                    check=False,
                )
                sshd.kill_run_processes(run_id)
                rows.append((label, result))
    finally:
        server.stop()
        sshd.kill_run_processes(run_id)
        sshd.remove_shared_dirs()
    lines = [f"| remote_ssh, {n:,} jobs, wait=false | anchor | now | goal |", "|---|---|---|---|"]
    by = dict(rows)
    for what, attr, fmt in (
        ("until every job is accepted s", "wall_s", ".1f"),
        ("files written locally", "files", "d"),
        ("launching process peak MB", "rss_mb", ".0f"),
    ):
        cells = [format(getattr(by[k], attr), fmt) if by[k].ok else "failed" for k in ("anchor", "now")]
        goal = {"wall_s": "", "files": "<= 20", "rss_mb": ""}[attr]
        lines.append(f"| {what} | {cells[0]} | {cells[1]} | {goal} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("dry", "cluster", "ssh", "all"), default="all")
    parser.add_argument("--ssh-jobs", type=int, default=10_000)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--anchor-max", type=int, default=10_000, help="largest dry run of the anchor code")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="hrl-bench-scale-"))
    env = {**os.environ, "HYDRA_REMOTE_LAUNCHER_HOME": str(workdir / "home")}
    out: list[str] = []
    try:
        if args.part in ("dry", "all"):
            sizes = [int(s) for s in args.sizes.split(",")]
            out += ["dry runs (slurm, nothing submitted):", "", *dry_runs(workdir, sizes, args.anchor_max, env), ""]
        if args.part in ("cluster", "all"):
            out += ["on the test cluster:", "", *cluster_part(workdir, env), ""]
        if args.part in ("ssh", "all"):
            out += ["to a loopback SSH host:", "", *ssh_part(workdir, args.ssh_jobs, env)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"anchor: {ANCHOR}; now: {head.stdout.strip()}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
