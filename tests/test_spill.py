"""The spill launcher on real services (loopback only): local_pool, the test sshd and the test
Slurm cluster as targets of one sweep.

Each job writes ``start NUM ATTEMPT WHERE T`` when it starts and ``done NUM ATTEMPT WHERE T0 T1``
when it ends into one record file outside the job dirs (a file every test user may append to), so
a test counts executions per job and per attempt, and computes how many jobs ran at once on each
target. ``WHERE`` is what the job itself sees: ``slurm`` when ``SLURM_JOB_ID`` is set, else the
user it runs as (the remote_ssh jobs run as the test user, local_pool jobs as root).

Each target is a cluster preset written into the test app's ``conf/cluster/`` from the same
settings the single-backend tests use (:func:`_preset`).
"""

from __future__ import annotations

import getpass
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher_core import results as res
from launcher_core.jobs import JobState
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.slurm_cluster import SlurmCluster
from tests.sshd import USERS, SSHServer, SSHTestEnv, shared_file
from tests.test_exactly_once import launch_and_kill

APP = '''\
"""Records where and when it ran (start and done lines), holds if told to, returns its number."""
import getpass
import os
import time

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    num = HydraConfig.get().job.num
    attempt = os.environ.get("HYDRA_LAUNCHER_ATTEMPT", "?")
    where = "slurm" if os.environ.get("SLURM_JOB_ID") else getpass.getuser()
    started = time.time()
    with open(cfg.record, "a") as f:
        f.write(f"start {num} {attempt} {where} {started}\\n")
    hold = cfg.hold_s if (where in cfg.hold_where and attempt == "1" and num in cfg.hold_on) else 0
    time.sleep(cfg.t + hold)
    with open(cfg.record, "a") as f:
        f.write(f"done {num} {attempt} {where} {started} {time.time()}\\n")
    return {"num": num, "where": where, "attempt": int(attempt)}


if __name__ == "__main__":
    main()
'''
CONFIG = """\
t: 0
record: ""
hold_s: 0
hold_where: []
hold_on: []
hydra:
  job:
    chdir: false
"""
ROOT = getpass.getuser()  # local_pool and slurm jobs run as the launching user
SSH_USER = USERS[0]


# --- helpers ----------------------------------------------------------------------------------
def _project(root: Path) -> Path:
    (root / "conf" / "cluster").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    return root


def _preset(proj: Path, name: str, launcher: str, settings: dict[str, Any]) -> None:
    """``conf/cluster/NAME.yaml``: ``hydra/launcher=LAUNCHER`` with ``settings`` under hydra.launcher."""
    body = {
        "defaults": [{"override /hydra/launcher": launcher}],
        "hydra": {"launcher": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}},
    }
    text = "# @package _global_\n" + yaml.safe_dump(body, sort_keys=False)
    (proj / "conf" / "cluster" / f"{name}.yaml").write_text(text)


def _local_preset(proj: Path, name: str = "loc_a", n_jobs: int = 2) -> None:
    _preset(proj, name, "local_pool", {"n_jobs": n_jobs})


def _ssh_preset(proj: Path, env: SSHTestEnv, name: str, server: SSHServer | None = None, **extra: Any) -> None:
    settings = env.settings(f"spill-{proj.parent.name}-{name}", max_parallel=2, **extra)
    if server is not None:  # a server of the test's own (one it stops)
        settings.update(hosts=[server.alias()], ssh_config=str(server.ssh_config))
    _preset(proj, name, "remote_ssh", settings)


def _slurm_preset(proj: Path, name: str = "slurm_t", parallel: int = 4) -> None:
    _preset(proj, name, "slurm", {"poll_interval_s": 0.3, "timeout_min": 5, "array_parallelism": parallel})


def _local_and_ssh(tmp_path: Path, env: SSHTestEnv, record_prefix: str) -> tuple[Path, Path, Path]:
    """A project with the targets loc_a (local_pool) and ssh_t (the test sshd): (project, record
    file, sweep dir)."""
    proj = _project(tmp_path / "proj")
    _local_preset(proj)
    _ssh_preset(proj, env, "ssh_t")
    return proj, shared_file(record_prefix), proj / "multirun" / "s"


def _targets(*entries: str) -> str:
    return "hydra.launcher.targets=[" + ",".join(entries) + "]"


def _argv(proj: Path, sweep_dir: Path, record: Path, targets: str, n_jobs: int, t: float, *extra: str) -> list[str]:
    return [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=spill",
        targets,
        "hydra.launcher.poll_interval_s=0.2",
        f"hydra.sweep.dir={sweep_dir}",
        f"+n=range({n_jobs})",
        f"t={t}",
        f"record={record}",
        *extra,
    ]


def _app_env() -> dict[str, str]:
    """The environment a user's launch gets (Hydra's short errors, not HYDRA_FULL_ERROR's)."""
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


def _run(argv: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_app_env()
    )


def _lines(record: Path) -> list[list[str]]:
    return [ln.split() for ln in record.read_text().splitlines()] if record.exists() else []


def _starts(record: Path) -> Counter[int]:
    return Counter(int(w[1]) for w in _lines(record) if w[0] == "start")


def _done(record: Path) -> dict[int, tuple[str, str, float, float]]:
    """num -> (attempt, where, started, ended) of its finished run (the last, if several)."""
    return {int(w[1]): (w[2], w[3], float(w[4]), float(w[5])) for w in _lines(record) if w[0] == "done"}


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _b in spans] + [(b, -1) for _a, b in spans], key=lambda e: (e[0], e[1]))
    most = current = 0
    for _t, step in events:
        current += step
        most = max(most, current)
    return most


def _rows(sweep_dir: Path) -> dict[int, Any]:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {r.idx: r for r in store.jobs()}


def _status(sweep_dir: Path) -> str:
    """What `launcher-core status` prints, on a console wide enough for one line per job."""
    from rich.console import Console

    from launcher_core.cli.sweep_commands import render_status

    out = io.StringIO()
    render_status(sweep_dir, Console(file=out, width=400))
    return out.getvalue()


def _wait_until(what: str, check: Any, timeout_s: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the launch ended before {what}: {proc.stderr.read() if proc.stderr else ''}"[-4000:])
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached after {timeout_s:g} s")
        time.sleep(0.05)


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]).strip()


# --- 1. three real targets ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_three_targets_share_a_sweep_each_within_its_max_jobs(
    ssh_env: SSHTestEnv, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """24 jobs of 2 s over local_pool (2), the test sshd (2) and the Slurm cluster (4): every job
    runs once and completes, every target gets jobs, no target runs more than its max_jobs at
    once, and ``results`` says for each job the target the job itself saw it ran on."""
    n_jobs, limits = 24, {"loc_a": 2, "ssh_t": 2, "slurm_t": 4}
    proj = _project(tmp_path / "proj")
    _local_preset(proj)
    _ssh_preset(proj, ssh_env, "ssh_t")
    _slurm_preset(proj)
    record = shared_file("hrl-spill")
    sweep_dir = proj / "multirun" / "s"
    targets = _targets(*(f"{{cluster: {name}, max_jobs: {n}}}" for name, n in limits.items()))
    proc = _run(_argv(proj, sweep_dir, record, targets, n_jobs, 2.0), proj)
    assert proc.returncode == 0, _output(proc)

    assert _starts(record) == dict.fromkeys(range(n_jobs), 1), _lines(record)
    done = _done(record)
    assert sorted(done) == list(range(n_jobs))
    target_of = {"slurm": "slurm_t", SSH_USER: "ssh_t", ROOT: "loc_a"}
    ran_on = {num: target_of[where] for num, (_a, where, _t0, _t1) in done.items()}
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for num, (_a, _w, t0, t1) in done.items():
        spans[ran_on[num]].append((t0, t1))
    assert set(spans) == set(limits), f"jobs per target: { {k: len(v) for k, v in spans.items()} }"
    for name, limit in limits.items():
        assert _most_at_once(spans[name]) <= limit, (name, sorted(spans[name]))

    table = res.load(sweep_dir)
    assert [row.num for row in table] == list(range(n_jobs))
    assert {row.num: row.where for row in table} == ran_on
    for row in table:
        assert row.state == "completed", row
        assert row.host is not None and row.host.startswith(f"{ran_on[row.num]}/"), (row, _status(sweep_dir))
        assert row.values["num"] == row.num
    for n in range(n_jobs):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value["num"] == n
    assert {r.state for r in _rows(sweep_dir).values()} == {JobState.PULLED}
    said = proc.stdout + proc.stderr
    for name in limits:  # the end-of-sweep table per target
        assert f"{name}  " in said or f"{name}: " in said, said[-3000:]


# --- 2. a target's host lost mid-sweep -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.timeout(300)
def test_sshd_stopped_for_good_mid_sweep_runs_nothing_twice(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path
) -> None:
    """The ssh target's sshd is stopped for good while its two jobs run (they go on on the host):
    the ssh target's ``reconnect_grace_s`` ends long before the local target is done, and the local
    target still runs every other job (one target's outage never stops the others); then the launch
    stops saying how to re-attach, with the ssh jobs unfinished (never taken as lost, never placed
    elsewhere, never run twice). With the sshd back, the same command re-attaches them."""
    n_jobs = 10
    proj = _project(tmp_path / "proj")
    _local_preset(proj)
    _ssh_preset(proj, ssh_env, "ssh_t", server=extra_sshd, reconnect_grace_s=2)
    record = shared_file("hrl-spill-down")
    sweep_dir = proj / "multirun" / "s"
    targets = _targets("{cluster: ssh_t, max_jobs: 2}", "{cluster: loc_a, max_jobs: 2}")
    argv = _argv(
        proj, sweep_dir, record, targets, n_jobs, 1.5, "hold_s=10", f"hold_where=[{SSH_USER}]", "hold_on=[0,1]"
    )
    launch = subprocess.Popen(
        [sys.executable, *argv], cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        on_ssh = lambda: {int(w[1]) for w in _lines(record) if w[0] == "start" and w[3] == SSH_USER}  # noqa: E731
        _wait_until("both ssh jobs started", lambda: on_ssh() == {0, 1}, 120, launch)
        extra_sshd.stop()  # the listener and every session: the jobs' monitors live on (detached)
        out, err = launch.communicate(timeout=150)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    said = out + err
    assert launch.returncode != 0, said[-4000:]
    assert f"lost contact with {extra_sshd.alias()}" in said and "run the same command again to re-attach" in said
    assert "target ssh_t (remote_ssh) does not answer; its 2 jobs are left as they are" in said, said[-4000:]
    starts = _starts(record)
    assert starts == dict.fromkeys(range(n_jobs), 1), _lines(record)
    done = _done(record)
    assert {n for n, (_a, w, _t0, _t1) in done.items() if w == ROOT} == set(range(2, n_jobs))
    rows = _rows(sweep_dir)
    for n in (0, 1):  # where they were placed; never ended, never a second attempt
        assert rows[n].state in (JobState.SUBMITTED, JobState.RUNNING), rows[n]
        assert rows[n].attempt == 1
    for n in range(2, n_jobs):
        assert rows[n].state is JobState.PULLED, rows[n]
    table = {row.num: row for row in res.load(sweep_dir)}
    assert {n: table[n].where for n in range(n_jobs)} == {n: "ssh_t" if n < 2 else "loc_a" for n in range(n_jobs)}
    status = _status(sweep_dir)
    for n in (0, 1):
        line = next(ln for ln in status.splitlines() if f"│ {n} │" in ln)
        assert "ssh_t/" in line and "completed" not in line and "lost" not in line, line

    # the host answers again: the same command collects the two jobs where they ran, once
    _wait_until("the held ssh jobs finished on the host", lambda: {0, 1} <= set(_done(record)), 60)
    extra_sshd.start()
    again = _run(argv, proj)
    assert again.returncode == 0, _output(again)
    assert _starts(record) == dict.fromkeys(range(n_jobs), 1), _lines(record)
    assert {r.state for r in _rows(sweep_dir).values()} == {JobState.PULLED}
    for n in (0, 1):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value == {"num": n, "where": SSH_USER, "attempt": 1}


def _remote_launcher_dir(remote_root: Path, num: int) -> Path:
    (found,) = [p.parent for p in remote_root.rglob(".launcher/boot_id") if p.parent.parent.name == str(num)]
    return found


@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.timeout(240)
def test_a_job_lost_in_a_reboot_runs_again_on_another_target_with_retry_elsewhere(
    ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    """A reboot of the ssh target's host, as test_retry_lost.py stands it in (the job's monitor and
    the job killed -9, the recorded boot id made another): with ``retry_elsewhere: true`` the lost
    job runs again as attempt 2 on the local target, the others once where they were placed."""
    proj, record, sweep_dir = _local_and_ssh(tmp_path, ssh_env, "hrl-spill-lost")
    targets = _targets("{cluster: ssh_t, max_jobs: 2}", "{cluster: loc_a, max_jobs: 2}")
    argv = _argv(
        proj,
        sweep_dir,
        record,
        targets,
        3,
        0.3,
        "hydra.launcher.retry_elsewhere=true",
        "hold_s=100",
        f"hold_where=[{SSH_USER}]",
        "hold_on=[0]",
    )
    launch = subprocess.Popen(
        [sys.executable, *argv], cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_until(
            "job 0 held on ssh, jobs 1 and 2 done",
            lambda: _starts(record)[0] == 1 and {1, 2} <= set(_done(record)),
            120,
            launch,
        )
        remote_root = ssh_env.remote_path(f"spill-{proj.parent.name}-ssh_t")
        launcher_dir = _remote_launcher_dir(remote_root, 0)
        monitor = int((launcher_dir / "pid").read_text().split()[0])
        (launcher_dir / "boot_id").write_text("a-boot-before-the-reboot\n")
        os.killpg(monitor, signal.SIGKILL)  # the monitor leads the job's process group
        out, err = launch.communicate(timeout=150)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    assert launch.returncode == 0, (out + err)[-4000:]
    events = Counter((w[0], int(w[1]), w[2], w[3]) for w in _lines(record))
    assert events[("start", 0, "1", SSH_USER)] == 1
    assert events[("start", 0, "2", ROOT)] == 1 and events[("done", 0, "2", ROOT)] == 1
    assert _starts(record) == {0: 2, 1: 1, 2: 1}
    assert load_job_return(sweep_dir / "0" / ".launcher" / "result.pkl").return_value == {
        "num": 0,
        "where": ROOT,
        "attempt": 2,
    }
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        row = next(r for r in store.jobs() if r.idx == 0)
        earlier = store.attempts().get(row.job_id, [])
    assert (row.state, row.outcome, row.attempt) == (JobState.PULLED, JobState.COMPLETED, 2)
    assert [(a.attempt, a.ending) for a in earlier] == [(1, "lost: host rebooted")]
    assert {row.num: row.where for row in res.load(sweep_dir)} == {0: "loc_a", 1: "ssh_t", 2: "loc_a"}
    assert "attempt 1 lost: host rebooted" in _status(sweep_dir)


# --- 3. the launching process killed -9, then the same command ------------------------------
@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.timeout(240)
def test_kill_9_mid_sweep_then_relaunch_runs_every_job_once(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    n_jobs = 12
    proj, record, sweep_dir = _local_and_ssh(tmp_path, ssh_env, "hrl-spill-kill")
    targets = _targets("{cluster: loc_a, max_jobs: 2}", "{cluster: ssh_t, max_jobs: 2}")
    argv = _argv(proj, sweep_dir, record, targets, n_jobs, 1.0)

    def both_busy() -> bool:  # jobs done, others running on both targets, more held back
        lines = _lines(record)
        running = {w[3] for w in lines if w[0] == "start"}
        return len(_done(record)) >= 3 and {ROOT, SSH_USER} <= running and len(_starts(record)) < n_jobs

    launch_and_kill(argv, proj, both_busy, timeout_s=150)
    assert len(_starts(record)) < n_jobs  # some were still held back when it died
    proc = _run(argv, proj)
    assert proc.returncode == 0, _output(proc)
    assert _starts(record) == dict.fromkeys(range(n_jobs), 1), _lines(record)
    done = _done(record)
    assert sorted(done) == list(range(n_jobs))
    assert {r.state for r in _rows(sweep_dir).values()} == {JobState.PULLED}
    where = {row.num: row.where for row in res.load(sweep_dir)}
    assert where == {n: {ROOT: "loc_a", SSH_USER: "ssh_t"}[done[n][1]] for n in range(n_jobs)}
    for n in range(n_jobs):
        assert load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl").return_value["num"] == n


@pytest.mark.slow
@pytest.mark.ssh
@pytest.mark.timeout(240)
def test_ctrl_c_cancels_local_jobs_and_leaves_ssh_jobs_running_then_relaunch_finishes(
    ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT to the launch's process group, as a terminal sends it) while two jobs run on
    each target and two are held back: the local_pool jobs are cancelled, the ssh jobs run on to
    their end without the launcher, and the message says so. The same command then re-attaches
    the ssh jobs (never run again), runs the cancelled ones again and places the held ones."""
    n_jobs, hold_s = 6, 6.0
    proj, record, sweep_dir = _local_and_ssh(tmp_path, ssh_env, "hrl-spill-ctrl-c")
    targets = _targets("{cluster: loc_a, max_jobs: 2}", "{cluster: ssh_t, max_jobs: 2}")
    holds = [f"hold_s={hold_s}", f"hold_where=[{ROOT},{SSH_USER}]", "hold_on=[0,1,2,3]"]
    argv = _argv(proj, sweep_dir, record, targets, n_jobs, 0.5, *holds)
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=proj,
        env=_app_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        running = lambda: {w[3] for w in _lines(record) if w[0] == "start"} == {ROOT, SSH_USER}  # noqa: E731
        _wait_until("jobs running on both targets", lambda: running() and len(_starts(record)) == 4, 90, proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    said = out + err  # Hydra's log lines go to stdout
    assert proc.returncode != 0
    assert "interrupted: 2 jobs keep running on spill" in said and "launcher_core.pull" in said, said[-3000:]
    assert "interrupted: cancelling 2 running jobs" in said, said[-3000:]
    assert "2 jobs were not started: run the same command again" in said, said[-3000:]
    rows = _rows(sweep_dir)
    where_started = {int(w[1]): w[3] for w in _lines(record) if w[0] == "start"}
    local = sorted(n for n, who in where_started.items() if who == ROOT)
    remote = sorted(n for n, who in where_started.items() if who == SSH_USER)
    assert len(local) == 2 and len(remote) == 2, where_started
    assert {rows[n].state for n in local} == {JobState.CANCELLED}
    assert {rows[n].state for n in remote} <= {JobState.SUBMITTED, JobState.RUNNING}
    assert {rows[n].state for n in (4, 5)} == {JobState.PENDING}
    # the ssh jobs finish on their own, with no launcher alive; the cancelled local ones never do
    _wait_until("the ssh jobs' own end", lambda: set(remote) <= set(_done(record)), hold_s + 30)
    assert not set(local) & set(_done(record))

    proc2 = _run(argv, proj)
    assert proc2.returncode == 0, _output(proc2)
    starts = _starts(record)
    assert {n: starts[n] for n in remote} == dict.fromkeys(remote, 1)  # re-attached, not run again
    assert {n: starts[n] for n in local} == dict.fromkeys(local, 2)  # cancelled, so run again
    assert starts[4] == starts[5] == 1
    assert {r.state for r in _rows(sweep_dir).values()} == {JobState.PULLED}
    for n in range(n_jobs):
        assert load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl").return_value["num"] == n


# --- 4. settings and pre-flight, local targets ---------------------------------------------
def _dead_ssh_preset(proj: Path, name: str = "ssh_dead") -> None:
    """A remote_ssh preset whose host is a loopback port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    config = proj / "ssh_config_dead"
    config.write_text(
        f"Host deadhost\n  HostName 127.0.0.1\n  Port {port}\n  User nobody\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    _preset(
        proj,
        name,
        "remote_ssh",
        {
            "hosts": ["deadhost"],
            "ssh_config": str(config),
            "python": "python3",
            "remote_dir": "hrl-spill-dead",
            "connect_timeout_s": 2,
            "command_timeout_s": 5,
            "retries": 0,
        },
    )


@pytest.fixture(name="local_proj")
def local_proj_fixture(tmp_path: Path) -> Path:
    proj = _project(tmp_path / "proj")
    _local_preset(proj, "loc_a")
    _local_preset(proj, "loc_b")
    _dead_ssh_preset(proj)
    return proj


@pytest.mark.parametrize(
    "targets, message",
    [
        (
            ["{cluster: loc_a, max_jobs: 2}", "{cluster: loc_b, max_jobs: 0}"],
            "hydra.launcher.targets[1].max_jobs must be an integer >= 1",
        ),
        (["{cluster: loc_a, max_jobs: 2}", "{cluster: no_such_preset, max_jobs: 2}"], "no_such_preset"),
        (
            ["{cluster: loc_a, max_jobs: 2, max_queue_wait_min: 5}"],
            "hydra.launcher.targets[0].max_queue_wait_min: target loc_a (local_pool) cannot take back queued jobs",
        ),
        (
            ["{cluster: loc_a, max_jobs: 2}", "{cluster: ssh_dead, max_jobs: 2, max_cost_usd: 3}"],
            "hydra.launcher.targets[1].max_cost_usd: target ssh_dead (remote_ssh) is not billed per machine",
        ),
        (["{cluster: loc_a, max_jobs: 2}", "{cluster: loc_a, max_jobs: 1}"], "hydra.launcher.targets[1]: the name"),
    ],
    ids=["max_jobs", "unknown-preset", "queue-wait-on-local", "cost-on-ssh", "same-name"],
)
def test_bad_target_settings_are_refused_naming_the_key(
    targets: list[str], message: str, local_proj: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.txt"
    sweep_dir = local_proj / "multirun" / "s"
    proc = _run(_argv(local_proj, sweep_dir, record, _targets(*targets), 3, 0), local_proj, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    if "unknown" in message or "no_such_preset" in message:
        assert "hydra.launcher.targets[1]" in proc.stderr
    assert not record.exists()  # nothing ran
    assert not list(sweep_dir.glob("*/.launcher")) if sweep_dir.exists() else True


def test_a_target_whose_preflight_fails_is_skipped_with_a_warning(local_proj: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    sweep_dir = local_proj / "multirun" / "s"
    targets = _targets("{cluster: ssh_dead, max_jobs: 2}", "{cluster: loc_a, max_jobs: 2}")
    proc = _run(_argv(local_proj, sweep_dir, record, targets, 4, 0), local_proj, timeout=120)
    assert proc.returncode == 0, _output(proc)
    said = (proc.stdout + proc.stderr).splitlines()  # Hydra's log goes to stdout
    warnings = [ln for ln in said if "spill: target ssh_dead (remote_ssh) skipped: pre-flight failed" in ln]
    assert len(warnings) == 1, _output(proc)
    assert "Connection refused" in warnings[0]
    assert _starts(record) == dict.fromkeys(range(4), 1)
    assert {row.num: row.where for row in res.load(sweep_dir)} == dict.fromkeys(range(4), "loc_a")


def test_require_all_refuses_the_launch_when_a_target_fails_preflight(local_proj: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    sweep_dir = local_proj / "multirun" / "s"
    targets = _targets("{cluster: loc_a, max_jobs: 2}", "{cluster: ssh_dead, max_jobs: 2}")
    proc = _run(
        _argv(local_proj, sweep_dir, record, targets, 4, 0, "hydra.launcher.require_all=true"), local_proj, timeout=120
    )
    assert proc.returncode != 0
    assert "pre-flight check failed:\n  ssh_dead/deadhost: reachable:" in proc.stderr, proc.stderr[-3000:]
    assert "none of the 4 jobs was started" in proc.stderr
    assert not record.exists()  # nothing ran, not even on the target that was fine
    rows = _rows(sweep_dir) if (sweep_dir / ".launcher" / "state.sqlite").exists() else {}
    assert all(r.handle is None for r in rows.values()), rows
