"""``launcher-core clean`` and ``pull --clean`` against the real loopback sshd (tests/sshd.py).

A detached sweep of three jobs: #0 pulled in full, #1 pulled ``--bare``, #2 still running (it
sleeps). The commands run as separate processes, as a user runs them; the test looks at the
files on the "host" (the test user's home) and the rows of the state store.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher_core.backends import backend_for_meta
from launcher_core.collect.pull import poll_into_store
from launcher_core.jobs import JobState, PullFilter
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.sshd import SSHTestEnv
from tests.test_pull import blob_project, blob_sha, cli, launch_detached, rows

pytestmark = pytest.mark.ssh


def clean_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m launcher_core clean ...`` without a terminal (stdin is /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "launcher_core", "clean", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _pull_first_two(sweep: Path) -> None:
    """#0 in full and #1 bare, with the stored backend, as the pull daemon does for a sweep."""
    with StateStore.for_sweep_dir(sweep) as store:
        backend = backend_for_meta(store.meta())
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                poll_into_store(backend, store)
                if [r.state for r in store.jobs()][:2] == [JobState.COMPLETED] * 2:
                    break
                time.sleep(0.3)
            first, second = store.jobs()[:2]
            assert [first.state, second.state] == [JobState.COMPLETED] * 2
            backend.fetch({first.job_id: first.handle}, {first.job_id: first.output_dir})
            store.mark_pulled([first.job_id], "full")
            bare = PullFilter(max_size_bytes=100 * 1024)
            backend.fetch({second.job_id: second.handle}, {second.job_id: second.output_dir}, bare)
            store.mark_pulled([second.job_id], "bare")
        finally:
            backend.close()


def test_clean_deletes_only_what_is_safely_home_then_pull_clean_finishes_the_sweep(
    ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    proj = blob_project(tmp_path / "proj")
    sweep = launch_detached(
        ssh_env,
        proj,
        "clean",
        "hydra.sweeper.paired=[[x,sleep]]",
        "x=1,2,3",
        "sleep=0,0,12",
        "blob_kb=300",
        max_parallel=3,
    )
    _pull_first_two(sweep)
    jobs = rows(sweep)
    remote_jobs = [Path(r.handle["remote_job_dir"]) for r in jobs]
    remote_sweep = Path(jobs[0].handle["remote_sweep_dir"])
    snapshots = Path(jobs[0].handle["remote_cwd"]).parent
    remote_root = Path(jobs[0].handle["remote_dir"])
    assert remote_root == ssh_env.remote_path("clean") and remote_sweep.is_relative_to(remote_root / "runs")
    assert all(d.is_dir() for d in remote_jobs) and snapshots.is_dir()

    refused = clean_cli(str(sweep))  # no terminal, no --yes: refuses, deletes nothing
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert str(remote_jobs[0]) in refused.stdout  # but it showed what it would delete
    assert remote_jobs[0].is_dir()

    dry = clean_cli(str(sweep), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{ssh_env.server.alias()}: 1 jobs" in dry.stdout and str(remote_jobs[0]) in dry.stdout
    assert "kept 1 jobs: pulled --bare" in dry.stdout and "(not pulled)" in dry.stdout
    assert str(remote_jobs[1]) not in dry.stdout and str(remote_jobs[2]) not in dry.stdout
    assert "nothing was deleted" in dry.stdout and remote_jobs[0].is_dir()
    assert all(r.cleaned_at is None for r in rows(sweep))

    done = clean_cli(str(sweep), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cleaned 1 of 1 jobs" in done.stdout
    assert not remote_jobs[0].exists()
    assert (remote_jobs[1] / "blob.bin").is_file()  # bare pull: its big file exists only there
    assert (remote_jobs[2] / ".launcher").is_dir()  # not pulled (still running)
    assert snapshots.is_dir() and remote_sweep.is_dir()  # sweep-level files wait for every job
    assert load_job_return(sweep / "0" / ".launcher" / "result.pkl").return_value["x"] == 1
    assert hashlib.sha256((sweep / "0" / "blob.bin").read_bytes()).hexdigest() == blob_sha(1, 300)
    cleaned_at = {r.idx: r.cleaned_at for r in rows(sweep)}
    assert cleaned_at[0] is not None and cleaned_at[1] is None and cleaned_at[2] is None

    again = clean_cli(str(sweep), "--yes")  # nothing new: a no-op
    assert again.returncode == 0 and "nothing to clean" in again.stdout
    assert {r.idx: r.cleaned_at for r in rows(sweep)} == cleaned_at

    status = cli("status", str(sweep), "--offline")
    lines = [ln for ln in status.stdout.splitlines() if "x=" in ln]
    assert "completed (pulled, cleaned)" in lines[0] and "(pulled)" in lines[1] and "cleaned" not in lines[1]

    bare = clean_cli(str(sweep), "--yes", "--include-bare")
    assert bare.returncode == 0, bare.stdout + bare.stderr
    assert not remote_jobs[1].exists() and (remote_jobs[2] / ".launcher").is_dir()
    assert (sweep / "1" / "result.json").exists()  # local files untouched

    # the last job: the pull daemon pulls it, cleans it, and with that the whole sweep
    pulled = cli(str(sweep), "--clean", "--interval", "0.5", module="launcher_core.pull", timeout=180)
    assert pulled.returncode == 0, pulled.stderr
    assert [(r.state, r.cleaned_at is not None) for r in rows(sweep)] == [(JobState.PULLED, True)] * 3
    assert not remote_jobs[2].exists() and not remote_sweep.exists() and not snapshots.exists()
    assert not (remote_root / "runs" / "multirun").exists()  # emptied parents went too
    assert (remote_root / "slots").is_dir()  # shared with other sweeps: kept
    assert load_job_return(sweep / "2" / ".launcher" / "result.pkl").return_value["x"] == 3
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        assert store.meta().get("backend_cleaned_at")
    final = clean_cli(str(sweep), "--yes")
    assert final.returncode == 0 and "nothing to clean" in final.stdout
