"""The same no-op sweep through our ``slurm`` launcher and hydra-submitit-launcher's ``submitit_slurm``,
on one real single-node Slurm cluster started for the run (tests/slurm_cluster.py; root and the
Debian packages slurmctld slurmd slurm-client slurmdbd munge mariadb-server are needed).

    python bench/bench_slurm.py                      # 200 jobs, every launcher (~6 min)
    python bench/bench_slurm.py --jobs 1000 --launchers slurm_packed,submitit_slurm   # jobs_per_task (~10 min)
    python bench/bench_slurm.py --jobs 50 --launchers slurm
    python bench/bench_slurm.py --cpus 16 --timeout 900

Each sweep runs as ``sys.executable bench/noop_app/app.py -m hydra/launcher=... x=range(N)`` in a
fresh temp dir, bounded by a timeout, with wrapper scripts first on ``PATH`` that log every call of
sbatch, sacct, squeue, scontrol and scancel before exec'ing the real binary (calls made inside the
jobs count too). The table shows wall time, jobs done, submitit_slurm's wall time over each
launcher's, the array tasks or jobs Slurm queued for the sweep (what ``MaxSubmitJobs`` counts) and
the calls per command. ``slurm_packed`` is ``jobs_per_task=50``. Only loopback is used. Results go
to bench/results/bench_slurm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP = HERE / "noop_app" / "app.py"
sys.path.insert(0, str(REPO))

from tests.slurm_cluster import SLURM_COMMANDS, CommandLog, SlurmCluster, ensure_packages  # noqa: E402

LAUNCHERS: dict[str, list[str]] = {
    "slurm": ["hydra/launcher=slurm", "hydra.launcher.timeout_min=30"],
    # jobs_per_task: 50 no-op jobs one after another in each array task (one Python start-up)
    "slurm_packed": ["hydra/launcher=slurm", "hydra.launcher.timeout_min=30", "hydra.launcher.jobs_per_task=50"],
    "submitit_slurm": ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=30"],
}
ANCHOR = "submitit_slurm"  # ratios are this launcher's wall time over each launcher's


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Run:
    launcher: str
    jobs: int
    ok: bool = False
    error: str = ""
    wall_s: float = float("nan")
    jobs_done: int = 0
    slurm_jobs: int = 0  # array tasks or jobs Slurm had in its queue for the sweep (sacct)
    calls: dict[str, int] = field(default_factory=dict)


def count_done(sweep_dir: Path) -> int:
    """Jobs whose task really ran: Hydra writes ``.hydra/config.yaml`` into each job dir."""
    return sum(1 for _ in sweep_dir.glob("*/.hydra/config.yaml"))


def run_one(launcher: str, jobs: int, workdir: Path, log: CommandLog, env: dict[str, str], timeout_s: float) -> Run:
    run = Run(launcher, jobs)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    sweep_dir = workdir / launcher / "sweep"
    sweep_dir.parent.mkdir(parents=True)
    args = [sys.executable, str(APP), "-m", *LAUNCHERS[launcher], f"x=range({jobs})", f"hydra.sweep.dir={sweep_dir}"]
    log.reset()
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args, cwd=sweep_dir.parent, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        run.ok = proc.returncode == 0
        if not run.ok:
            run.error = proc.stderr.strip()[-1500:]
    except subprocess.TimeoutExpired:
        run.error = f"timed out after {timeout_s:g} s"
    run.wall_s = time.monotonic() - started
    run.jobs_done = count_done(sweep_dir)
    run.calls = {name: log.calls(name) for name in SLURM_COMMANDS}
    run.slurm_jobs = count_slurm_jobs(since, env)
    return run


def count_slurm_jobs(since: str, env: dict[str, str]) -> int:
    """Array tasks and jobs sacct knows since ``since`` (what a MaxSubmitJobs limit counts)."""
    proc = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID", "-S", since],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return len([line for line in proc.stdout.splitlines() if line.strip()])


def table(runs: list[Run]) -> str:
    anchor = next((r.wall_s for r in runs if r.launcher == ANCHOR and r.ok), float("nan"))
    head = ["launcher", "jobs", "done", "wall s", f"{ANCHOR} / it", "slurm jobs", *SLURM_COMMANDS, "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        counts = [str(r.calls[c]) for c in SLURM_COMMANDS]
        ratio = f"{anchor / r.wall_s:.1f}x" if r.wall_s > 0 else "-"
        cells = [r.launcher, str(r.jobs), str(r.jobs_done), f"{r.wall_s:.1f}", ratio, str(r.slurm_jobs), *counts]
        lines.append("| " + " | ".join([*cells, "yes" if r.ok else "NO"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--launchers", default=",".join(LAUNCHERS))
    parser.add_argument("--cpus", type=int, default=8, help="CPUs the test node declares (more than it has is fine)")
    parser.add_argument("--timeout", type=float, default=900.0, help="bound on each sweep, seconds")
    args = parser.parse_args(argv)
    reason = ensure_packages()
    if reason:
        say(reason)
        return 2
    launchers = [name.strip() for name in args.launchers.split(",") if name.strip()]
    unknown = [name for name in launchers if name not in LAUNCHERS]
    if unknown:
        parser.error(f"unknown launchers {unknown}; known: {', '.join(LAUNCHERS)}")
    workdir = Path(tempfile.mkdtemp(prefix="hrl-bench-slurm-"))
    runs: list[Run] = []
    try:
        with SlurmCluster(workdir / "cluster", cpus=args.cpus) as cluster:
            log = CommandLog(workdir / "calls")
            env = {**os.environ, **cluster.env, "PATH": f"{log.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
            env["HYDRA_REMOTE_LAUNCHER_HOME"] = str(workdir / "launcher-home")
            say(f"cluster up ({args.cpus} CPUs, MaxArraySize {cluster.max_array_size_from_config()})")
            for launcher in launchers:
                say(f"{launcher}: {args.jobs} no-op jobs")
                run = run_one(launcher, args.jobs, workdir, log, env, args.timeout)
                say(f"{launcher}: {run.wall_s:.1f} s, {run.jobs_done} done, calls {run.calls}")
                if run.error:
                    say(f"{launcher} failed: {run.error}")
                runs.append(run)
                cluster.run("scancel", "--me", check=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(runs))
    out = HERE / "results" / "bench_slurm.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
