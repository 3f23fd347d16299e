"""Wall time of the same no-op sweep under Hydra's basic launcher, hydra-joblib-launcher and local_pool.

    python bench/bench_local.py                 # sizes 100 and 1000, every launcher (~10 min)
    python bench/bench_local.py --quick         # size 100 only
    python bench/bench_local.py --sizes 300 --launchers joblib,local_pool
    python bench/bench_local.py --basic-max-size 100   # skip the slow basic launcher above 100 jobs

Every sweep runs as ``sys.executable bench/noop_app/app.py -m ... x=range(N)`` in a fresh temp
dir, bounded by a timeout. ``app.py`` gets ``BENCH_TIMINGS_FILE`` and records phase timers (see
``noop_app/_bench_timing.py``), so besides wall time the table shows where the controller spends
its time. A second table measures, in one process, composing job configs with Hydra's
``load_sweep_config`` against ``launcher_core.runtime.compose.SweepComposer``. No network is used.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APP = HERE / "noop_app" / "app.py"
CONF = HERE / "noop_app" / "conf"

# launcher name -> Hydra overrides ({n_jobs} is filled in)
LAUNCHERS: dict[str, list[str]] = {
    "basic": ["hydra/launcher=basic"],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs={n_jobs}"],
    "local_pool": ["hydra/launcher=local_pool", "hydra.launcher.n_jobs={n_jobs}"],
    # our sweeper does not recompose every job before launching (Hydra's BasicSweeper does)
    "local_pool+paired": ["hydra/launcher=local_pool", "hydra.launcher.n_jobs={n_jobs}", "hydra/sweeper=paired"],
}
DEFAULT_LAUNCHERS = "basic,joblib,local_pool,local_pool+paired"
TARGET_CTRL_MS = 10.0
TARGET_RATIO = 0.2


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Run:
    launcher: str
    size: int
    ok: bool = False
    error: str = ""
    wall_s: float = float("nan")
    jobs_done: int = 0
    timings: dict[str, Any] = field(default_factory=dict)
    spawn_epoch: float = 0.0
    other_cpu_pct: float | None = None  # CPU used by other processes on the machine during the run

    def stat(self, name: str, key: str = "wall_s") -> float | None:
        entry = self.timings.get("stats", {}).get(name)
        return None if entry is None else float(entry[key])

    @property
    def startup_s(self) -> float | None:
        start = self.timings.get("marks", {}).get("sweep_start_epoch")
        return None if start is None else start - self.spawn_epoch

    @property
    def to_submitted_s(self) -> float | None:
        marks = self.timings.get("marks", {})
        if "submitted_perf" not in marks:
            return None
        return marks["submitted_perf"] - marks["sweep_start_perf"]


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine spent busy since boot (all CPUs), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_idle(max_wait_s: float, threshold_pct: float = 15.0) -> float | None:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold_pct`` of the CPUs
    over one second; return the last measured busy percentage."""
    deadline = time.monotonic() + max_wait_s
    busy_pct = None
    while True:
        before = _busy_cpu_s()
        time.sleep(1.0)
        after = _busy_cpu_s()
        if before is None or after is None:
            return None
        busy_pct = 100 * (after - before) / (os.cpu_count() or 1)
        if busy_pct < threshold_pct or time.monotonic() >= deadline:
            return busy_pct


def default_timeout(size: int) -> float:
    return 120.0 + 0.6 * size


def run_sweep(launcher: str, size: int, n_jobs: int, timeout_s: float, keep: bool) -> Run:
    run = Run(launcher, size)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{launcher.replace('+', '-')}-{size}-"))
    sweep_dir = tmp / "sweep"
    timings_file = tmp / "timings.json"
    overrides = [o.format(n_jobs=n_jobs) for o in LAUNCHERS[launcher]]
    cmd = [sys.executable, str(APP), "-m", *overrides, f"x=range({size})", f"hydra.sweep.dir={sweep_dir}"]
    env = {
        **os.environ,
        "BENCH_TIMINGS_FILE": str(timings_file),
        "HYDRA_FULL_ERROR": "1",
        "HYDRA_REMOTE_LAUNCHER_HOME": str(tmp / "launcher_home"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    busy_before, ours_before = _busy_cpu_s(), _children_cpu_s()
    with open(tmp / "stdout.log", "wb") as out, open(tmp / "stderr.log", "wb") as err:
        run.spawn_epoch = time.time()
        tic = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        run.wall_s = time.perf_counter() - tic
    busy_after = _busy_cpu_s()
    if busy_before is not None and busy_after is not None:
        other = (busy_after - busy_before) - (_children_cpu_s() - ours_before)
        run.other_cpu_pct = max(0.0, 100 * other / (run.wall_s * (os.cpu_count() or 1)))
    # every job wrote its config: count them (a crashed or skipped job is missing)
    run.jobs_done = sum(1 for d in sweep_dir.glob("*/.hydra/config.yaml")) if sweep_dir.exists() else 0
    if timings_file.exists():
        run.timings = json.loads(timings_file.read_text())
    if code is None:
        run.error = f"timed out after {timeout_s:.0f} s"
    elif code != 0:
        tail = (tmp / "stderr.log").read_text(errors="replace").strip().splitlines()[-8:]
        run.error = f"exit code {code}: " + " | ".join(tail)
    elif run.jobs_done != size:
        run.error = f"only {run.jobs_done}/{size} jobs wrote their config"
    else:
        run.ok = True
    if keep or not run.ok:
        say(f"  output kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return run


def _ms_per_job(seconds: float | None, size: int) -> str:
    return "-" if seconds is None else f"{1000 * seconds / size:.1f}"


def print_table(runs: list[Run]) -> None:
    joblib_wall = {r.size: r.wall_s for r in runs if r.launcher == "joblib" and r.ok}
    cols = [
        ("jobs", 5),
        ("launcher", 18),
        ("wall s", 8),
        ("ms/job", 7),
        ("x joblib", 8),
        ("startup s", 9),
        ("sweep ms/job", 12),
        ("validate ms/job", 15),
        ("compose ms/job", 14),
        ("to-submit ms/job", 16),
        ("ctrl CPU ms/job", 15),
        ("other CPU %", 11),
    ]
    print("  ".join(f"{name:>{width}}" if i != 1 else f"{name:<{width}}" for i, (name, width) in enumerate(cols)))
    print("  ".join("-" * width for _, width in cols))
    for r in runs:
        if not r.ok:
            print(f"{r.size:>5}  {r.launcher:<18}  FAILED: {r.error}")
            continue
        ratio = joblib_wall.get(r.size)
        cells = [
            f"{r.size:>5}",
            f"{r.launcher:<18}",
            f"{r.wall_s:>8.1f}",
            f"{1000 * r.wall_s / r.size:>7.1f}",
            f"{r.wall_s / ratio:>8.3f}" if ratio else f"{'-':>8}",
            f"{r.startup_s:>9.2f}" if r.startup_s is not None else f"{'-':>9}",
            f"{_ms_per_job(r.stat('sweep'), r.size):>12}",
            f"{_ms_per_job(r.stat('validate'), r.size):>15}",
            f"{_ms_per_job(r.stat('compose'), r.size):>14}",
            f"{_ms_per_job(r.to_submitted_s, r.size):>16}",
            f"{_ms_per_job(r.stat('sweep', 'cpu_s'), r.size):>15}",
            f"{r.other_cpu_pct:>11.0f}" if r.other_cpu_pct is not None else f"{'-':>11}",
        ]
        print("  ".join(cells))
    print()
    print(
        "wall: whole command incl. interpreter start; startup: process start -> sweep start (imports, master "
        "config);\nsweep: the sweeper's sweep(); validate: Hydra's Sweeper.validate_batch_is_legal (composes every "
        "job);\ncompose: launcher_core build_job_specs; to-submit: sweep start -> every job handed to the backend;\n"
        "ctrl CPU: CPU of the controller process during sweep() (forked jobs not included; the basic launcher "
        "runs jobs in it);\nother CPU: share of the machine's CPUs used by processes outside the benchmark during "
        "the run (noise: above ~10 % the times are inflated)."
    )


def print_targets(runs: list[Run]) -> None:
    by_key = {(r.launcher, r.size): r for r in runs if r.ok}
    lines = []
    for launcher in ("local_pool", "local_pool+paired"):
        for size in sorted({r.size for r in runs}):
            r = by_key.get((launcher, size))
            if r is None:
                continue
            cpu = r.stat("sweep", "cpu_s")
            sub = r.to_submitted_s
            ctrl = max(x for x in (cpu, sub, 0.0) if x is not None) * 1000 / size
            verdict = "PASS" if ctrl <= TARGET_CTRL_MS else "MISS"
            lines.append(
                f"{launcher} n={size}: controller overhead {ctrl:.1f} ms/job "
                f"(max of to-submit and ctrl CPU; target <= {TARGET_CTRL_MS:g}) {verdict}"
            )
            joblib = by_key.get(("joblib", size))
            if joblib is not None and size >= 1000:
                ratio = r.wall_s / joblib.wall_s
                verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
                lines.append(
                    f"{launcher} n={size}: wall {r.wall_s:.1f} s = {ratio:.3f} x joblib "
                    f"({joblib.wall_s:.1f} s; target <= {TARGET_RATIO:g}) {verdict}"
                )
    if lines:
        print("targets:")
        for line in lines:
            print("  " + line)


# --- in-process composition benchmark -----------------------------------------------------------
def compose_probe(size: int, hydra_jobs: int) -> dict[str, Any]:
    """Per-job cost of Hydra's load_sweep_config vs SweepComposer, in this process (a subprocess)."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import HydraContext, RunMode
    from omegaconf import OmegaConf

    from launcher_core.controller import build_job_specs
    from launcher_core.runtime.compose import SweepComposer

    result: dict[str, Any] = {"size": size}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="app"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        master = hydra.compose_config(
            "config", ["hydra/launcher=local_pool", "hydra.launcher.n_jobs=2", f"x=range({size})"], RunMode.MULTIRUN
        )
        ctx = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))
        jobs = [[f"x={i}"] for i in range(size)]

        n_hydra = min(hydra_jobs, size)
        tic = time.perf_counter()
        reference = [ctx.config_loader.load_sweep_config(master, list(j)) for j in jobs[:n_hydra]]
        result["hydra_ms"] = 1000 * (time.perf_counter() - tic) / n_hydra
        result["hydra_jobs"] = n_hydra

        composer = SweepComposer(ctx, master)
        tic = time.perf_counter()
        first = composer.compose(list(jobs[0]))
        result["first_ms"] = 1000 * (time.perf_counter() - tic)
        tic = time.perf_counter()
        composed = [first] + [composer.compose(list(j)) for j in jobs[1:]]
        result["composer_ms"] = 1000 * (time.perf_counter() - tic) / max(size - 1, 1)
        result["composer_amortised_ms"] = (result["first_ms"] + result["composer_ms"] * (size - 1)) / size
        result["full_compositions"] = composer.full_compositions

        tic = time.perf_counter()
        build_job_specs(
            composer=SweepComposer(ctx, master), sweep_id="bench", job_overrides=jobs, initial_job_idx=0
        )
        result["specs_ms"] = 1000 * (time.perf_counter() - tic) / size

        result["equal"] = all(
            OmegaConf.to_container(a, resolve=False) == OmegaConf.to_container(b, resolve=False)
            for a, b in zip(reference, composed)
        )
    return result


def run_compose_probe(size: int, hydra_jobs: int, timeout_s: float) -> dict[str, Any] | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compose-probe", str(size), "--hydra-jobs", str(hydra_jobs)]
    with tempfile.TemporaryDirectory(prefix="bench-compose-") as tmp:
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            say(f"compose probe n={size} timed out after {timeout_s:.0f} s")
            return None
    if proc.returncode != 0:
        say(f"compose probe n={size} failed:\n{proc.stderr[-2000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_compose_table(results: list[dict[str, Any]]) -> None:
    print("in-process composition, per job (ms):")
    header = (
        f"{'jobs':>5}  {'hydra load_sweep_config':>23}  {'SweepComposer.compose':>21}  {'(amortised)':>11}  "
        f"{'build_job_specs':>15}  {'speed-up':>8}  {'full comps':>10}  {'equal':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['size']:>5}  {r['hydra_ms']:>23.1f}  {r['composer_ms']:>21.2f}  {r['composer_amortised_ms']:>11.2f}  "
            f"{r['specs_ms']:>15.2f}  {r['hydra_ms'] / r['specs_ms']:>7.0f}x  {r['full_compositions']:>10}  "
            f"{'yes' if r['equal'] else 'NO':>5}"
        )
    print(
        f"(hydra timed on the first {results[0]['hydra_jobs']} jobs; build_job_specs = what the controller does per "
        "job: compose + job identity + output dir; equal = SweepComposer config == Hydra's for those jobs)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="comma-separated sweep sizes (default 100,1000)")
    parser.add_argument("--quick", action="store_true", help="size 100 only")
    parser.add_argument("--launchers", default=DEFAULT_LAUNCHERS, help=f"subset of {','.join(LAUNCHERS)}")
    parser.add_argument("--n-jobs", type=int, default=2, help="parallel jobs for joblib and local_pool (default 2)")
    parser.add_argument("--basic-max-size", type=int, default=None, help="skip the basic launcher above this size")
    parser.add_argument("--timeout", type=float, default=None, help="per-sweep timeout in s (default 120 + 0.6 s/job)")
    parser.add_argument("--no-compose", action="store_true", help="skip the in-process composition benchmark")
    parser.add_argument("--hydra-jobs", type=int, default=30, help="jobs composed by Hydra in the compose benchmark")
    parser.add_argument(
        "--wait-idle", type=float, default=60.0, help="before each sweep, wait up to this many s for a quiet machine"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs of the sweeps")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results to this file")
    parser.add_argument("--compose-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [100] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    args.launchers = [name.strip() for name in args.launchers.split(",") if name.strip()]
    unknown = [name for name in args.launchers if name not in LAUNCHERS]
    if unknown:
        parser.error(f"unknown launchers {unknown}; choose from {', '.join(LAUNCHERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compose_probe is not None:
        print(json.dumps(compose_probe(args.compose_probe, args.hydra_jobs)))
        return 0

    runs: list[Run] = []
    for size in args.sizes:
        for launcher in args.launchers:
            if launcher == "basic" and args.basic_max_size is not None and size > args.basic_max_size:
                say(f"skipping basic n={size} (--basic-max-size {args.basic_max_size})")
                continue
            timeout = args.timeout or default_timeout(size)
            if args.wait_idle > 0:
                busy = wait_until_idle(args.wait_idle)
                if busy is not None and busy >= 15:
                    say(f"machine still busy ({busy:.0f} % CPU used by other processes): times will be inflated")
            say(f"{launcher} n={size} (timeout {timeout:.0f} s) ...")
            run = run_sweep(launcher, size, args.n_jobs, timeout, args.keep)
            status = "ok" if run.ok else f"FAILED: {run.error}"
            say(f"{launcher} n={size}: {run.wall_s:.1f} s, {status}")
            runs.append(run)

    compose_results = []
    if not args.no_compose:
        for size in args.sizes:
            say(f"composition benchmark n={size} ...")
            probe = run_compose_probe(size, args.hydra_jobs, args.timeout or default_timeout(size))
            if probe is not None:
                compose_results.append(probe)

    print()
    python = sys.version.split()[0]
    print(f"no-op sweep, n_jobs={args.n_jobs} for joblib/local_pool, {os.cpu_count()} CPUs, Python {python}")
    print_table(runs)
    print()
    print_targets(runs)
    if compose_results:
        print()
        print_compose_table(compose_results)
    if args.json:
        raw = {
            "runs": [{**r.__dict__, "startup_s": r.startup_s, "to_submitted_s": r.to_submitted_s} for r in runs],
            "compose": compose_results,
        }
        args.json.write_text(json.dumps(raw, indent=1))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
