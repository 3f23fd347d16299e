"""remote_ssh under faults, all on loopback: a server that is down, frozen (SIGSTOP) mid-launch,
or killed while jobs run. Each fault ends in a bounded, clear error naming the host; the
relaunch of the same command starts exactly the jobs that had not started (no duplicates,
none lost), re-attaching to the others."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from launcher_core.jobs import JobState
from tests.sshd import USERS, SSHServer, SSHTestEnv, make_project, shared_file
from tests.test_remote_ssh import launch, result, states

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST_FAIL = {
    "retries": 1,
    "connect_timeout_s": 2,
    "command_timeout_s": 4,
    "server_alive_interval_s": 1,
    "reconnect_grace_s": 0,  # give up at the first lost poll (riding outages out is tested below)
}


def runs(record: Path) -> Counter[int]:
    """How often each job (x) ran: one line per execution."""
    return Counter(int(line.split()[0]) for line in record.read_text().splitlines())


def hosts_of(*servers_users: tuple[SSHServer, str]) -> str:
    return "[" + ",".join(f"{{host:{srv.alias(user)},max_parallel:3}}" for srv, user in servers_users) + "]"


def test_server_down_bounded_retries_then_relaunch_runs_everything(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path
) -> None:
    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-rec")
    extra_sshd.stop()
    settings = {"hosts": f"[{extra_sshd.alias()}]", "ssh_config": extra_sshd.ssh_config, "max_parallel": 3}
    tic = time.monotonic()
    proc, sweep = launch(ssh_env, proj, "down", "x=1,2,3", f"record={record}", **settings, **FAST_FAIL)
    elapsed = time.monotonic() - tic
    assert proc.returncode != 0
    assert f"on host {extra_sshd.alias()} failed after 2 attempts" in proc.stderr
    assert "Connection refused" in proc.stderr
    assert elapsed < 30
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}

    extra_sshd.start()
    proc, sweep = launch(ssh_env, proj, "down", "x=1,2,3", f"record={record}", **settings, **FAST_FAIL)
    assert proc.returncode == 0, proc.stderr
    assert runs(record) == {1: 1, 2: 1, 3: 1}


def _freeze_at_first_command(server: SSHServer, stop: threading.Event, frozen: threading.Event) -> None:
    """SIGSTOP the server when the first command of the launch starts on it."""
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        if "Starting session" in server.log.read_text(errors="replace"):
            server.pause()
            frozen.set()
            return
        time.sleep(0.005)


def test_server_frozen_mid_launch_then_relaunch_starts_only_the_missing_jobs(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path
) -> None:
    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-rec")
    config = tmp_path / "ssh_config"  # both servers in one ssh_config, as a user would have them
    config.write_text(ssh_env.server.ssh_config.read_text() + "\n" + extra_sshd.ssh_config.read_text())
    hosts = hosts_of((ssh_env.server, USERS[0]), (extra_sshd, USERS[1]))
    # no pre-flight: the first command on the server must be the start of its jobs
    args = ("x=range(6)", f"record={record}", "sleep=0.3", "hydra.launcher.preflight=false")
    stop, frozen = threading.Event(), threading.Event()
    watcher = threading.Thread(target=_freeze_at_first_command, args=(extra_sshd, stop, frozen), daemon=True)
    watcher.start()
    tic = time.monotonic()
    try:
        proc, sweep = launch(ssh_env, proj, "frozen", *args, hosts=hosts, ssh_config=config, **FAST_FAIL)
    finally:
        stop.set()
        watcher.join(5)
    assert frozen.is_set()
    assert proc.returncode != 0
    assert f"could not start jobs on {extra_sshd.alias(USERS[1])}" in proc.stderr
    assert "3 of 6 jobs were started" in proc.stderr
    assert time.monotonic() - tic < 60
    got = states(sweep)
    started = sorted(i for i, (s, _) in got.items() if s is not JobState.PENDING)
    assert len(started) == 3  # the host that answered got its share; nothing else is recorded
    assert all(got[i][0] is JobState.SUBMITTED for i in started)

    extra_sshd.resume()
    proc, sweep = launch(ssh_env, proj, "frozen", *args, hosts=hosts, ssh_config=config, **FAST_FAIL)
    assert proc.returncode == 0, proc.stderr
    assert "0 jobs collected, 3 re-attached, 3 started" in proc.stdout + proc.stderr
    assert runs(record) == dict.fromkeys(range(6), 1)  # no duplicates, none lost
    assert sorted(result(sweep, n).return_value["x"] for n in range(6)) == list(range(6))


def test_server_killed_while_jobs_run_then_relaunch_reattaches(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path
) -> None:
    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-rec")
    go = record.parent / "go"
    settings = {"hosts": f"[{extra_sshd.alias()}]", "ssh_config": extra_sshd.ssh_config, "max_parallel": 3}
    args = ("x=1,2,3", f"record={record}", f"wait_for={go}")

    def kill_when_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if record.exists() and len(record.read_text().splitlines()) == 3:
                extra_sshd.stop()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    proc, sweep = launch(ssh_env, proj, "killed", *args, **settings, **FAST_FAIL)
    killer.join(10)
    assert proc.returncode != 0
    assert f"lost contact with {extra_sshd.alias()}" in proc.stderr and "keep running" in proc.stderr
    assert {s for s, _ in states(sweep).values()} <= {JobState.SUBMITTED, JobState.RUNNING}

    go.write_text("go")  # the jobs never noticed: they finish while the server is down
    extra_sshd.start()
    proc, sweep = launch(ssh_env, proj, "killed", *args, **settings, **FAST_FAIL)
    assert proc.returncode == 0, proc.stderr
    assert runs(record) == {1: 1, 2: 1, 3: 1}
    assert [result(sweep, n).return_value["x"] for n in range(3)] == [1, 2, 3]


def test_short_outage_while_jobs_run_is_ridden_out_without_a_relaunch(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path
) -> None:
    """The server and its connections go away for a few seconds and come back on the same port:
    the launch keeps retrying (saying so), then collects every job, each run exactly once."""
    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-rec")
    go = record.parent / "go"
    settings = {"hosts": f"[{extra_sshd.alias()}]", "ssh_config": extra_sshd.ssh_config, "max_parallel": 3}
    args = ("x=1,2,3", f"record={record}", f"wait_for={go}")
    outage = {**FAST_FAIL, "reconnect_grace_s": 60}

    def outage_while_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if record.exists() and len(record.read_text().splitlines()) == 3:
                extra_sshd.stop()  # listener and its connections killed
                go.write_text("go")  # the jobs finish while the server is down
                time.sleep(6)
                extra_sshd.start()  # back on the same port
                return
            time.sleep(0.02)

    flapper = threading.Thread(target=outage_while_running, daemon=True)
    flapper.start()
    tic = time.monotonic()
    proc, sweep = launch(ssh_env, proj, "outage", *args, **settings, **outage)
    flapper.join(30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - tic < 60
    said = proc.stdout + proc.stderr
    assert f"lost contact with {extra_sshd.alias()}" in said and "Retrying for up to" in said
    assert f"contact with {extra_sshd.alias()} is back" in said
    assert runs(record) == {1: 1, 2: 1, 3: 1}
    assert [result(sweep, n).return_value["x"] for n in range(3)] == [1, 2, 3]
