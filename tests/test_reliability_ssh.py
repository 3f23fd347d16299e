"""remote_ssh reliability and security (issue 7), all on loopback, beyond test_remote_ssh*.py and test_pull.py.

* sshd frozen (SIGSTOP) or killed during the code sync, and frozen during a pull;
* a job SIGKILLed from outside, the PID-reuse guard of the poll script, a full disk on the job side;
* file modes of payloads and state on both sides, and secrets that must never be written anywhere.

Crashes (``os._exit``) with stderr pulled are covered by test_remote_ssh.py already.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from launcher_core.jobs import JobState
from launcher_core.remote.scripts import poll_script
from launcher_core.runtime.procs import process_start_time
from tests.sshd import USERS, SSHServer, SSHTestEnv, make_project, shared_dir, shared_file
from tests.test_remote_ssh import launch, outcomes, rows, states

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST_FAIL = {
    "retries": 1,
    "connect_timeout_s": 2,
    "command_timeout_s": 4,
    "rsync_timeout_s": 6,
    "server_alive_interval_s": 1,
    "reconnect_grace_s": 0,
}

# Jobs may fill a scratch dir: cfg.fill_mb MB into cfg.fill_dir when x is in cfg.fill_on.
FILL_PATCH = """
    if cfg.x in cfg.fill_on:
        with open(os.path.join(cfg.fill_dir, f"fill-{cfg.x}.bin"), "wb") as _f:
            for _ in range(int(cfg.fill_mb)):
                _f.write(b"\\0" * 1048576)
                _f.flush()
    import helper
"""


def project(root: Path) -> Path:
    proj = make_project(root)
    app = (proj / "app.py").read_text()
    (proj / "app.py").write_text(app.replace("    import helper\n", FILL_PATCH, 1))
    conf = proj / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("x: 0\n", "x: 0\nfill_on: []\nfill_dir: ''\nfill_mb: 0\n"))
    return proj


def runs(record: Path) -> Counter[int]:
    return Counter(int(line.split()[0]) for line in record.read_text().splitlines())


def wait_until(predicate, timeout_s: float, step: float = 0.02) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def single_host(server: SSHServer, **extra: object) -> dict[str, object]:
    return {"hosts": f"[{server.alias()}]", "ssh_config": server.ssh_config, **extra}


# --- 1. sshd faults during the code sync and during a pull ---------------------------------------
@pytest.mark.parametrize("fault", ["sigstop", "kill"])
def test_sshd_fault_during_code_sync_then_relaunch_runs_each_job_once(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path, fault: str
) -> None:
    proj = project(tmp_path / "proj")
    (proj / "assets").mkdir()
    (proj / "assets" / "weights.bin").write_bytes(os.urandom(40 * 1024 * 1024))  # rsync takes a moment
    record = shared_file("hrl-rec")
    settings = single_host(extra_sshd, max_parallel=3, rsync_path=extra_sshd.rsync_wrapper, **FAST_FAIL)
    args = ("x=1,2,3", f"record={record}")
    hit = threading.Event()

    def fault_at_upload() -> None:  # as soon as the server-side rsync of the snapshot starts
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(c.startswith("--server") and "--sender" not in c for c in extra_sshd.rsync_calls()):
                extra_sshd.pause() if fault == "sigstop" else extra_sshd.stop()
                hit.set()
                return
            time.sleep(0.003)

    watcher = threading.Thread(target=fault_at_upload, daemon=True)
    watcher.start()
    tic = time.monotonic()
    proc, sweep = launch(ssh_env, proj, f"sync-{fault}", *args, timeout=120, **settings)
    elapsed = time.monotonic() - tic
    watcher.join(5)
    assert hit.is_set()
    assert proc.returncode != 0
    assert extra_sshd.alias() in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 90
    assert record.read_text() == ""  # nothing ran
    assert {s for s, _ in states(sweep).values()} <= {JobState.PENDING}  # nothing marked submitted

    if fault == "sigstop":
        extra_sshd.resume()
    else:
        extra_sshd.start()
    proc, sweep = launch(ssh_env, proj, f"sync-{fault}", *args, timeout=120, **settings)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runs(record) == {1: 1, 2: 1, 3: 1}
    assert {s for s, _ in outcomes(sweep).values()} == {JobState.COMPLETED}


def test_sshd_frozen_during_pull_fails_in_bounded_time_then_next_pull_completes(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path
) -> None:
    proj = project(tmp_path / "proj")
    record = shared_file("hrl-rec")
    settings = single_host(extra_sshd, max_parallel=3, wait=False, **FAST_FAIL)
    proc, sweep = launch(ssh_env, proj, "pullfault", "x=1,2,3", f"record={record}", **settings)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert wait_until(lambda: len(record.read_text().splitlines()) == 3, 60)
    # the jobs wrote their record line: wait for their exit status on the "host"
    remote = ssh_env.remote_path("pullfault")
    assert wait_until(lambda: len(list(remote.rglob(".launcher/exit_status"))) == 3, 30)

    extra_sshd.pause()
    try:
        tic = time.monotonic()
        pull = subprocess.run(
            [sys.executable, "-m", "launcher_core.pull", "--once", str(sweep)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - tic
    finally:
        extra_sshd.resume()
    out = pull.stdout + pull.stderr
    assert elapsed < 60, out
    assert pull.returncode != 0, out
    assert extra_sshd.alias() in out, out
    for row in rows(sweep):
        assert row.state is not JobState.PULLED
        assert not (sweep / str(row.idx) / ".launcher" / "result.pkl").exists()

    pull = subprocess.run(
        [sys.executable, "-m", "launcher_core.pull", "--once", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert [r.state for r in rows(sweep)] == [JobState.PULLED] * 3
    assert [r.outcome for r in rows(sweep)] == [JobState.COMPLETED] * 3
    for n in range(3):
        assert (sweep / str(n) / ".launcher" / "result.pkl").exists()
        assert (sweep / str(n) / "result.json").exists()
    assert runs(record) == {1: 1, 2: 1, 3: 1}


# --- 2. job-process faults -------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["group", "pid"])
def test_job_sigkilled_from_outside_is_failed_with_reason_and_logs(
    ssh_env: SSHTestEnv, tmp_path: Path, target: str
) -> None:
    """kill -9 of the job's process group, or of the pid in its pid file only (its leader)."""
    proj = project(tmp_path / "proj")
    go = shared_dir("hrl-go") / "go"
    remote = ssh_env.remote_path(f"sigkill-{target}")
    killed: list[int] = []

    def kill_job_0() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pid_files = [p for p in remote.rglob(".launcher/pid") if p.parent.parent.name == "0"]
            # wait until the job's log exists, so there is a log to pull
            if pid_files and pid_files[0].read_text().strip() and (pid_files[0].parent / "stdout.log").exists():
                pid = int(pid_files[0].read_text().split()[0])
                time.sleep(0.5)
                os.killpg(pid, 9) if target == "group" else os.kill(pid, 9)
                killed.append(pid)
                time.sleep(1.5)  # polls happen while the job's process group is still there
                go.write_text("go")
                return
            time.sleep(0.02)
        go.write_text("go")

    killer = threading.Thread(target=kill_job_0, daemon=True)
    killer.start()
    # killing the whole group kills the job's monitor with it: the job is lost and would run again
    # (tests/test_retry_lost.py); here its failure is what is looked at
    no_retry = "hydra.launcher.max_retries=0"
    proc, sweep = launch(ssh_env, proj, f"sigkill-{target}", "x=1,2", f"wait_for={go}", no_retry, max_parallel=2)
    killer.join(5)
    assert killed
    got = outcomes(sweep)
    if target == "pid":
        # only the group leader (the pid in the pid file) died: the task ran on and was tracked
        # as running until its group was gone (not FAILED while still running); everything it
        # wrote came home, and nothing of it is left running
        assert [r.state for r in rows(sweep)] == [JobState.PULLED] * 2
        assert got[1][0] is JobState.COMPLETED, got
        assert got[0][0] is JobState.COMPLETED or (got[0][0] is JobState.FAILED and got[0][1]), got
        assert (sweep / "0" / "result.json").exists()
        assert (sweep / "0" / ".launcher" / "stdout.log").exists()
        assert not [q for q in Path("/proc").glob("[0-9]*/cwd") if _cwd_in(q, remote)]
        return
    assert proc.returncode != 0
    assert got[0][0] is JobState.FAILED, got
    assert got[0][1], got
    assert got[1][0] is JobState.COMPLETED, got
    assert (sweep / "0" / ".launcher" / "stderr.log").exists()  # logs pulled home
    assert (sweep / "0" / ".launcher" / "stdout.log").exists()
    assert not (sweep / "0" / ".launcher" / "result.pkl").exists()


def _cwd_in(cwd_link: Path, root: Path) -> bool:
    try:
        return os.readlink(cwd_link).startswith(str(root))
    except OSError:
        return False


def test_poll_does_not_take_a_reused_pid_for_the_job(tmp_path: Path) -> None:
    """A pid file naming a live, unrelated process (other start time) is not "running"."""
    unrelated = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start_time(unrelated.pid)
        jobs = []
        for name, recorded in (("reused", start - 5), ("ours", start)):
            d = tmp_path / name / ".launcher"
            d.mkdir(parents=True)
            (d / "pid").write_text(f"{unrelated.pid} {recorded}\n")
            jobs.append((name, str(d), str(tmp_path / "no-runner.pid")))
        out = subprocess.run(["sh", "-s"], input=poll_script(jobs, 1), capture_output=True, text=True, timeout=30)
        lines = dict(line.split(maxsplit=1) for line in out.stdout.splitlines())
        assert lines["ours"] == "running"  # control: same start time → running
        assert lines["reused"] == "lost"  # same pid, other start time → the job is gone
        assert unrelated.poll() is None  # and nothing killed the unrelated process
    finally:
        unrelated.kill()
        unrelated.wait()


@pytest.fixture
def small_tmpfs(ssh_env: SSHTestEnv) -> Path:
    path = ssh_env.remote_path("fulldisk") / "scratch"
    path.mkdir(parents=True)
    user = USERS[0]
    for d in (path, *path.parents):  # what mkdir created as root belongs to the remote user
        if d == ssh_env.home(user):
            break
        shutil.chown(d, user, user)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0777", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_on_the_job_side_fails_that_job_only(ssh_env: SSHTestEnv, small_tmpfs: Path, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    args = ("x=1,2,3", "fill_on=[2]", f"fill_dir={small_tmpfs}", "fill_mb=8")
    proc, sweep = launch(ssh_env, proj, "fulldisk", *args, max_parallel=3)
    assert proc.returncode != 0
    got = outcomes(sweep)
    assert got[0][0] is JobState.COMPLETED and got[2][0] is JobState.COMPLETED, got
    assert got[1][0] is JobState.FAILED, got
    assert "No space left" in (got[1][1] or "") or "ENOSPC" in (got[1][1] or ""), got
    assert "No space left" in (sweep / "1" / ".launcher" / "stderr.log").read_text()
    assert [r.state for r in rows(sweep)] == [JobState.PULLED] * 3
    assert (sweep / "0" / "result.json").exists() and (sweep / "2" / "result.json").exists()


# --- 4 + 5. file modes and secrets --------------------------------------------------------------
SECRET = "hrl-s3cr3t-VALUE-8d1f0c"


def _private_key_body(key: Path) -> list[str]:
    """Long base64 chunks of the private key (any one of them appearing anywhere is a leak)."""
    lines = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
    body = "".join(lines)
    base64.b64decode(body)  # it is the key's body
    return [body[i : i + 40] for i in range(0, len(body) - 40, 40)]


def _grep(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                hits += [f"{path}: {n[:12]!r}" for n in needles if n in data]
    return hits


# Under a .launcher dir (itself 0700), copies of this package's code (pylib/) and the git record of
# the code (code/) keep ordinary modes; every other file there (payloads, batches, pid/exit/batch
# markers, logs, results, sweep ids) must be 0600.
NOT_STATE = ("pylib", "code")


def _bad_modes(root: Path) -> list[str]:
    bad = []
    for d in [p for p in root.rglob(".launcher") if p.is_dir()]:
        if stat.S_IMODE(d.stat().st_mode) != 0o700:
            bad.append(f"{d} {oct(stat.S_IMODE(d.stat().st_mode))}")
        for p in d.rglob("*"):
            if p.is_symlink() or p.is_dir() or set(p.relative_to(d).parts) & set(NOT_STATE):
                continue
            if stat.S_IMODE(p.stat().st_mode) != 0o600:
                bad.append(f"{p} {oct(stat.S_IMODE(p.stat().st_mode))}")
    return bad


def test_payload_and_state_files_are_private_on_both_sides(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    proc, sweep = launch(ssh_env, proj, "modes", "x=1,2", max_parallel=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = ssh_env.remote_path("modes")
    assert list(remote.rglob("*.pkl")), "no payloads found on the remote side"
    assert _bad_modes(sweep) + _bad_modes(remote) == [], "\n".join(_bad_modes(sweep) + _bad_modes(remote))
    # what the launcher keeps on the host outside the job dirs and the code snapshots (slots, ...) is private
    for p in remote.rglob("*"):
        if p.is_file() and not {"snapshots", "runs"} & set(p.relative_to(remote).parts):
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
    # the task itself still writes with the user's umask (only the launcher's own files are private)
    assert stat.S_IMODE((remote / "runs" / "multirun" / "modes" / "0" / "result.json").stat().st_mode) == 0o644


def test_secrets_are_never_written_anywhere(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    key = ssh_env.server.root / "id_client"
    needles = [SECRET.encode(), *(c.encode() for c in _private_key_body(key))]
    # the task sees the secret (it returns only a digest of it, so it must not end up in any file)
    app = (proj / "app.py").read_text()
    (proj / "app.py").write_text(
        app.replace(
            '"token": os.environ.get("HRL_TEST_TOKEN"),',
            '"token": __import__("hashlib").sha256(os.environ.get("HRL_TEST_TOKEN", "").encode()).hexdigest(),',
        )
    )
    proc, sweep = launch(
        ssh_env, proj, "secrets", "x=1,2", f"+hydra.launcher.env.vars.HRL_TEST_TOKEN={SECRET}", max_parallel=2
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import hashlib
    import json

    for n in range(2):
        token = json.loads((sweep / str(n) / "result.json").read_text())["token"]
        assert token == hashlib.sha256(SECRET.encode()).hexdigest()  # the job did get it
    remote = ssh_env.remote_path("secrets")
    hits = _grep(sweep, needles) + _grep(remote, needles)
    # Hydra core itself records the whole command line in the local multirun.yaml before any
    # launcher runs (not generated by this package, never shipped): the one known exception.
    hydra_record = f"{sweep / 'multirun.yaml'}: "
    assert [h for h in hits if not h.startswith(hydra_record)] == [], "\n".join(hits)
    assert list(remote.rglob("batches/*.json")) and list(sweep.rglob("result.pkl"))  # the grep saw the job tables
    assert SECRET not in proc.stdout + proc.stderr
