"""The spill launcher moving jobs that wait in Slurm's queue to the next target, on the real test
cluster (tests/slurm_cluster.py) and local_pool (loopback only).

Slurm is made to queue for real: a maintenance reservation over the whole node (made by the test,
deleted in a ``finally``) keeps every task the launch submits ``PENDING`` (the partition stays
``up``, so the target's pre-flight passes). The Slurm target comes first in ``targets``, so the
first jobs are placed there; with ``max_queue_wait_min: 0.05`` (3 s) they are taken back and run
on local_pool. Each job records its start and end in one file outside the job dirs (the app of
tests/test_spill.py), so a test counts executions per job; ``sacct`` is asked independently of
the launcher what Slurm did with each task.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher_core import results as res
from launcher_core.controller import TEST_KILL_AFTER_WITHDRAW_ENV
from launcher_core.jobs import JobState
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.slurm_cluster import SlurmCluster
from tests.test_spill import (
    ROOT,
    _argv,
    _done,
    _lines,
    _local_preset,
    _output,
    _project,
    _rows,
    _slurm_preset,
    _starts,
    _targets,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(240)]

WAIT_MIN = 0.05  # max_queue_wait_min: 3 s
RESERVATION = "hrl-spill-moves"


@pytest.fixture(name="queued_slurm")
def queued_slurm_fixture(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The test cluster with its node reserved for maintenance: jobs are accepted and pend
    (``ReqNodeNotAvail, Reserved for maintenance``) until the reservation is deleted."""
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    slurm_cluster.run(
        "scontrol",
        "create",
        "reservation",
        f"ReservationName={RESERVATION}",
        "StartTime=now",
        "Duration=30",
        "Nodes=ALL",
        f"Users={user}",
        "Flags=MAINT,IGNORE_JOBS",
    )
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.run("scontrol", "delete", f"ReservationName={RESERVATION}", check=False)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", TEST_KILL_AFTER_WITHDRAW_ENV)}
    env.update(extra)
    return env


def _run(argv: list[str], cwd: Path, timeout: float = 150, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(**env)
    )


def _moved(sweep_dir: Path) -> dict[int, list[str]]:
    """Job number -> where it was taken back from (``slurm_t/12_0``), from the state store."""
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        idx = {r.job_id: r.idx for r in store.jobs()}
        return {idx[j]: places for j, places in store.moves().items()}


def _open_moves(sweep_dir: Path) -> int:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return len(store.open_moves())


def _sacct(cluster: SlurmCluster, since: str) -> dict[str, tuple[str, str, str]]:
    """Every array task Slurm accounted for since ``since``: ``{task: (state, node list, work dir)}``."""
    out = cluster.run("sacct", "-X", "-n", "-P", "-S", since, "-o", "JobID,State,NodeList,WorkDir").stdout
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {job: (state.split()[0], nodes, workdir) for job, state, nodes, workdir in rows}


def _slurm_tasks_of(cluster: SlurmCluster, since: str, proj: Path) -> dict[str, tuple[str, str]]:
    """The tasks this test's launches submitted (their work dir is the test's project)."""
    return {job: (state, nodes) for job, (state, nodes, wd) in _sacct(cluster, since).items() if wd == str(proj)}


def _since() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))


def _setup(tmp_path: Path, slurm_jobs: int) -> tuple[Path, Path, Path, str]:
    proj = _project(tmp_path / "proj")
    _local_preset(proj, "loc_a", n_jobs=2)
    _slurm_preset(proj, "slurm_t", parallel=slurm_jobs)
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    targets = _targets(
        f"{{cluster: slurm_t, max_jobs: {slurm_jobs}, max_queue_wait_min: {WAIT_MIN}}}",
        "{cluster: loc_a, max_jobs: 2}",
    )
    return proj, record, sweep_dir, targets


def _assert_ran_once_on_local(record: Path, sweep_dir: Path, n_jobs: int) -> None:
    assert _starts(record) == dict.fromkeys(range(n_jobs), 1), _lines(record)
    done = _done(record)
    assert sorted(done) == list(range(n_jobs))
    assert {n: where for n, (_a, where, _t0, _t1) in done.items()} == dict.fromkeys(range(n_jobs), ROOT)
    assert {r.state for r in _rows(sweep_dir).values()} == {JobState.PULLED}
    table = res.load(sweep_dir)
    assert [row.num for row in table] == list(range(n_jobs))
    for row in table:
        assert row.state == "completed", row
        assert row.where == "loc_a", row
        assert row.host is not None and row.host.startswith("loc_a/"), row.host
    for n in range(n_jobs):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value == {"num": n, "where": ROOT, "attempt": 1}


def _assert_never_started(tasks: dict[str, tuple[str, str]], moved: dict[int, list[str]]) -> None:
    """Every task Slurm got is one of the moved jobs', cancelled without ever getting a node."""
    places = sorted(p.removeprefix("slurm_t/") for ps in moved.values() for p in ps)
    assert sorted(tasks) == places, (tasks, moved)
    for task, (state, nodes) in tasks.items():
        assert (state, nodes) == ("CANCELLED", "None assigned"), (task, tasks)


# --- 1. jobs waiting in Slurm's queue move to local_pool ----------------------------------------
def test_jobs_pending_in_slurm_move_to_the_next_target_and_run_there_once(
    queued_slurm: SlurmCluster, tmp_path: Path
) -> None:
    """Six jobs over slurm_t (3 slots, its queue does not move) then loc_a (2): the three jobs
    placed on Slurm are taken back after 3 s (never started: sacct says CANCELLED with no node)
    and run on loc_a, once each, like every other job; slurm_t gets no job after that."""
    n_jobs, slurm_jobs = 6, 3
    proj, record, sweep_dir, targets = _setup(tmp_path, slurm_jobs)
    since = _since()
    proc = _run(_argv(proj, sweep_dir, record, targets, n_jobs, 0.5), proj)
    assert proc.returncode == 0, _output(proc)

    _assert_ran_once_on_local(record, sweep_dir, n_jobs)
    moved = _moved(sweep_dir)
    assert sorted(moved) == list(range(slurm_jobs)), moved  # the first jobs were placed on Slurm
    assert all(len(places) == 1 and re.fullmatch(r"slurm_t/\d+_\d+", places[0]) for places in moved.values())
    assert _open_moves(sweep_dir) == 0
    _assert_never_started(_slurm_tasks_of(queued_slurm, since, proj), moved)

    said = proc.stdout + proc.stderr  # Hydra's log goes to stdout, the per-target table to stderr
    assert re.search(
        r"spill: \d jobs waited over 0\.05 min in the queue of target slurm_t \(slurm\): moved to other targets; "
        r"it takes no new jobs until one of its jobs starts",
        said,
    ), _output(proc)
    taken = [int(n) for n in re.findall(r"(\d+) jobs that waited too long in a queue were taken back", said)]
    assert sum(taken) == slurm_jobs, _output(proc)
    # the per-target table: nothing more was placed on slurm_t once it gave jobs back
    assert re.search(r"slurm_t\s+3 placed, 0 running, 0 done, 3 moved away", proc.stderr), proc.stderr[-3000:]
    assert re.search(r"loc_a\s+6 placed, 0 running, 6 done", proc.stderr), proc.stderr[-3000:]


# --- 2. the launching process killed -9 in the middle of a move ----------------------------------
def test_kill_9_between_withdrawal_and_closing_the_move_then_relaunch(
    queued_slurm: SlurmCluster, tmp_path: Path
) -> None:
    """The worst window of a move: Slurm has cancelled the task (withdraw returned) but the state
    store still holds the job with its Slurm handle and the move open. The launcher is killed -9
    right there (test hook); the same command then finishes the move first (its log says so),
    runs the job on loc_a, and every job runs exactly once; Slurm never started any task."""
    n_jobs, slurm_jobs = 5, 2
    proj, record, sweep_dir, targets = _setup(tmp_path, slurm_jobs)
    argv = _argv(proj, sweep_dir, record, targets, n_jobs, 0.5)
    since = _since()

    killed = _run(argv, proj, **{TEST_KILL_AFTER_WITHDRAW_ENV: "1"})

    assert killed.returncode == -9, _output(killed)
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        open_moves = store.open_moves()
        rows = {r.job_id: r for r in store.jobs()}
        assert store.moves() == {}  # none closed
    assert open_moves, "the kill came before any move was recorded"
    for job_id, handle in open_moves.items():  # still placed on Slurm as far as the store knows
        assert rows[job_id].handle == handle and rows[job_id].state in (JobState.SUBMITTED, JobState.RUNNING)
        assert handle["target"] == "slurm_t"
    cancelled = _slurm_tasks_of(queued_slurm, since, proj)
    for handle in open_moves.values():  # the queue no longer holds them: withdraw had returned
        assert cancelled[handle["inner"]["slurm_job_id"]] == ("CANCELLED", "None assigned"), cancelled
    assert not any(w[1] in {str(rows[j].idx) for j in open_moves} for w in _lines(record)), _lines(record)

    again = _run(argv, proj)

    assert again.returncode == 0, _output(again)
    said = again.stdout + again.stderr
    n_open = len(open_moves)
    assert (
        f"finished moving {n_open} jobs an interrupted launch began moving: {n_open} taken back, "
        "0 stay where they are" in said
    ), _output(again)
    _assert_ran_once_on_local(record, sweep_dir, n_jobs)
    moved = _moved(sweep_dir)
    assert sorted(moved) == list(range(slurm_jobs)), moved
    assert {rows[j].idx for j in open_moves} <= set(moved)
    assert all(len(places) == 1 for places in moved.values()), moved  # each job moved once
    assert _open_moves(sweep_dir) == 0
    _assert_never_started(_slurm_tasks_of(queued_slurm, since, proj), moved)
