"""remote_ssh end to end against a real sshd on 127.0.0.1 (see tests/sshd.py).

Every test launches the generated test project (tests/sshd.py ``make_project``) as a user
would, in a subprocess, and checks what really happened: files pulled back into the local
sweep dir, JobReturns, states in the state store, what exists on the "remote" side, and the
TCP connections the sshd accepted.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from launcher_core.jobs import JobState, PullFilter
from launcher_core.state import StateStore
from tests.conftest import run_app
from tests.sshd import USERS, SSHTestEnv, make_project, shared_dir, shared_file

pytestmark = pytest.mark.ssh


def launch(
    env: SSHTestEnv,
    proj: Path,
    name: str,
    *args: str,
    timeout: float = 240,
    remote: str | None = None,
    **settings: Any,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``python app.py -m hydra/launcher=remote_ssh ...`` in the project, sweep dir inside it.

    ``remote`` names the remote_dir (default: ``name``, a fresh one per sweep).
    """
    sweep_dir = proj / "multirun" / name
    argv = ["-m", "hydra/launcher=remote_ssh", f"hydra.sweep.dir={sweep_dir}", *args]
    argv += env.overrides(remote or name, **settings)
    return run_app(proj / "app.py", argv, cwd=proj, timeout=timeout), sweep_dir


def result(sweep_dir: Path, num: int) -> Any:
    with open(sweep_dir / str(num) / ".launcher" / "result.pkl", "rb") as f:
        return cloudpickle.load(f)


def states(sweep_dir: Path) -> dict[int, tuple[JobState, str | None]]:
    """State of each job (PULLED once its files are home) and its exit reason."""
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {row.idx: (row.state, row.exit_reason) for row in store.jobs()}


def outcomes(sweep_dir: Path) -> dict[int, tuple[JobState, str | None]]:
    """How each job ended (completed / failed / cancelled, kept after the pull)."""
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {row.idx: (row.outcome or row.state, row.exit_reason) for row in store.jobs()}


def rows(sweep_dir: Path) -> list[Any]:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return store.jobs()


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def uploads(calls: list[str]) -> list[str]:
    """Server-side rsync invocations that received files (code snapshot or job payloads)."""
    return [c for c in calls if c.startswith("--server") and "--sender" not in c]


def code_syncs(calls: list[str]) -> list[str]:
    """... of which code snapshots: the payload upload uses --files-from, which implies -R."""
    return [c for c in uploads(calls) if "R" not in c.split()[1].split(".")[0]]


def pull_until_done(sweep_dir: Path, timeout_s: float = 90, pull_filter: PullFilter | None = None) -> None:
    """What the pull daemon does, in this process: poll + fetch until every job is pulled."""
    from launcher_core.collect.pull import PullOptions, pull_sweep_once

    options = PullOptions(once=True, pull_filter=pull_filter or PullFilter())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pull_sweep_once(sweep_dir, options).finished:
            return
        time.sleep(0.3)
    raise AssertionError(f"sweep {sweep_dir} not finished after {timeout_s} s: {states(sweep_dir)}")


def git(proj: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(proj), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_sweep_runs_remotely_and_brings_outputs_and_returns_home(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    server = ssh_env.server
    proj = make_project(tmp_path / "proj")
    (proj / "notes.tmp").write_text("scratch")
    (proj / "data" / "keep").mkdir()
    (proj / "data" / "keep" / "a.txt").write_text("keep me")
    git(proj, "init", "-q")
    git(proj, "add", "-A")
    git(proj, "commit", "-q", "-m", "init")
    (proj / "helper.py").write_text('VERSION = "v1"  # dirty edit\n')
    connections, rsyncs = server.connections(), len(server.rsync_calls())

    proc, sweep = launch(
        ssh_env,
        proj,
        "e2e",
        "x=1,2,3,4",
        max_parallel=2,
        rsync_path=server.rsync_wrapper,
        rsync_include="['/data/keep/***']",
        rsync_exclude="['.git/','__pycache__/','/data/*','*.tmp','/multirun/']",
    )
    assert proc.returncode == 0, proc.stderr

    for num in range(4):
        ret = result(sweep, num)
        assert ret.return_value["x"] == num + 1
        assert ret.return_value["helper"] == "v1"
        assert ret.return_value["uid"] == uid(USERS[0])  # it really ran as the remote user
        assert ret.return_value["slot"] in ("0", "1")
        job_dir = sweep / str(num)
        # Hydra's layout, pulled home: outputs, .hydra, the job log, launcher files
        assert json.loads((job_dir / "result.json").read_text())["x"] == num + 1
        assert (job_dir / ".hydra" / "config.yaml").exists()
        assert (job_dir / "app.log").exists()
        assert "done x=" in (job_dir / ".launcher" / "stdout.log").read_text()
        # the JobReturn speaks of local paths, as with a local launcher
        assert ret.working_dir == str(proj)
        assert ret.hydra_cfg.hydra.runtime.output_dir == str(job_dir)
    assert {s for s, _ in states(sweep).values()} == {JobState.PULLED}

    # one SSH connection for the whole sweep; one rsync of the code, one of all payloads
    assert server.connections() - connections == 1
    calls = server.rsync_calls()[rsyncs:]
    assert len(code_syncs(calls)) == 1 and len(uploads(calls)) == 2
    assert (proc.stdout + proc.stderr).count("code synced to") == 1

    # the remote mirrors the local layout; the snapshot holds what the filters let through
    remote = ssh_env.remote_path("e2e")
    assert (remote / "runs" / "multirun" / "e2e" / "3" / "result.json").exists()
    (snapshot,) = (remote / "snapshots").glob("*/*/")
    assert (snapshot / "app.py").exists() and (snapshot / "data" / "keep" / "a.txt").read_text() == "keep me"
    for absent in ("data/big.bin", "notes.tmp", ".git", "__pycache__/junk.pyc", "multirun"):
        assert not (snapshot / absent).exists(), absent

    # the local git state is recorded with the sweep (and shipped with it)
    (code,) = (sweep / ".launcher" / "remote_ssh").glob("*/code")
    info = json.loads((code / "git.json").read_text())
    assert info["commit"] == git(proj, "rev-parse", "HEAD").strip()
    assert info["dirty"] is True and "dirty edit" in (code / "git_diff.patch").read_text()
    assert (remote / "runs" / "multirun" / "e2e" / ".launcher" / "remote_ssh" / snapshot.name / "code").is_dir()


def test_hundred_jobs_use_one_connection_per_batch_and_one_code_sync(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    server = ssh_env.server
    proj = make_project(tmp_path / "proj")
    connections, rsyncs = server.connections(), len(server.rsync_calls())
    proc, sweep = launch(
        ssh_env,
        proj,
        "hundred",
        "x=range(100)",
        "hydra/sweeper=paired",  # Hydra's basic sweeper composes every job twice (0.4 s each)
        "hydra.sweeper.max_batch_size=50",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        max_parallel=4,
        rsync_path=server.rsync_wrapper,
        poll_interval_s=0.5,
    )
    assert proc.returncode == 0, proc.stderr
    assert [result(sweep, n).return_value["x"] for n in range(100)] == list(range(100))
    opened = server.connections() - connections
    assert opened <= 5, f"{opened} SSH connections for 100 jobs"
    assert opened == 2  # one master per batch (2 batches of 50)
    calls = server.rsync_calls()[rsyncs:]
    assert len(code_syncs(calls)) == 1  # the second batch reuses the snapshot
    assert len(uploads(calls)) == 3  # code + one payload upload per batch


def test_wait_false_returns_at_once_and_the_daemon_collects(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    go = shared_dir("hrl-go") / "go"
    secret = "hrl-secret-value"
    proc, sweep = launch(
        ssh_env,
        proj,
        "detached",
        "x=1,2",
        f"wait_for={go}",
        f"+hydra.launcher.env.vars.HRL_TEST_TOKEN={secret}",
        wait=False,
        max_parallel=2,
    )
    assert proc.returncode == 0, proc.stderr
    assert "launcher_core.pull" in proc.stdout + proc.stderr  # the user is told how to collect results
    assert {s for s, _ in states(sweep).values()} <= {JobState.SUBMITTED, JobState.RUNNING}

    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        meta = store.meta()
        handle = store.jobs()[0].handle
    assert meta["backend"] == "remote_ssh"
    assert meta["backend_config"]["hosts"][0]["host"] == ssh_env.server.alias()
    assert handle["host"] == ssh_env.server.alias() and handle["pid_file"].startswith("/home/")
    assert secret not in (sweep / ".launcher" / "state.sqlite").read_bytes().decode(errors="replace")

    # another process rebuilds the backend from the stored config: state and live logs
    from launcher_core.backends import backend_for_meta

    backend = backend_for_meta(meta)
    try:
        deadline = time.monotonic() + 30
        while backend.poll({"j": handle})["j"].state is not JobState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        assert backend.poll({"j": handle})["j"].state is JobState.RUNNING
        go.write_text("go")
        deadline = time.monotonic() + 30
        while b"done x=" not in backend.read_log(handle, "stdout", 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"done x=" in backend.read_log(handle, "stdout", 0)
    finally:
        backend.close()

    pull_until_done(sweep)
    assert [result(sweep, n).return_value["x"] for n in range(2)] == [1, 2]
    assert result(sweep, 0).return_value["token"] == secret  # env vars reach the jobs
    assert {s for s, _ in states(sweep).values()} == {JobState.PULLED}


def test_cancel_stops_running_jobs_and_queued_ones_never_start(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    """What ``launcher-core cancel`` does from another process: kill the group, skip the queue."""
    from launcher_core.backends import backend_for_meta

    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-rec")
    go = record.parent / "never"
    proc, sweep = launch(
        ssh_env, proj, "cancel", "x=1,2,3", f"record={record}", f"wait_for={go}", wait=False, max_parallel=1
    )
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 30
    while not record.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    ((_, pid, _, _),) = [line.split() for line in record.read_text().splitlines()]  # one slot: one job runs
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        meta, handles = store.meta(), {r.job_id: r.handle for r in store.jobs()}
    backend = backend_for_meta(meta)
    try:
        tic = time.monotonic()
        backend.cancel(handles)
        assert time.monotonic() - tic < 10
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
        time.sleep(1.0)  # the runner would have started the next job by now
        assert len(record.read_text().splitlines()) == 1
        assert {s.state for s in backend.poll(handles).values()} == {JobState.CANCELLED}
    finally:
        backend.close()


def test_bare_pull_skips_big_files_then_full_pull_brings_them(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    app = (proj / "app.py").read_text()
    big = '    (out / "big.bin").write_bytes(b"x" * 200_000)\n    import helper\n'
    (proj / "app.py").write_text(app.replace("    import helper\n", big, 1))
    proc, sweep = launch(ssh_env, proj, "bare", "x=1", wait=False)
    assert proc.returncode == 0, proc.stderr
    pull_until_done(sweep, pull_filter=PullFilter(max_size_bytes=10_000))
    job = sweep / "0"
    assert (job / "result.json").exists() and (job / ".launcher" / "result.pkl").exists()
    assert not (job / "big.bin").exists()
    assert rows(sweep)[0].pull_mode == "bare"
    pull_until_done(sweep)
    assert (job / "big.bin").stat().st_size == 200_000
    assert rows(sweep)[0].pull_mode == "full"


def test_two_hosts_share_the_jobs_by_slots(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    server = ssh_env.server
    proj = make_project(tmp_path / "proj")
    hosts = f"[{{host:{server.alias(USERS[0])},max_parallel:2}},{{host:{server.alias(USERS[1])},max_parallel:1}}]"
    connections = server.connections()
    proc, sweep = launch(ssh_env, proj, "two-hosts", "x=range(6)", "sleep=0.6", hosts=hosts)
    assert proc.returncode == 0, proc.stderr
    returns = [result(sweep, n).return_value for n in range(6)]
    by_user: dict[int, list[dict[str, Any]]] = {}
    for ret in returns:
        by_user.setdefault(ret["uid"], []).append(ret)
    assert sorted(len(v) for v in by_user.values()) == [2, 4]  # spread 2:1 like the slots
    assert len(by_user[uid(USERS[0])]) == 4
    for user, limit in ((USERS[0], 2), (USERS[1], 1)):
        jobs = by_user[uid(user)]
        overlap = max(sum(1 for o in jobs if o["started"] < j["ended"] and j["started"] < o["ended"]) for j in jobs)
        assert overlap <= limit, f"{user} ran {overlap} jobs at once with max_parallel={limit}"
    hosts_in_store = {row.host for row in rows(sweep)}
    assert hosts_in_store == {server.alias(USERS[0]), server.alias(USERS[1])}
    assert server.connections() - connections == 2  # one per host


def test_proxyjump_from_ssh_config_carries_every_command(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    """``<server>-jump`` is user 2 reached through user 1 (``ProxyJump`` in the ssh_config)."""
    server = ssh_env.server
    proj = make_project(tmp_path / "proj")
    connections = server.connections()
    proc, sweep = launch(ssh_env, proj, "jump", "x=1,2", hosts=f"[{server.root.name}-jump]", max_parallel=2)
    assert proc.returncode == 0, proc.stderr
    assert {result(sweep, n).return_value["uid"] for n in range(2)} == {uid(USERS[1])}
    assert server.connections() - connections == 2  # the jump host and, through it, the target: once each


def test_snapshot_isolation_running_job_keeps_its_code(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    go = shared_dir("hrl-go") / "go"
    # max_parallel=2: both sweeps share the host's slots (same remote_dir), A's job holds one
    proc_a, sweep_a = launch(ssh_env, proj, "iso-a", "x=1", f"wait_for={go}", wait=False, remote="iso", max_parallel=2)
    assert proc_a.returncode == 0, proc_a.stderr
    # the code changes while the job of sweep A waits; sweep B ships the new code
    (proj / "helper.py").write_text('VERSION = "v2"\n')
    proc_b, sweep_b = launch(ssh_env, proj, "iso-b", "x=2", remote="iso", max_parallel=2)
    assert proc_b.returncode == 0, proc_b.stderr
    assert result(sweep_b, 0).return_value["helper"] == "v2"
    go.write_text("go")
    pull_until_done(sweep_a)
    assert result(sweep_a, 0).return_value["helper"] == "v1"  # imported after the edit: its snapshot is frozen

    snapshots = sorted((ssh_env.remote_path("iso") / "snapshots").glob("*/*/"))
    assert len(snapshots) == 2
    first, second = (s / "app.py" for s in snapshots)
    assert first.stat().st_ino == second.stat().st_ino  # unchanged files are hard links (--link-dest)
    assert (snapshots[0] / "helper.py").stat().st_ino != (snapshots[1] / "helper.py").stat().st_ino


def test_failures_come_back_with_their_logs(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    proc, sweep = launch(ssh_env, proj, "failures", "x=1,2,3", "raise_on=[2]", "exit_on=[3]", max_parallel=3)
    assert proc.returncode != 0  # Hydra reports the failed job, as with any launcher
    assert "bad x=2" in proc.stderr
    got = outcomes(sweep)
    assert got[0][0] is JobState.COMPLETED
    assert got[1] == (JobState.FAILED, "ValueError: bad x=2")
    assert got[2][0] is JobState.FAILED and "exited with code 3 without writing a result" in (got[2][1] or "")
    failed = result(sweep, 1)
    assert failed.status.name == "FAILED" and isinstance(failed._return_value, ValueError)
    assert "bad x=2" in (sweep / "1" / ".launcher" / "stderr.log").read_text()  # traceback pulled home
    assert "job 3 exits hard" in (sweep / "2" / ".launcher" / "stderr.log").read_text()
    assert not (sweep / "2" / ".launcher" / "result.pkl").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_orphans_left_by_a_finished_job_are_killed(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    proc, sweep = launch(ssh_env, proj, "orphans", "orphan=plain,stubborn", max_parallel=2, kill_grace_s=1)
    assert proc.returncode == 0, proc.stderr
    for num in range(2):
        pid = int((sweep / str(num) / "orphan.pid").read_text())
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"orphan {pid} of job {num} survived"
    assert {s for s, _ in states(sweep).values()} == {JobState.PULLED}


def test_unknown_host_key_is_refused_and_accept_new_is_opt_in(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    server = ssh_env.server
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host newhost\n  HostName 127.0.0.1\n  Port {server.port}\n  User {USERS[0]}\n"
        f"  IdentityFile {server.root / 'id_client'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
        # a user config asking for no checks is overridden: keys are always verified
        "  StrictHostKeyChecking no\n"
    )
    proj = make_project(tmp_path / "proj")
    connections = server.connections()
    tic = time.monotonic()
    proc, sweep = launch(ssh_env, proj, "hostkey", "x=1", hosts="[newhost]", ssh_config=config, retries=3)
    assert proc.returncode != 0
    assert "host key verification failed" in proc.stderr and "accept_new_host_keys" in proc.stderr
    assert str(known) in proc.stderr
    assert time.monotonic() - tic < 30 and server.connections() - connections == 1  # not retried
    assert known.read_text() == ""
    assert not ssh_env.remote_path("hostkey").exists()
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}

    proc, sweep = launch(
        ssh_env, proj, "hostkey", "x=1", hosts="[newhost]", ssh_config=config, accept_new_host_keys=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "127.0.0.1" in known.read_text()
    assert result(sweep, 0).return_value["x"] == 1


INJECTION_VALUES = [
    "two  spaces and\ttab",
    "it's \"quoted\" 'both'",
    "$(touch {canary})",
    "`touch {canary}`",
    "; touch {canary}; echo",
    "a && touch {canary} || true | cat > {canary}",
    "line one\nline two $HOME",
]


@pytest.mark.parametrize("subdir", ["${hydra.job.num}", "${hydra.job.override_dirname}"])
def test_override_values_reach_the_task_verbatim_and_run_nothing(
    ssh_env: SSHTestEnv, tmp_path: Path, subdir: str
) -> None:
    canary = shared_dir("hrl-canary") / "canary"
    values = [v.format(canary=canary) for v in INJECTION_VALUES]
    if "override_dirname" in subdir:  # these values become directory names: no newline there
        values = [v for v in values if "\n" not in v]

    def quoted(value: str) -> str:  # Hydra's quoted-string syntax (the values hold no backslash)
        return "'" + value.replace("'", "\\'") + "'"

    proj = make_project(tmp_path / "proj")
    sweep_arg = "text=" + ",".join(quoted(v) for v in values)
    proc, sweep = launch(
        ssh_env, proj, f"inject-{len(values)}", sweep_arg, f"hydra.sweep.subdir={subdir}", max_parallel=4
    )
    assert proc.returncode == 0, proc.stderr
    assert len(rows(sweep)) == len(values)
    texts = []
    for row in rows(sweep):
        with open(row.output_dir / ".launcher" / "result.pkl", "rb") as f:
            texts.append(cloudpickle.load(f).return_value["text"])
        assert json.loads((row.output_dir / "result.json").read_text())["text"] == texts[-1]
    assert sorted(texts) == sorted(values)
    # the canary path is the same on the launching side and the host (one machine): neither ran it
    assert not canary.exists()
