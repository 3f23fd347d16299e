"""How long ``launcher-core results`` takes on a 10,000-job sweep (the goal: under 2 s).

A real local_pool sweep of ``tests/apps/results_app.py`` (8 jobs) gives real ``result.pkl`` files
and state rows; the benchmark then grows it to N jobs with the launcher's own writers (the state
store's ``add_jobs``/``mark_submitted``/``update_states``/``mark_pulled``, the worker's
``dump_job_return`` with a different return value per job), so the files have the real format
and size. Each command runs as a fresh process, as a user would run it (imports included), a few
times; the table prints the best and median wall time next to the goal.

    .venv/bin/python bench/bench_results.py                 # 10,000 jobs
    .venv/bin/python bench/bench_results.py --jobs 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GOAL_S = 2.0


def real_sweep(root: Path) -> Path:
    sweep = root / "seed"
    argv = [sys.executable, str(REPO / "tests/apps/results_app.py"), "-m", "hydra/launcher=local_pool"]
    argv += [f"hydra.sweep.dir={sweep}", "model=cnn,mlp", "lr=1e-3,1e-2", "seed=0,1"]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"seed sweep failed:\n{proc.stderr[-2000:]}")
    return sweep


def grow(seed: Path, dest: Path, n_jobs: int) -> None:
    """A sweep of ``n_jobs`` jobs made from the seed sweep's files (a failed job every 50th)."""
    from hydra.core.utils import JobStatus

    from launcher_core.jobs import JobSpec, JobState, job_id_for
    from launcher_core.runtime.worker import dump_job_return, load_job_return
    from launcher_core.state import StateStore

    template = load_job_return(seed / "0" / ".launcher" / "result.pkl")
    with StateStore.for_sweep_dir(seed, readonly=True) as store:
        meta = store.meta()
    meta.update(sweep_id="bench-results", sweep_dir=str(dest))
    models, lrs = ["cnn", "mlp", "tf", "rnn"], [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    specs = []
    for i in range(n_jobs):
        overrides = [f"model={models[i % 4]}", f"lr={lrs[i // 4 % 5]}", f"seed={i // 20}"]
        specs.append(JobSpec(job_id_for("bench-results", i, overrides), i, overrides, dest / str(i)))
    for spec in specs:
        ret = template  # one JobReturn, dumped with each job's own status and value
        failed = spec.idx % 50 == 49
        ret.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
        ret._return_value = (
            ValueError(f"diverged at step {spec.idx}")
            if failed
            else {
                "val": {"acc": (spec.idx % 997) / 997, "loss": 1 - (spec.idx % 997) / 997},
                "train_loss": spec.idx / n_jobs,
            }
        )
        (spec.output_dir / ".launcher").mkdir(parents=True, exist_ok=True)
        (spec.output_dir / ".launcher" / "result.pkl").write_bytes(dump_job_return(ret))
    with StateStore.for_sweep_dir(dest) as store:
        store.set_meta(meta)
        store.add_jobs(specs)
        store.mark_submitted({s.job_id: {"host": "localhost"} for s in specs}, launch_id="bench")
        store.update_states({s.job_id: (JobState.RUNNING, None) for s in specs}, {s.job_id: "localhost" for s in specs})
        done = {s.job_id: (JobState.FAILED if s.idx % 50 == 49 else JobState.COMPLETED, None) for s in specs}
        store.update_states(done)
        store.mark_pulled([s.job_id for s in specs])


def time_command(args: list[str], repeat: int) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "launcher_core", *args], capture_output=True, timeout=300)
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"{args}: {proc.stderr.decode()[-2000:]}")
        size = len(proc.stdout)
    return min(times), statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-results-"))
    os.environ["HYDRA_REMOTE_LAUNCHER_HOME"] = str(root / "home")
    try:
        print(f"building a {opts.jobs}-job sweep in {root} ...", file=sys.stderr)
        sweep = root / "sweep"
        grow(real_sweep(root), sweep, opts.jobs)
        cases = [
            ("results (table, piped)", ["results", str(sweep)]),
            ("results --format json", ["results", str(sweep), "--format", "json"]),
            ("results --format csv", ["results", str(sweep), "--format", "csv"]),
            ("results --sort=-val.acc --top 10", ["results", str(sweep), "--sort=-val.acc", "--top", "10"]),
            ("results --where model=cnn", ["results", str(sweep), "--where", "model=cnn"]),
            ("status --offline (for scale)", ["status", str(sweep), "--offline"]),
            ("launcher-core --help (start-up)", ["--help"]),
        ]
        print(f"\n{opts.jobs} jobs, {opts.repeat} runs each (a fresh process per run, imports included)")
        print(f"{'command':<36} {'best s':>8} {'median s':>9} {'vs goal':>8} {'output':>10}")
        for label, args in cases:
            best, median, size = time_command(args, opts.repeat)
            print(f"{label:<36} {best:>8.2f} {median:>9.2f} {median / GOAL_S:>7.2f}x {size / 1e6:>8.2f}MB")
        print(f"goal: results on {opts.jobs} jobs in under {GOAL_S:g} s (vs goal = median / goal; < 1 meets it)")
    finally:
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
