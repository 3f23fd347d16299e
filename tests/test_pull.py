"""The pull daemon and the sweep CLI, as separate processes, against the real loopback sshd.

Sweeps are launched with ``wait=false``; then ``python -m launcher_core.pull`` and
``python -m launcher_core ...`` run as a user would run them, and the tests check the files that
came home (by checksum), the states in the state store and what the commands printed.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.conftest import run_app
from tests.sshd import SSHTestEnv, make_project, shared_dir

pytestmark = pytest.mark.ssh

# Each job writes blob.bin: deterministic bytes derived from x, so the test knows its checksum.
BLOB_APP_PATCH = """
    import hashlib as _h
    _seed = _h.sha256(str(cfg.x).encode()).digest()
    (out / "blob.bin").write_bytes(_seed * (cfg.blob_kb * 32))
    import helper
"""


def blob_sha(x: int, blob_kb: int) -> str:
    seed = hashlib.sha256(str(x).encode()).digest()
    return hashlib.sha256(seed * (blob_kb * 32)).hexdigest()


def blob_project(root: Path) -> Path:
    proj = make_project(root)
    app = (proj / "app.py").read_text()
    (proj / "app.py").write_text(app.replace("    import helper\n", BLOB_APP_PATCH, 1))
    conf = proj / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("x: 0\n", "x: 0\nblob_kb: 64\n"))
    return proj


def launch_detached(env: SSHTestEnv, proj: Path, name: str, *args: str, **settings: object) -> Path:
    sweep_dir = proj / "multirun" / name
    argv = ["-m", "hydra/launcher=remote_ssh", "hydra/sweeper=paired", f"hydra.sweep.dir={sweep_dir}", *args]
    argv += env.overrides(name, wait=False, **settings)
    proc = run_app(proj / "app.py", argv, cwd=proj, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert f"python -m launcher_core.pull {sweep_dir}" in proc.stdout + proc.stderr
    return sweep_dir


def cli(*args: str, module: str = "launcher_core", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def rows(sweep_dir: Path):
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return store.jobs()


def assert_all_pulled_intact(sweep_dir: Path, xs: list[int], blob_kb: int) -> None:
    jobs = rows(sweep_dir)
    assert [r.state for r in jobs] == [JobState.PULLED] * len(xs)
    assert [r.outcome for r in jobs] == [JobState.COMPLETED] * len(xs)
    for num, x in enumerate(xs):
        blob = sweep_dir / str(num) / "blob.bin"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob_sha(x, blob_kb), f"job {num}: blob corrupt"
        assert (sweep_dir / str(num) / ".launcher" / "result.pkl").exists()
    leftovers = [p for p in sweep_dir.rglob("*") if p.name.startswith(".") and "tmp" in p.name.lower()]
    assert not leftovers, f"partial files left behind: {leftovers}"


def test_daemon_collects_a_detached_sweep_and_status_shows_it(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = blob_project(tmp_path / "proj")
    notified = shared_dir("hrl-notify") / "notified.txt"
    secret = "hrl-private-" + os.urandom(6).hex()
    sweep = launch_detached(
        ssh_env,
        proj,
        "daemon",
        "x=1,2,3,4",
        "raise_on=[3]",
        f"+hydra.launcher.env.vars.HRL_PRIVATE={secret}",
        max_parallel=2,
    )

    notify = f"sh -c 'echo $SWEEP_ID $SWEEP_JOBS $SWEEP_FAILED >> {notified}'"
    pulled = cli(str(sweep), "--interval", "0.5", "--notify", notify, module="launcher_core.pull", timeout=180)
    assert pulled.returncode == 0, pulled.stderr
    jobs = rows(sweep)
    assert [r.state for r in jobs] == [JobState.PULLED] * 4
    assert [r.outcome for r in jobs] == [JobState.COMPLETED, JobState.COMPLETED, JobState.FAILED, JobState.COMPLETED]
    assert jobs[2].exit_reason == "ValueError: bad x=3"
    assert "ValueError: bad x=3" in (sweep / "2" / ".launcher" / "stderr.log").read_text()  # failed: logs came home
    assert (sweep / "2" / "app.log").exists()  # Hydra's own job log too
    sweep_id = StateStore.for_sweep_dir(sweep, readonly=True).meta()["sweep_id"]
    assert notified.read_text().split() == [sweep_id, "4", "1"]
    leaks = [p for p in sweep.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []  # not in multirun.yaml, .hydra/*.yaml, payloads, logs or the state store
    assert "HRL_PRIVATE: REDACTED" in (sweep / "multirun.yaml").read_text()

    again = cli(str(sweep), "--once", module="launcher_core.pull")  # nothing left: notifies no second time
    assert again.returncode == 0 and notified.read_text().count(sweep_id) == 1

    status = cli("status", str(sweep))
    assert status.returncode == 0, status.stderr
    assert f"sweep {sweep_id} (remote_ssh)" in status.stdout
    lines = [ln for ln in status.stdout.splitlines() if "x=" in ln]
    assert len(lines) == 4
    assert "failed (pulled)" in lines[2] and "ValueError: bad x=3" in lines[2]
    assert all("completed (pulled)" in lines[i] for i in (0, 1, 3))
    assert ssh_env.server.alias() in lines[0]

    listing = cli("list")
    assert sweep_id in listing.stdout and "remote_ssh" in listing.stdout

    logs = cli("logs", str(sweep), "1")
    assert logs.returncode == 0 and "done x=2" in logs.stdout


def test_kill_9_the_daemon_again_and_again_nothing_lost_or_torn(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = blob_project(tmp_path / "proj")
    xs = list(range(10))
    sweep = launch_detached(ssh_env, proj, "kill9", f"x={','.join(map(str, xs))}", "blob_kb=512", max_parallel=4)
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 240
    while kills < 22 and time.monotonic() < deadline:
        with subprocess.Popen(
            [sys.executable, "-m", "launcher_core.pull", str(sweep), "--interval", "0.2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as daemon:
            time.sleep(rng.uniform(0.05, 1.2))
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGKILL)
                kills += 1
            daemon.wait(timeout=10)
        jobs = rows(sweep)  # the store is readable and consistent after every kill
        for r in jobs:
            if r.state is JobState.PULLED:  # marked pulled only once its files are complete
                blob = sweep / str(r.idx) / "blob.bin"
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob_sha(xs[r.idx], 512)
    assert kills >= 20
    final = cli(str(sweep), "--interval", "0.3", module="launcher_core.pull", timeout=180)
    assert final.returncode == 0, final.stderr
    assert_all_pulled_intact(sweep, xs, 512)
    pulled_at = {r.job_id: r.pulled_at for r in rows(sweep)}
    assert cli(str(sweep), "--once", module="launcher_core.pull").returncode == 0
    assert {r.job_id: r.pulled_at for r in rows(sweep)} == pulled_at  # pulled jobs are never pulled again


def test_two_daemons_on_the_same_sweep_do_not_corrupt_it(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = blob_project(tmp_path / "proj")
    xs = [1, 2, 3, 4, 5, 6]
    sweep = launch_detached(ssh_env, proj, "two-daemons", "x=1,2,3,4,5,6", "blob_kb=256", "sleep=0.5", max_parallel=3)
    argv = [sys.executable, "-m", "launcher_core.pull", str(sweep), "--interval", "0.2", "-v"]
    with (
        subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as a,
        subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as b,
    ):
        _, err_a = a.communicate(timeout=180)
        _, err_b = b.communicate(timeout=180)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert "another pull process holds this sweep" in err_a + err_b  # the lock was really contended
    assert_all_pulled_intact(sweep, xs, 256)


def test_dry_run_changes_nothing_then_bare_pull_then_cancel_from_cli(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = blob_project(tmp_path / "proj")
    go = shared_dir("hrl-go") / "go"
    sweep = launch_detached(ssh_env, proj, "cli", "x=1,2,3", f"wait_for={go}", "blob_kb=300", max_parallel=1)

    cancel = cli("cancel", str(sweep), "2")  # job #2 (x=3) is still queued behind the others
    assert cancel.returncode == 0 and "cancelled 1 jobs: #2" in cancel.stdout
    go.write_text("go")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dry = cli(str(sweep), "--dry-run", module="launcher_core.pull")
        assert dry.returncode == 0, dry.stderr
        if "would pull 2 jobs: [0, 1]" in dry.stdout:
            break
        time.sleep(0.5)
    assert "would pull 2 jobs: [0, 1]" in dry.stdout
    assert not (sweep / "0" / "blob.bin").exists()  # a dry run fetches nothing

    bare = cli(str(sweep), "--bare", "--bare-size", "100k", module="launcher_core.pull")
    assert bare.returncode == 0, bare.stderr
    assert (sweep / "0" / "result.json").exists() and not (sweep / "0" / "blob.bin").exists()
    assert [(r.state, r.pull_mode) for r in rows(sweep)[:2]] == [(JobState.PULLED, "bare")] * 2
    assert rows(sweep)[2].state is JobState.CANCELLED

    full = cli(str(sweep), "--once", module="launcher_core.pull")
    assert full.returncode == 0, full.stderr
    assert hashlib.sha256((sweep / "1" / "blob.bin").read_bytes()).hexdigest() == blob_sha(2, 300)
    assert not (sweep / "2" / "result.json").exists()  # the cancelled job never ran
    status = cli("status", str(sweep), "--offline")
    assert "cancelled by user" in status.stdout


def test_background_daemon_with_pid_file_and_stop(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = blob_project(tmp_path / "proj")
    sweep = launch_detached(ssh_env, proj, "bg", "x=1,2", "sleep=1", max_parallel=2)
    home = Path(os.environ["HYDRA_REMOTE_LAUNCHER_HOME"])
    started = cli(str(sweep), "--daemon", "--interval", "0.3", module="launcher_core.pull")
    assert started.returncode == 0, started.stderr
    assert "pull daemon started (pid" in started.stdout
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    second = cli("--daemon", "--interval", "0.3", module="launcher_core.pull")  # a second one refuses to run
    assert second.returncode == 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(r.state is not JobState.PULLED for r in rows(sweep)):
        time.sleep(0.3)
    assert [r.state for r in rows(sweep)] == [JobState.PULLED, JobState.PULLED]
    assert "another pull daemon is running" in (home / "pull.log").read_text()
    deadline = time.monotonic() + 20  # the first daemon watched only this sweep: it exits when done
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]:
        assert time.monotonic() < deadline, "daemon did not exit after its sweep finished"
        time.sleep(0.2)
    assert cli("--stop", module="launcher_core.pull").returncode in (0, 1)
