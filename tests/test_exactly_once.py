"""Exactly once across a crash: the launching process is killed with SIGKILL at several points of
a sweep, then the same command runs again. Every job's side effect (a line in a file outside the
job dirs) happens exactly once, every result comes home, the relaunch says what it collected,
re-attached and started, and no process of the sweep is left behind.

A job that finished while no launcher was alive belongs to the interrupted launch: it is
collected, not run again (``skip_completed`` stays false here on purpose).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher_core.jobs import JobState
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHTestEnv, make_project, shared_file

N_JOBS = 8
SLEEP_S = 0.4
KILL_POINTS = ("first-submitted", "jobs-running", "some-pulled", "finished-not-fetched")


def _states(sweep_dir: Path) -> Counter[JobState]:
    if not (sweep_dir / ".launcher" / "state.sqlite").exists():
        return Counter()
    try:
        with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
            return Counter(r.state for r in store.jobs())
    except Exception:  # noqa: BLE001 - the store may be mid-creation: not yet
        return Counter()


def _lines(record: Path) -> int:
    return len(record.read_text().splitlines()) if record.exists() else 0


def _kill_condition(point: str, sweep_dir: Path, record: Path) -> Callable[[], bool]:
    def reached() -> bool:
        states = _states(sweep_dir)
        submitted = sum(n for s, n in states.items() if s is not JobState.PENDING)
        if point == "first-submitted":
            return submitted > 0
        if point == "jobs-running":
            return _lines(record) >= 1 and states[JobState.PULLED] == 0
        if point == "some-pulled":
            return states[JobState.PULLED] >= 2
        # a job the backend reported finished whose files are not home yet (best effort: the
        # window is short; "some-pulled" covers the rest)
        return states[JobState.COMPLETED] >= 1 or states[JobState.PULLED] >= 1

    return reached


def launch_and_kill(argv: list[str], cwd: Path, reached: Callable[[], bool], timeout_s: float = 120) -> None:
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if reached():
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return
            if proc.poll() is not None:
                pytest.fail(f"the launch ended before the kill point: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.01)
        pytest.fail("the kill point was not reached in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def _sweep_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a path unique to the test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _check_exactly_once(proc: subprocess.CompletedProcess[str], sweep_dir: Path, record: Path) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = Counter(int(line.split()[0]) for line in record.read_text().splitlines())
    assert ran == dict.fromkeys(range(N_JOBS), 1), f"executions per job: {dict(ran)}"
    for n in range(N_JOBS):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value["x"] == n
        # local paths, whatever the backend (the app keeps the cwd: hydra.job.chdir=false)
        assert Path(ret.hydra_cfg.hydra.runtime.output_dir) == sweep_dir / str(n)
        assert Path(ret.working_dir) == sweep_dir.parent.parent
    assert set(_states(sweep_dir)) == {JobState.PULLED}
    # one line per batch of the multirun
    said = re.findall(r"(\d+) jobs collected, (\d+) re-attached, (\d+) started", proc.stdout + proc.stderr)
    assert said, proc.stderr[-3000:]
    assert sum(int(n) for line in said for n in line) == N_JOBS


def _relaunch(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_local_pool_resumes_after_the_launcher_is_killed(point: str, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    record = tmp_path / "executions.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=local_pool",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
    ]
    launch_and_kill(argv, proj, _kill_condition(point, sweep_dir, record))
    time.sleep(2 * SLEEP_S)  # orphaned jobs finish while no launcher is alive
    proc = _relaunch(argv, proj)
    _check_exactly_once(proc, sweep_dir, record)
    assert _sweep_processes(str(sweep_dir)) == []


@pytest.mark.slow
def test_a_multirun_killed_in_its_second_batch_resumes_the_first_one_too(tmp_path: Path) -> None:
    """Batches of one multirun (``max_batch_size``) are one launch: the relaunch collects the first
    batch, which had ended, instead of running it again."""
    proj = make_project(tmp_path / "proj")
    record = tmp_path / "executions.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=local_pool",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.max_batch_size=4",
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
    ]
    launch_and_kill(argv, proj, lambda: _lines(record) >= 5)  # batch 1 ended, batch 2 runs
    time.sleep(2 * SLEEP_S)
    proc = _relaunch(argv, proj)
    _check_exactly_once(proc, sweep_dir, record)


@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.parametrize("point", KILL_POINTS)
def test_remote_ssh_resumes_after_the_launcher_is_killed(point: str, ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-once")
    sweep_dir = proj / "multirun" / "s"
    name = f"once-{point}"
    argv = [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=remote_ssh",
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
        *ssh_env.overrides(name, max_parallel=2),
    ]
    launch_and_kill(argv, proj, _kill_condition(point, sweep_dir, record))
    time.sleep(2 * SLEEP_S)  # detached jobs finish while no launcher is alive
    proc = _relaunch(argv, proj)
    _check_exactly_once(proc, sweep_dir, record)
    remote = str(ssh_env.remote_path(name))
    deadline = time.monotonic() + 10  # the host's runner exits once its last job is reported
    while _sweep_processes(remote) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sweep_processes(remote) == []


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.parametrize(
    "point, jobs_per_task",
    [
        ("first-submitted", 1),
        ("jobs-running", 1),
        ("some-pulled", 1),
        ("jobs-running", 3),  # packed: jobs of a task finish one by one while the launcher is dead
        ("some-pulled", 3),
    ],
)
def test_slurm_resumes_after_the_launcher_is_killed(
    point: str, jobs_per_task: int, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    proj = make_project(tmp_path / "proj")
    record = tmp_path / "executions.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.array_parallelism=2",
        f"hydra.launcher.jobs_per_task={jobs_per_task}",
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
    ]
    launch_and_kill(argv, proj, _kill_condition(point, sweep_dir, record))
    time.sleep(2 * SLEEP_S)  # queued and running array tasks go on while no launcher is alive
    proc = _relaunch(argv, proj)
    _check_exactly_once(proc, sweep_dir, record)
    assert slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.strip() == ""  # nothing left queued


def _login_host_overrides(cluster: SlurmCluster, env: SSHTestEnv, name: str) -> list[str]:
    """slurm with ``login_host``: submitted through the loopback sshd (user hrltest1)."""
    return [
        "hydra/launcher=slurm",
        f"hydra.launcher.login_host={env.server.alias()}",
        f"hydra.launcher.ssh_config={env.server.ssh_config}",
        f"hydra.launcher.remote_dir={env.remote_dir(name)}",
        f"hydra.launcher.python={env.python}",
        f"hydra.launcher.login_setup=['export SLURM_CONF={cluster.conf}']",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.array_parallelism=2",
    ]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.parametrize("point", ("jobs-running", "some-pulled"))
def test_slurm_login_host_resumes_after_the_launcher_is_killed(
    point: str, slurm_cluster: SlurmCluster, ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-once-login")
    sweep_dir = proj / "multirun" / "s"
    argv = [
        str(proj / "app.py"),
        "-m",
        *_login_host_overrides(slurm_cluster, ssh_env, f"once-login-{point}"),
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
    ]
    launch_and_kill(argv, proj, _kill_condition(point, sweep_dir, record))
    time.sleep(2 * SLEEP_S)
    proc = _relaunch(argv, proj)
    _check_exactly_once(proc, sweep_dir, record)
    assert slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.strip() == ""
