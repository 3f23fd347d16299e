"""A pipeline stage's launch at sweep scale against a plain sweep of the same jobs on the same
backend, side by side in one run (measurements alternate, medians of ``--repeat``).

Part 1, dry runs (``hydra/launcher=slurm hydra.launcher.dry_run=true``: the launch loop checks
every job's config and writes the array scripts, nothing is submitted, no cluster needed), of
``bench/noop_app`` with N jobs (default 10,000):

* plain sweep: ``python app.py -m hydra/launcher=slurm hydra.launcher.dry_run=true x=range(N)``;
* stage launch: the multirun ``pipeline run`` starts for a one-stage pipeline with those overrides
  (its jobs listed in the stage's jobs file, each with its number), timed alone;
* downstream stage launch: a stage matched job for job with an upstream stage, every job with its
  own upstream dir (``up=${stage:first,output_dir}``: N distinct path values), timed alone;
* ``pipeline run``: the whole ``launcher-core pipeline run FILE --no-driver`` of the one-stage
  pipeline (reading and planning the file, composing the stage's launcher once, the launch,
  the status table).

Part 2, local_pool (``n_jobs=2``) running N no-op jobs (default 1,000): the plain sweep against
``pipeline run FILE --wait`` of the one-stage pipeline.

    .venv/bin/python bench/bench_pipeline.py                      # ~3 min on 2 cores
    .venv/bin/python bench/bench_pipeline.py --part dry --jobs 10000 --repeat 5
    .venv/bin/python bench/bench_pipeline.py --part local --local-jobs 2000

Goal (issue 24): a 10,000-job stage's launch within 1.5x of the plain sweep's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_scale import RSS_WRAPPER, Launch, say

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
APP = HERE / "noop_app" / "app.py"
DRY = ["hydra/launcher=slurm", "hydra.launcher.dry_run=true"]
LOCAL = ["hydra/launcher=local_pool", "hydra.launcher.n_jobs=2"]
GOAL = 1.5
# RSS_WRAPPER for ``python -m MODULE ...``
MODULE_WRAPPER = RSS_WRAPPER.replace(
    "runpy.run_path(sys.argv[0], run_name='__main__')",
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)",
)
sys.path.insert(0, str(REPO))


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float, count: Path | None = None) -> Launch:
    """Run ``argv`` (a Python command: wrapped to record its peak memory) in ``cwd``: wall time,
    files written under ``count`` afterwards, peak MB."""
    rss_file = cwd.parent / f"rss-{time.monotonic_ns()}"
    if argv[1] == "-m":
        wrapped = [argv[0], "-c", MODULE_WRAPPER, *argv[2:]]
    else:
        wrapped = [argv[0], "-c", RSS_WRAPPER, *argv[1:]]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            wrapped,
            cwd=cwd,
            env={**env, "BENCH_RSS_FILE": str(rss_file)},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return Launch(time.perf_counter() - started, 0, float("nan"), False, f"timed out after {timeout_s:g} s")
    wall = time.perf_counter() - started
    files = sum(1 for p in count.rglob("*") if p.is_file()) if count and count.exists() else 0
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else float("nan")
    rss_file.unlink(missing_ok=True)
    error = (proc.stderr.strip() or proc.stdout.strip())[-800:] if proc.returncode else ""
    return Launch(wall, files, rss, proc.returncode == 0, error)


def write_pipeline(root: Path, name: str, launcher: list[str], n: int, downstream: bool = False) -> Path:
    """A pipeline file: stage ``first`` (``x=range(n)``), and with ``downstream`` stage ``second``
    reading, per job, the dir of the ``first`` job with its x."""
    code = root / "code"  # an empty code dir, as the plain sweep's: its frozen snapshot is not what we count
    stages: dict = {"first": {"app": str(APP), "cwd": str(code), "overrides": [*launcher, f"x=range({n})"]}}
    if downstream:
        stages["second"] = {
            "app": str(APP),
            "cwd": str(code),
            "needs": ["first"],
            "overrides": [*launcher, f"x=range({n})", "+up=${stage:first,output_dir}"],
        }
    file = root / f"{name}.yaml"
    file.write_text(json.dumps({"name": name, "dir": str(root / name), "stages": stages}))
    return file


def stage_argv(file: Path, stage: str) -> tuple[list[str], Path]:
    """The command ``pipeline run`` would start to launch every job of ``stage`` now (its jobs
    file written), with the stage's sweep dir; upstream stages need not have run."""
    from launcher_core.pipeline.launch import launch_argv, write_launch_files
    from launcher_core.pipeline.runner import Runner, RunOptions
    from launcher_core.pipeline.schedule import resolved_plan
    from launcher_core.pipeline.spec import load_pipeline
    from launcher_core.pipeline.state import PipelineState, read_views

    pipeline = load_pipeline(file)
    runner = Runner(pipeline, RunOptions(), PipelineState.load(pipeline))
    runner.place()
    target = pipeline.stages[stage]
    plan = resolved_plan(pipeline, read_views(pipeline), target, [j.num for j in target.jobs], runner.places)
    argv = launch_argv(pipeline, plan, runner.places[stage], *write_launch_files(pipeline, plan))
    return argv, pipeline.stage_dir(stage)


def measure(cases: dict[str, Callable[[], Launch]], repeat: int) -> dict[str, list[Launch]]:
    """Each case ``repeat`` times, the cases taking turns (load from other processes hits all alike)."""
    out: dict[str, list[Launch]] = {name: [] for name in cases}
    for i in range(repeat):
        for name, case in cases.items():
            say(f"{name} ({i + 1}/{repeat})")
            result = case()
            if not result.ok:
                say(f"{name} failed: {result.error}")
            out[name].append(result)
    return out


def median(results: list[Launch], attr: str = "wall_s") -> float:
    ok = [getattr(r, attr) for r in results if r.ok]
    return statistics.median(ok) if ok else float("nan")


def dry_part(work: Path, n: int, repeat: int, downstream_repeat: int, env: dict[str, str]) -> list[str]:
    one = write_pipeline(work, "dry1", DRY, n)
    two = write_pipeline(work, "dry2", DRY, n, downstream=True)
    whole_file = write_pipeline(work, "dry-whole", DRY, n)
    first_argv, first_dir = stage_argv(one, "first")
    second_argv, second_dir = stage_argv(two, "second")
    plain_dir = work / "plain-dry"
    timeout = 120 + n * 0.02

    def plain() -> Launch:
        shutil.rmtree(plain_dir, ignore_errors=True)
        argv = [sys.executable, str(APP), "-m", *DRY, f"x=range({n})", f"hydra.sweep.dir={plain_dir}"]
        return run(argv, work / "code", env, timeout, plain_dir)

    def stage(argv: list[str], sweep: Path) -> Callable[[], Launch]:
        def case() -> Launch:
            shutil.rmtree(sweep, ignore_errors=True)
            return run(argv, work / "code", env, timeout, sweep)

        return case

    def whole() -> Launch:
        shutil.rmtree(work / "dry-whole", ignore_errors=True)
        argv = [sys.executable, "-m", "launcher_core", "pipeline", "run", str(whole_file), "--no-driver"]
        return run(argv, work / "code", env, timeout, work / "dry-whole" / "first")

    results = measure(
        {"plain sweep": plain, "stage launch": stage(first_argv, first_dir), "pipeline run": whole}, repeat
    )
    # once, unless --downstream-repeat (it was slow: a few ms a job before strings were covered by type)
    results.update(measure({"downstream stage launch": stage(second_argv, second_dir)}, downstream_repeat))
    base = median(results["plain sweep"])
    lines = [
        f"| slurm dry run, {n:,} jobs (median of {repeat}; downstream: {downstream_repeat}) "
        "| wall s | / plain | files | peak MB |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        wall = median(runs)
        mark = "" if name == "plain sweep" else f"{wall / base:.2f}x"
        if name == "stage launch":
            mark += f" (goal <= {GOAL}x)"
        lines.append(f"| {name} | {wall:.2f} | {mark} | {median(runs, 'files'):.0f} | {median(runs, 'rss_mb'):.0f} |")
    return lines


def local_part(work: Path, n: int, repeat: int, env: dict[str, str]) -> list[str]:
    file = write_pipeline(work, "local1", LOCAL, n)
    plain_dir = work / "plain-local"
    timeout = 120 + n * 0.6

    def plain() -> Launch:
        shutil.rmtree(plain_dir, ignore_errors=True)
        argv = [sys.executable, str(APP), "-m", *LOCAL, f"x=range({n})", f"hydra.sweep.dir={plain_dir}"]
        return run(argv, work / "code", env, timeout)

    def whole() -> Launch:
        shutil.rmtree(work / "local1", ignore_errors=True)
        argv = [sys.executable, "-m", "launcher_core", "pipeline", "run", str(file), "--wait"]
        return run(argv, work / "code", env, timeout)

    results = measure({"plain sweep": plain, "pipeline run --wait": whole}, repeat)
    base = median(results["plain sweep"])
    lines = [f"| local_pool n_jobs=2, {n:,} no-op jobs (median of {repeat}) | wall s | / plain |", "|---|---|---|"]
    for name, runs in results.items():
        wall = median(runs)
        lines.append(f"| {name} | {wall:.1f} | {'' if name == 'plain sweep' else f'{wall / base:.2f}x'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("dry", "local", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs of the dry runs")
    parser.add_argument("--local-jobs", type=int, default=1_000, help="no-op jobs run on local_pool")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--downstream-repeat", type=int, default=1, help="runs of the (slow) downstream stage launch")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hrl-bench-pipeline-"))
    (work / "code").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
        "HYDRA_REMOTE_LAUNCHER_HOME": str(work / "home"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    os.environ.update(HYDRA_REMOTE_LAUNCHER_HOME=env["HYDRA_REMOTE_LAUNCHER_HOME"], PYTHONPATH=env["PYTHONPATH"])
    out: list[str] = []
    try:
        if args.part in ("dry", "all"):
            out += [*dry_part(work, args.jobs, args.repeat, args.downstream_repeat, env), ""]
        if args.part in ("local", "all"):
            out += local_part(work, args.local_jobs, args.repeat, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"code: {head.stdout.strip()}; load average at the end: {os.getloadavg()[0]:.1f}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
