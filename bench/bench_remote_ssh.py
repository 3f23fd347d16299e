"""remote_ssh vs a naive per-job-ssh launcher: 100 no-op jobs to one loopback host.

    sudo .venv/bin/python bench/bench_remote_ssh.py [--jobs 100] [--max-parallel 4] [--json FILE]

Starts a throwaway sshd on 127.0.0.1 (tests/sshd.py; needs root and openssh-server), then:

* **remote_ssh**: ``python app.py -m hydra/launcher=remote_ssh x=range(N)`` with the paired
  sweeper, ``max_parallel`` jobs at a time, wait=true (results pulled home).
* **naive**: what a launcher without connection reuse or batching does: per job one
  ``rsync`` of its job table, one blocking ``ssh host python -m launcher_core.runtime.remote_worker``
  and one ``rsync`` of its output dir back, each opening its own SSH connection, with
  ``max_parallel`` jobs in flight (threads). It reuses the code snapshot, sweep payload and job
  table the first run shipped, so it does strictly less work than a real naive launcher.

Printed side by side: wall time, SSH connections the server accepted (its log), rsync
invocations (server side, through a logging ``--rsync-path``) and SSH sessions (commands).
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import sshd  # noqa: E402


def server_counts(server: sshd.SSHServer) -> dict[str, int]:
    log = server.log.read_text(errors="replace")
    return {
        "connections": log.count("Connection from"),
        "sessions": log.count("Starting session"),
        "rsyncs": len(server.rsync_calls()),
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def run_remote_ssh(server: sshd.SSHServer, python: str, proj: Path, remote_dir: str, jobs: int, par: int) -> float:
    cmd = [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=remote_ssh",
        "hydra/sweeper=paired",
        f"x=range({jobs})",
        f"hydra.sweep.dir={proj}/multirun/bench",
        f"hydra.launcher.hosts=[{server.alias()}]",
        f"hydra.launcher.ssh_config={server.ssh_config}",
        f"hydra.launcher.python={python}",
        f"hydra.launcher.remote_dir={remote_dir}",
        f"hydra.launcher.max_parallel={par}",
        f"hydra.launcher.rsync_path={server.rsync_wrapper}",
        "hydra.launcher.poll_interval_s=0.5",
    ]
    tic = time.monotonic()
    proc = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - tic
    if proc.returncode != 0:
        raise SystemExit(f"remote_ssh run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return elapsed


def run_naive(server: sshd.SSHServer, python: str, proj: Path, remote_home: Path, jobs: int, par: int) -> float:
    """Per job: rsync the payload up, ssh to run it (blocking), rsync its dir back; no reuse."""
    sweep = proj / "multirun" / "bench"
    remote_sweep = next((remote_home / "runs").glob("**/multirun/bench"))
    (tag_dir,) = [d for d in (remote_sweep / ".launcher" / "remote_ssh").iterdir() if d.is_dir()]
    (snapshot,) = (remote_home / "snapshots").glob("*/*/")
    (sweep_payload,) = tag_dir.glob("sweep-*.pkl")
    (table,) = (tag_dir / "batches").glob("*.json")  # the first run's batch file: the job table
    local_table = next((sweep / ".launcher" / "remote_ssh").glob(f"*/batches/{table.name}"))
    index = {job["idx"]: job["index"] for job in json.loads(table.read_text())["jobs"]}
    ssh = ["ssh", "-F", str(server.ssh_config), "-o", "BatchMode=yes", "-o", "ControlMaster=no"]
    rsync = ["rsync", "-a", "-e", shlex.join(ssh), f"--rsync-path={server.rsync_wrapper}"]
    dest = server.alias()
    naive_out = proj / "naive"

    def one(num: int) -> None:
        remote_job = remote_sweep / str(num)
        subprocess.run([*rsync, str(local_table), f"{dest}:{table}"], check=True, capture_output=True, timeout=120)
        command = (
            f"cd {shlex.quote(str(snapshot))} && PYTHONPATH={shlex.quote(str(tag_dir / 'pylib'))} "
            f"{shlex.quote(python)} -m launcher_core.runtime.remote_worker {shlex.quote(str(sweep_payload))} "
            f"{shlex.quote(str(table))} {index[num]} > /dev/null 2>&1"
        )
        subprocess.run([*ssh, dest, command], check=True, capture_output=True, timeout=300)
        out = naive_out / str(num)
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([*rsync, f"{dest}:{remote_job}/", f"{out}/"], check=True, capture_output=True, timeout=120)

    tic = time.monotonic()
    with ThreadPoolExecutor(max_workers=par) as pool:
        list(pool.map(one, range(jobs)))
    return time.monotonic() - tic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    reason = sshd.skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    sshd.ensure_users()
    python = sshd.ensure_remote_python()
    server = sshd.new_server("bench")
    run_id = f"bench-{os.getpid()}"
    remote_dir = f"{sshd.TESTS_DIR}/{run_id}"
    remote_home = Path("/home") / sshd.USERS[0] / remote_dir
    work = sshd.shared_dir("hrl-bench")
    try:
        proj = sshd.make_project(work / "proj")
        before = server_counts(server)
        ours = run_remote_ssh(server, python, proj, remote_dir, args.jobs, args.max_parallel)
        mid = server_counts(server)
        naive = run_naive(server, python, proj, remote_home, args.jobs, args.max_parallel)
        after = server_counts(server)
    finally:
        server.stop()
        sshd.kill_run_processes(run_id)
        shutil.rmtree(remote_home, ignore_errors=True)
        shutil.rmtree(server.root, ignore_errors=True)
        sshd.remove_shared_dirs()
    rows = {
        "remote_ssh": {"wall_s": round(ours, 2), **delta(mid, before)},
        "naive_per_job_ssh": {"wall_s": round(naive, 2), **delta(after, mid)},
    }
    print(f"\n{args.jobs} no-op jobs, max_parallel={args.max_parallel}, one loopback host ({os.cpu_count()} cores)\n")
    print(f"{'':20} {'wall time':>10} {'SSH connections':>16} {'rsync runs':>11} {'SSH sessions':>13}")
    for name, r in rows.items():
        print(f"{name:20} {r['wall_s']:>9.1f}s {r['connections']:>16} {r['rsyncs']:>11} {r['sessions']:>13}")
    print(
        "\nremote_ssh wall time includes Hydra start-up, composing the configs, code sync and pulling"
        " results;\nthe naive run reuses its code snapshot, sweep payload and job table."
    )
    if args.json:
        args.json.write_text(json.dumps({"jobs": args.jobs, "max_parallel": args.max_parallel, **rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
