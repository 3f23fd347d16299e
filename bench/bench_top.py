"""What a ``launcher-core top`` refresh costs at 10 sweeps / 1,000 running jobs on 3 SSH hosts.

The hosts are loopback sshds of the test suite (``tests/sshd.py``: two users on one server, one
user on a second server: 3 host labels, 3 connections). Each of the 10 remote_ssh sweeps has 100
jobs spread over the 3 hosts, written with the launcher's own writers (state store, sweep index)
and, on each host, the files a running job has there (``.launcher/pid`` naming a live process of
that user, a ``stdout.log`` of 20 lines); the process has the stand-in ``nvidia-smi``
(``tests/gpu_standin.py``, 4 GPUs) on its PATH, as a job whose set-up lines bring it would. So a
refresh does all its real work: poll 1,000 jobs, tail 1,000 logs, read load and GPUs per host.

Side by side: ``top`` (one backend per watch group, masters kept across refreshes) and what
running ``launcher-core status`` for each sweep costs (a backend per sweep, a login per host each
time), against the goal of issue 26: at most one remote command per host per refresh, no login
after the first, and a refresh well inside the default ``--interval`` (5 s).

    .venv/bin/python bench/bench_top.py                # ~1 min (needs root: sshd switches users)
    .venv/bin/python bench/bench_top.py --sweeps 10 --jobs 100 --refreshes 5
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
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GOAL_INTERVAL_S = 5.0  # the default --interval: a refresh must fit well inside it
LOG_LINES = 20
BENCH_DIR = "hrl-bench-top"  # under each user's home


def start_hosts() -> tuple[list[object], list[tuple[str, str]]]:
    """Two sshds, three (label, user) hosts."""
    from tests.sshd import USERS, ensure_users, new_server

    ensure_users()
    first, second = new_server("bench-top"), new_server("bench-top2")
    return [first, second], [
        (first.alias(USERS[0]), USERS[0]),
        (first.alias(USERS[1]), USERS[1]),
        (second.alias(USERS[0]), USERS[0]),
    ]


def start_holder(user: str, bin_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A long-lived process of ``user`` with the stand-in nvidia-smi on its PATH: every job's pid
    file on that user's hosts names it ("PID START", as a job's leader writes it)."""
    from launcher_core.runtime.procs import process_start_time

    env = f"PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin"
    ids = ["--reuid", user, "--regid", user, "--init-groups"]
    proc = subprocess.Popen(["setpriv", *ids, "env", "-i", env, "sleep", "3600"])  # exec'd: proc.pid is it
    for _ in range(100):
        start = process_start_time(proc.pid)
        if start is not None and Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sleep"):
            return proc, f"{proc.pid} {start}\n"
        time.sleep(0.05)
    raise SystemExit("the holder process did not start")


def build(
    root: Path, hosts: list[tuple[str, str]], pid_lines: dict[str, str], n_sweeps: int, n_jobs: int, ssh_config: Path
) -> None:
    """``n_sweeps`` remote_ssh sweeps of ``n_jobs`` running jobs each, spread over ``hosts``."""
    from launcher_core.backends.remote_ssh.settings import RemoteSSHSettings
    from launcher_core.jobs import JobSpec, JobState, job_id_for
    from launcher_core.state import StateStore, SweepIndex

    settings = RemoteSSHSettings.from_mapping(
        {"hosts": [label for label, _ in hosts], "ssh_config": str(ssh_config), "remote_dir": BENCH_DIR}
    )
    log = "".join(f"epoch {e}/{LOG_LINES} loss={1 / e:.4f}\n" for e in range(1, LOG_LINES + 1))
    index = SweepIndex()
    try:
        for s in range(n_sweeps):
            sweep_id = f"bench-top-{s}"
            sweep_dir = root / sweep_id
            specs, handles = [], {}
            for i in range(n_jobs):
                overrides = [f"lr={i}"]
                spec = JobSpec(job_id_for(sweep_id, i, overrides), i, overrides, sweep_dir / str(i))
                label, user = hosts[i % len(hosts)]
                remote_sweep = f"/home/{user}/{BENCH_DIR}/runs/{sweep_id}"
                launcher_dir = f"{remote_sweep}/{i}/.launcher"
                Path(launcher_dir).mkdir(parents=True, exist_ok=True)
                Path(launcher_dir, "pid").write_text(pid_lines[user])
                Path(launcher_dir, "stdout.log").write_text(log)
                specs.append(spec)
                handles[spec.job_id] = {
                    "host": label,
                    "remote_dir": f"/home/{user}/{BENCH_DIR}",
                    "remote_sweep_dir": remote_sweep,
                    "remote_job_dir": f"{remote_sweep}/{i}",
                    "rel": str(i),
                    "launcher_dir": launcher_dir,
                    "pid_file": f"{launcher_dir}/pid",
                    "exit_file": f"{launcher_dir}/exit_status",
                    "runner_pid_file": f"{remote_sweep}/runner.pid",
                    "batch": "bench",
                    "remote_cwd": f"/home/{user}/{BENCH_DIR}/snapshots/{sweep_id}/bench",
                    "local_cwd": str(root),
                    "local_sweep_dir": str(sweep_dir),
                }
            with StateStore.for_sweep_dir(sweep_dir) as store:
                store.set_meta(
                    {
                        "sweep_id": sweep_id,
                        "sweep_dir": str(sweep_dir),
                        "backend": "remote_ssh",
                        "backend_config": settings.stored_config(),
                        "launched_at": time.time(),
                    }
                )
                store.add_jobs(specs)
                store.mark_submitted(handles, launch_id="bench")
                store.update_states(
                    {j: (JobState.RUNNING, None) for j in handles}, {j: h["host"] for j, h in handles.items()}
                )
            index.register(sweep_id, sweep_dir, "remote_ssh")
    finally:
        index.close()


def logins(servers: list[object]) -> int:
    return sum(s.log.read_text(errors="replace").count("Accepted publickey") for s in servers)  # type: ignore[attr-defined]


def bench_top(servers: list[object], refreshes: int) -> dict[str, object]:
    from launcher_core.collect.overview import Overview

    times, commands, logins_seen = [], [], []
    with Overview() as overview:
        for _ in range(refreshes + 1):
            before = logins(servers)
            tic = time.perf_counter()
            snapshot = overview.refresh()
            times.append(time.perf_counter() - tic)
            commands.append(sum(n for k, n in snapshot.commands.items() if k.startswith("ssh ") and " login " not in k))
            logins_seen.append(logins(servers) - before)
    running = sum(len(s.running) for s in snapshot.sweeps)
    gpus = sum(len(h.gpus) for h in snapshot.hosts)
    return {
        "first": times[0],
        "times": times[1:],
        "commands": commands[1:],
        "logins": logins_seen,
        "running": running,
        "gpus": gpus,
    }


def bench_status_per_sweep(servers: list[object], refreshes: int) -> dict[str, object]:
    """What ``status`` per sweep costs: a backend per sweep, rebuilt (and logging in) each time."""
    from launcher_core.backends import backend_for_meta
    from launcher_core.jobs import JobState
    from launcher_core.state import StateStore
    from launcher_core.sweeps import resolve_sweeps

    times, commands, logins_seen = [], [], []
    for _ in range(refreshes):
        before = logins(servers)
        tic = time.perf_counter()
        used: Counter[str] = Counter()
        for sweep_dir in resolve_sweeps([]):
            with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
                meta = store.meta()
                handles = {r.job_id: r.handle for r in store.jobs(states=[JobState.RUNNING]) if r.handle}
            backend = backend_for_meta(meta)
            try:
                backend.poll(handles)
                used["commands"] += backend.stats.commands  # type: ignore[attr-defined]
            finally:
                backend.close()
        times.append(time.perf_counter() - tic)
        commands.append(used["commands"])
        logins_seen.append(logins(servers) - before)
    return {"times": times, "commands": commands, "logins": logins_seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=100, help="running jobs per sweep")
    parser.add_argument("--refreshes", type=int, default=5)
    opts = parser.parse_args()
    from tests.gpu_standin import install_nvidia_smi
    from tests.sshd import USERS

    if os.geteuid() != 0:
        raise SystemExit("needs root: the loopback sshd switches to the test users")
    root = Path(tempfile.mkdtemp(prefix="bench-top-"))
    os.environ["HYDRA_REMOTE_LAUNCHER_HOME"] = str(root / "home")
    bin_dir = Path(tempfile.mkdtemp(prefix="bench-top-bin-"))
    os.chmod(bin_dir, 0o755)
    install_nvidia_smi(bin_dir, 4, util=[90, 80, 70, 60], mem=[1000, 2000, 3000, 4000])
    servers, hosts = start_hosts()
    holders = {user: start_holder(user, bin_dir) for user in USERS}
    try:
        print(f"building {opts.sweeps} sweeps x {opts.jobs} running jobs on {len(hosts)} hosts ...", file=sys.stderr)
        ssh_config = root / "ssh_config"  # both servers' host aliases in one file, as a user's ~/.ssh/config
        ssh_config.write_text("\n".join(s.ssh_config.read_text() for s in servers))  # type: ignore[attr-defined]
        pid_lines = {u: line for u, (_p, line) in holders.items()}
        build(root, hosts, pid_lines, opts.sweeps, opts.jobs, ssh_config)
        for user in USERS:
            subprocess.run(["chown", "-R", f"{user}:{user}", f"/home/{user}/{BENCH_DIR}"], check=True)
        top = bench_top(servers, opts.refreshes)
        status = bench_status_per_sweep(servers, opts.refreshes)
        report(opts, len(hosts), top, status)
    finally:
        for proc, _line in holders.values():
            proc.kill()
            proc.wait()
        for server in servers:
            server.stop()  # type: ignore[attr-defined]
            shutil.rmtree(server.root, ignore_errors=True)  # type: ignore[attr-defined]
        for user in USERS:
            shutil.rmtree(f"/home/{user}/{BENCH_DIR}", ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(bin_dir, ignore_errors=True)


def report(opts: argparse.Namespace, n_hosts: int, top: dict, status: dict) -> None:
    jobs = opts.sweeps * opts.jobs
    print(f"\n{opts.sweeps} sweeps, {jobs} running jobs on {n_hosts} loopback SSH hosts, {opts.refreshes} refreshes")
    print(f"(top saw {top['running']} running jobs and {top['gpus']} GPU rows)\n")
    rows = [
        (
            "time per refresh, median",
            f"{statistics.median(top['times']):.2f} s",
            f"{statistics.median(status['times']):.2f} s",
            f"<= {GOAL_INTERVAL_S:g} s (--interval)",
        ),
        ("first refresh (logins)", f"{top['first']:.2f} s", "-", ""),
        (
            "remote commands per refresh",
            _span(top["commands"]),
            _span(status["commands"]),
            f"<= {n_hosts} (one per host)",
        ),
        ("ssh logins, first refresh", str(top["logins"][0]), _span(status["logins"]), ""),
        ("ssh logins per later refresh", _span(top["logins"][1:]), _span(status["logins"]), "0"),
    ]
    print(f"{'':<30} {'top':>14} {'status per sweep':>18}   goal")
    for label, ours, theirs, goal in rows:
        print(f"{label:<30} {ours:>14} {theirs:>18}   {goal}")
    ok = (
        statistics.median(top["times"]) <= GOAL_INTERVAL_S
        and max(top["commands"]) <= n_hosts
        and not any(top["logins"][1:])
    )
    print(f"\ngoal met: {'yes' if ok else 'NO'}")


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


if __name__ == "__main__":
    main()
