"""The spill launcher's makespan: one sweep over three real targets vs each target alone.

    flock /tmp/slurm-tests.lock .venv/bin/python bench/bench_spill.py [--jobs 48] [--job-s 3] [--json FILE]

Brings up, on loopback only, the test sshd (tests/sshd.py: root and openssh-server) and a
single-node Slurm cluster (tests/slurm_cluster.py: root and the Debian Slurm packages), writes
three cluster presets into a throwaway app's ``conf/cluster/`` and runs the same sweep of N jobs
that each sleep S seconds:

* **spill**: ``hydra/launcher=spill`` with targets local_pool (2 slots), the sshd host (2 slots)
  and the Slurm cluster (4 slots), filled in that order;
* **loc / ssh / slurm alone**: ``+cluster=NAME``, the same preset as the spill target (its own
  launcher, its own limit: ``n_jobs``, ``max_parallel``, ``array_parallelism``).

Printed: each sweep's makespan (the launching command's wall time, Hydra start-up and pulling the
results included), the jobs' own span (first job start to last job end, from the jobs' records),
jobs per target, and for the spill sweep the ideal ``N*S/slots`` and the goal
``1.2 * ideal + S``, with the ratio makespan / ideal. Not a test: nothing is asserted; the exit
status is 1 when a sweep failed.
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
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import sshd  # noqa: E402
from tests.slurm_cluster import SlurmCluster, ensure_packages  # noqa: E402

APP = """\
import getpass
import os
import time

import hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    where = "slurm" if os.environ.get("SLURM_JOB_ID") else getpass.getuser()
    started = time.time()
    time.sleep(cfg.t)
    with open(cfg.record, "a") as f:
        f.write(f"{cfg.x} {where} {started} {time.time()}\\n")
    return cfg.x


if __name__ == "__main__":
    main()
"""
CONFIG = "x: 0\nt: 0\nrecord: ''\nhydra:\n  job:\n    chdir: false\n"
SLOTS = {"loc": 2, "ssh": 2, "slurm": 4}  # each target's max_jobs (and its own launcher's limit)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def preset(proj: Path, name: str, launcher: str, settings: dict[str, Any]) -> None:
    import yaml

    body = {"defaults": [{"override /hydra/launcher": launcher}], "hydra": {"launcher": settings}}
    (proj / "conf" / "cluster" / f"{name}.yaml").write_text("# @package _global_\n" + yaml.safe_dump(body))


def project(root: Path, server: sshd.SSHServer, python: str, remote_dir: str) -> Path:
    (root / "conf" / "cluster").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    preset(root, "loc", "local_pool", {"n_jobs": SLOTS["loc"]})
    preset(
        root,
        "ssh",
        "remote_ssh",
        {
            "hosts": [server.alias()],
            "ssh_config": str(server.ssh_config),
            "python": python,
            "remote_dir": remote_dir,
            "max_parallel": SLOTS["ssh"],
            "poll_interval_s": 0.2,
            "connect_timeout_s": 5,
            "command_timeout_s": 30,
        },
    )
    preset(root, "slurm", "slurm", {"poll_interval_s": 0.3, "timeout_min": 10, "array_parallelism": SLOTS["slurm"]})
    return root


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (every core, user + system) since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sweep(name: str, launcher: list[str], proj: Path, jobs: int, job_s: float, env: dict[str, str]) -> dict:
    record = sshd.shared_file(f"hrl-bench-spill-{name}")
    sweep_dir = proj / "multirun" / name
    argv = [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        *launcher,
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({jobs})",
        f"t={job_s}",
        f"record={record}",
        *(["hydra.verbose=[launcher_core]"] if os.environ.get("HRL_BENCH_VERBOSE") else []),
    ]
    started = time.monotonic()
    began = time.time()
    cpu_before, launcher_before = machine_cpu_s(), children_cpu_s()
    proc = subprocess.run(argv, cwd=proj, env=env, capture_output=True, text=True, timeout=900, check=False)
    wall = time.monotonic() - started
    machine_cpu, launcher_cpu = machine_cpu_s() - cpu_before, children_cpu_s() - launcher_before
    ended = time.time()
    lines = [ln.split() for ln in record.read_text().splitlines()]
    where = Counter(w[1] for w in lines)
    span = max(float(w[3]) for w in lines) - min(float(w[2]) for w in lines) if lines else float("nan")
    ok = proc.returncode == 0 and sorted(int(w[0]) for w in lines) == list(range(jobs))
    if not ok:
        say(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if os.environ.get("HRL_BENCH_LOG_DIR"):  # the launch's own log (run with HRL_BENCH_VERBOSE=1 for its debug lines)
        keep = Path(os.environ["HRL_BENCH_LOG_DIR"])
        (keep / f"{name}.log").write_text(proc.stdout + proc.stderr)
        # and what a timeline needs: the jobs' own start/end records and the state store's times
        shutil.copy(record, keep / f"{name}.record")
        shutil.copy(sweep_dir / ".launcher" / "state.sqlite", keep / f"{name}.sqlite")
    per_target = {{"slurm": "slurm", "root": "loc"}.get(k, "ssh"): v for k, v in where.items()}
    return {
        "name": name,
        "ok": ok,
        "wall_s": round(wall, 2),
        "span_s": round(span, 2),
        "where": per_target,
        "first_start_s": round(min(float(w[2]) for w in lines) - began, 2) if lines else None,
        "after_last_s": round(ended - max(float(w[3]) for w in lines), 2) if lines else None,
        "paces": _paces(lines, job_s),
        # busy CPU over the sweep: the whole machine, and the launching process with the children
        # it waited for (local_pool's jobs, ssh, sbatch, sacct; not what sshd or slurmd started)
        "cpu_s": {"machine": round(machine_cpu, 1), "launcher": round(launcher_cpu, 1)},
        "cpu_capacity_s": round(wall * (os.cpu_count() or 1), 1),
    }


def _paces(lines: list[list[str]], job_s: float) -> dict[str, float]:
    """Per target: the mean time a slot spent per job beyond the job's own sleep (start-up,
    noticing the end, placing the next one), from the slot's busy span."""
    out = {}
    for who in sorted({w[1] for w in lines}):
        mine = [w for w in lines if w[1] == who]
        name = {"slurm": "slurm", "root": "loc"}.get(who, "ssh")
        span = max(float(w[3]) for w in mine) - min(float(w[2]) for w in mine)
        rounds = len(mine) / SLOTS[name]
        out[name] = round(span / max(rounds, 1) - job_s, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--job-s", type=float, default=3.0, help="how long each job sleeps")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--only", choices=["spill"], help="run the spill sweep alone (no side-by-side anchors)")
    args = parser.parse_args()
    reason = sshd.skip_reason() or ensure_packages()
    if reason:
        say(f"cannot run: {reason}")
        return 2
    sshd.ensure_users()
    python = sshd.ensure_remote_python()
    workdir = Path(tempfile.mkdtemp(prefix="hrl-bench-spill-"))
    os.chmod(workdir, 0o755)
    run_id = f"bench-spill-{os.getpid()}"
    remote_dir = f"{sshd.TESTS_DIR}/{run_id}"
    server = sshd.new_server("bench-spill")
    runs = []
    try:
        with SlurmCluster(workdir / "cluster", cpus=8) as cluster:
            env = {**os.environ, **cluster.env, "HYDRA_REMOTE_LAUNCHER_HOME": str(workdir / "launcher-home")}
            env.pop("HYDRA_FULL_ERROR", None)
            proj = project(workdir / "proj", server, python, remote_dir)
            targets = ",".join(f"{{cluster: {n}, max_jobs: {k}}}" for n, k in SLOTS.items())
            sweeps = {
                "spill": ["hydra/launcher=spill", f"hydra.launcher.targets=[{targets}]"],
                **({} if args.only else {f"{n} alone": [f"+cluster={n}"] for n in SLOTS}),
            }
            say(f"sshd and Slurm up; {args.jobs} jobs of {args.job_s:g} s per sweep")
            for name, launcher in sweeps.items():
                say(f"{name} ...")
                run = run_sweep(name.replace(" ", "_"), launcher, proj, args.jobs, args.job_s, env)
                run["name"] = name
                say(
                    f"{name}: {run['wall_s']:.1f} s, jobs per target {run['where']}, first job after "
                    f"{run['first_start_s']} s, command ended {run['after_last_s']} s after the last job, "
                    f"per-job slot overhead {run['paces']}; CPU busy {run['cpu_s']['machine']} of "
                    f"{run['cpu_capacity_s']} core-s (launcher and its children {run['cpu_s']['launcher']})"
                )
                runs.append(run)
                cluster.run("scancel", "--me", check=False)
    finally:
        server.stop()
        sshd.kill_run_processes(run_id)
        shutil.rmtree(Path("/home") / sshd.USERS[0] / remote_dir, ignore_errors=True)
        shutil.rmtree(server.root, ignore_errors=True)
        sshd.remove_shared_dirs()
        shutil.rmtree(workdir, ignore_errors=True)

    slots = sum(SLOTS.values())
    ideal = args.jobs * args.job_s / slots
    goal = 1.2 * ideal + args.job_s
    print(
        f"\n{args.jobs} jobs of {args.job_s:g} s; targets loc (local_pool, {SLOTS['loc']}), "
        f"ssh (remote_ssh, {SLOTS['ssh']}), slurm ({SLOTS['slurm']}); {os.cpu_count()} cores, loopback only\n"
    )
    header = f"{'sweep':14} {'makespan':>9} {'job span':>9} {'/ ideal':>8} {'CPU busy':>9} {'launcher':>9}"
    print(f"{header}  jobs per target")
    for r in runs:
        placed = ", ".join(f"{k} {v}" for k, v in sorted(r["where"].items()))
        flag = "" if r["ok"] else "  FAILED"
        busy = r["cpu_s"]["machine"] / r["cpu_capacity_s"]
        print(
            f"{r['name']:14} {r['wall_s']:>8.1f}s {r['span_s']:>8.1f}s {r['wall_s'] / ideal:>7.2f}x "
            f"{busy:>8.0%} {r['cpu_s']['launcher']:>8.1f}s  {placed}{flag}"
        )
    spill = next(r for r in runs if r["name"] == "spill")
    met = spill["ok"] and spill["wall_s"] <= goal
    print(
        f"\nideal {args.jobs}*{args.job_s:g}/{slots} = {ideal:.1f} s; goal 1.2*ideal + {args.job_s:g} = {goal:.1f} s; "
        f"spill makespan {spill['wall_s']:.1f} s = {spill['wall_s'] / ideal:.2f}x ideal "
        f"({spill['wall_s'] / goal:.2f}x the goal): goal {'met' if met else 'NOT met'}"
    )
    alone = [r for r in runs if r["name"].endswith(" alone") and r["ok"] and r["span_s"] > 0]
    if len(alone) == len(SLOTS):
        # what the targets can do together at the pace each showed alone (its own per-job start-up
        # included): the bound no placement can beat on this machine
        paced = args.jobs / sum(args.jobs / r["span_s"] for r in alone)
        print(
            f"at each target's own pace alone: {paced:.1f} s of job span for {args.jobs} jobs; spill job span "
            f"{spill['span_s']:.1f} s = {spill['span_s'] / paced:.2f}x that (1.2x + {args.job_s:g} s = "
            f"{1.2 * paced + args.job_s:.1f} s: {'within' if spill['span_s'] <= 1.2 * paced + args.job_s else 'over'})"
        )
    print("makespan: the launching command's wall time (Hydra start-up, pre-flight and pulling results included)")
    print(
        "CPU busy: the machine's busy share of all cores over the sweep; launcher: CPU seconds of the "
        "launching process and the children it waited for (ssh, sbatch, sacct, local_pool's jobs)"
    )
    if args.json:
        numbers = {"jobs": args.jobs, "job_s": args.job_s, "ideal_s": ideal, "goal_s": goal, "runs": runs}
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
