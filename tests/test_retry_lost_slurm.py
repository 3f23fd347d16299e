"""slurm: a node failure while a job runs, on the real test cluster (tests/slurm_cluster.py).

The test node is set DOWN with ``scontrol`` while the job runs and resumed once Slurm has acted
on it, as an admin does after a node failure. Our scripts carry ``--requeue``, so Slurm requeues
the task itself and the launch follows it (attempt 1, ``SLURM_RESTART_COUNT`` 1); a task Slurm
does not requeue (``--no-requeue``) ends NODE_FAIL, is lost, and our retry runs it as attempt 2.
A task that raises is not run again. Each start and completion is a line in a record file outside
the job dirs (the app of tests/test_retry_lost.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher_core.backends.slurm.handle import SlurmHandle
from launcher_core.jobs import JobState
from launcher_core.runtime.worker import load_job_return
from tests.slurm_cluster import SlurmCluster
from tests.test_retry_lost import _events, _project, _row, _started

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _argv(proj: Path, sweep_dir: Path, record: Path, *extra: str, hold: str = "hold_on=[0]") -> list[str]:
    return [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={sweep_dir}",
        "x=0",
        f"record={record}",
        hold,
        *extra,
    ]


def _wait(what: str, check: Callable[[], object], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def _task_state(cluster: SlurmCluster, sweep_dir: Path) -> str:
    """The state slurmctld shows (``squeue -t all``) for the task of the sweep's job 0, or ``""``."""
    row, _earlier = _row(sweep_dir, 0)
    task = SlurmHandle.of(row.handle).slurm_job_id
    out = cluster.run("squeue", "-h", "-r", "-t", "all", "-o", "%i %T", check=False).stdout
    return next((words[1] for words in (line.split() for line in out.splitlines()) if words[0] == task), "")


def _raw_job_id(cluster: SlurmCluster, sweep_dir: Path) -> str:
    """Slurm's own job id of the task of the sweep's job 0 (``squeue %A``)."""
    task = SlurmHandle.of(_row(sweep_dir, 0)[0].handle).slurm_job_id
    out = cluster.run("squeue", "-h", "-r", "-t", "all", "-o", "%i %A", check=False).stdout
    (raw,) = [words[1] for words in (line.split() for line in out.splitlines()) if words[0] == task]
    return raw


def _steps_on_node(cluster: SlurmCluster, raw_job_id: str) -> list[Path]:
    """The step sockets slurmd keeps for the job (``<node>_<job>.<step>`` in its spool dir):
    there while a slurmstepd of the job lives."""
    return sorted((cluster.root / "spool").glob(f"*_{raw_job_id}.*"))


def _active_in(cluster: SlurmCluster, partition: str) -> list[str]:
    """The states of the jobs of ``partition`` still pending or running."""
    return cluster.run("squeue", "-h", f"--partition={partition}", "-o", "%T", check=False).stdout.split()


def _fail_the_node_while_job_0_runs(
    cluster: SlurmCluster, argv: list[str], cwd: Path, sweep_dir: Path, record: Path, acted: tuple[str, ...]
) -> str:
    """Launch; once job 0 runs, set the node DOWN; once slurmctld shows the task in one of the
    ``acted`` states (its answer to the node failure), resume the node (slurmd answers at once,
    and ReturnToService=2 may have returned it already); wait for the launch. Its stderr."""
    launch = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node = f"NodeName={cluster.hostname}"
    try:
        _wait("job 0 to start", lambda: _started(record, 0) or launch.poll() is not None)
        assert launch.poll() is None, launch.communicate()[1][-3000:]
        raw = _raw_job_id(cluster, sweep_dir)
        cluster.run("scontrol", "update", node, "State=DOWN", "Reason=hrl-test node failure")
        # the node stays out of service until nothing of the failed run is left on it, as a failed
        # node is until it is rebooted: slurmd answers at once here (ReturnToService=2 takes it
        # back), and a requeued task started there before the run's slurmstepd ended is refused
        # ("Duplicate jobid": the node drained, the task held)
        cluster.run("scontrol", "update", node, "State=DRAIN", "Reason=hrl-test node failure")
        _wait(f"slurmctld to show the task {' or '.join(acted)}", lambda: _task_state(cluster, sweep_dir) in acted, 60)
        _wait("the failed run's steps to end on the node", lambda: not _steps_on_node(cluster, raw), 60)
        cluster.run("scontrol", "update", node, "State=RESUME", check=False)
        _wait("the node back in service", lambda: cluster.node_state() in ("idle", "mixed", "allocated"), 60)
        try:
            _out, err = launch.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            launch.kill()
            err = launch.communicate()[1][-3000:]
            raise AssertionError(f"the launch did not end:\n{_slurm_view(cluster)}\n{err}") from None
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
        cluster.run("scontrol", "update", node, "State=RESUME", check=False)
    return err


def _slurm_view(cluster: SlurmCluster) -> str:
    """What Slurm says now (for a failure message): the node, the queue, accounting."""
    commands = [
        ("sinfo", "-N", "-o", "%N %T %E"),
        ("squeue", "-r", "-t", "all", "-o", "%i %T %r %S %V"),
        ("sacct", "-D", "-n", "-P", "-o", "JobID,State,ExitCode,Submit,Eligible,Start,End"),
    ]
    return "\n".join(f"$ {' '.join(c)}\n{cluster.run(*c, check=False).stdout}" for c in commands)


def test_slurm_node_failure_is_survived_by_slurms_requeue(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = _argv(proj, sweep_dir, record)
    err = _fail_the_node_while_job_0_runs(slurm_cluster, argv, proj, sweep_dir, record, ("PENDING", "REQUEUED"))
    row, earlier = _row(sweep_dir, 0)
    assert (row.outcome, row.attempt, earlier) == (JobState.COMPLETED, 1, []), err[-3000:]
    starts = [line.split() for line in record.read_text().splitlines() if line.startswith("start")]
    assert [(w[2], w[4]) for w in starts] == [("1", "0"), ("1", "1")]  # attempt 1: restarts 0 and 1
    assert _events(record)[("done", 0, "1")] == 1
    assert load_job_return(sweep_dir / "0" / ".launcher" / "result.pkl").return_value == {"x": 0, "attempt": 1}


def test_slurm_node_failure_of_a_task_slurm_does_not_requeue_is_retried(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = _argv(proj, sweep_dir, record, "+hydra.launcher.additional_parameters.no_requeue=true")
    err = _fail_the_node_while_job_0_runs(slurm_cluster, argv, proj, sweep_dir, record, ("NODE_FAIL",))
    row, earlier = _row(sweep_dir, 0)
    assert (row.outcome, row.attempt) == (JobState.COMPLETED, 2), err[-3000:]
    assert _events(record) == {("start", 0, "1"): 1, ("start", 0, "2"): 1, ("done", 0, "2"): 1}
    assert [(a.attempt, a.ending) for a in earlier] == [(1, "lost: node failure")]
    assert load_job_return(sweep_dir / "0" / ".launcher" / "result.pkl").return_value == {"x": 0, "attempt": 2}


def test_a_slurm_task_that_raises_is_not_retried(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = _argv(proj, sweep_dir, record, "raise_on=[0]", hold="hold_on=[]")
    proc = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert _events(record) == {("start", 0, "1"): 1}
    row, earlier = _row(sweep_dir, 0)
    assert (row.outcome, row.attempt, row.ending, earlier) == (JobState.FAILED, 1, "task failed", []), proc.stderr


def test_slurm_task_preempted_and_not_requeued_is_retried(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A job of a partition of a higher PriorityTier needs the whole node: Slurm cancels ours
    (PreemptMode=CANCEL: PREEMPTED, not requeued despite ``--requeue``), and our retry runs it as
    attempt 2 once the node is free again."""
    cluster = slurm_cluster
    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    urgent = "hrl-urgent"
    cluster.run("scontrol", "create", f"PartitionName={urgent}", f"Nodes={cluster.hostname}", "PriorityTier=10")
    launch = subprocess.Popen(
        _argv(proj, sweep_dir, record), cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait("job 0 to start", lambda: _started(record, 0) or launch.poll() is not None)
        assert launch.poll() is None, launch.communicate()[1][-3000:]
        cluster.run(
            "sbatch",
            f"--partition={urgent}",
            "--exclusive",
            "--output=/dev/null",
            "--job-name=hrl-urgent",
            "--wrap=sleep 3",
        )
        _out, err = launch.communicate(timeout=240)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
        cluster.run("scancel", f"--partition={urgent}", check=False)
        _wait("the urgent job to leave", lambda: not _active_in(cluster, urgent), 30)
        cluster.run("scontrol", "delete", f"PartitionName={urgent}", check=False)
    row, earlier = _row(sweep_dir, 0)
    assert (row.outcome, row.attempt) == (JobState.COMPLETED, 2), err[-3000:]
    assert _events(record) == {("start", 0, "1"): 1, ("start", 0, "2"): 1, ("done", 0, "2"): 1}
    assert [(a.attempt, a.ending) for a in earlier] == [(1, "lost: preempted")]
