"""ec2: a job lost with its instance (AWS reclaims a spot instance) runs again on a new instance;
the job that had finished on it does not (docs/guarantees.md, "Jobs lost to the machine run
again"). moto on loopback and locally run instance agents (tests/ec2_fixtures.py); the spot
interruption notice is what AWS's metadata service would serve (the fixture's stand-in)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.ec2_fixtures import AwsWorld, marker_count, multirun, rows, stored_backend, wait_for

pytestmark = [pytest.mark.ec2, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


def test_a_job_lost_to_a_spot_interruption_runs_again_on_a_new_instance(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    launcher = aws.launcher_settings(spot=True, max_price=0.05, jobs_per_instance=2, wait=True)

    def interrupt_once_the_short_job_is_done() -> None:
        wait_for(lambda: marker_count(aws, ".done") >= 1, 90, "the short job to finish")
        (iid,) = aws.instances()
        aws.metadata.set_spot_action(iid)  # AWS reclaims the instance: the long job is stopped

    interrupter = threading.Thread(target=interrupt_once_the_short_job_is_done, daemon=True)
    interrupter.start()
    # x=1 sleeps 1.5 s, x=8 sleeps 12 s (seconds * x)
    returns = multirun(sweep_dir, launcher, ["x=1,8"], mode="sleep", seconds=1.5)
    interrupter.join(5)
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.COMPLETED]
    assert len(aws.instances()) == 2  # the reclaimed one and one for the retry: nothing else
    job_rows = rows(sweep_dir)
    assert (job_rows[0].attempt, job_rows[1].attempt) == (1, 2)
    assert job_rows[0].handle["instance_id"] != job_rows[1].handle["instance_id"]
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        earlier = store.attempts()
    assert list(earlier) == [job_rows[1].job_id]
    (first,) = earlier[job_rows[1].job_id]
    assert (first.attempt, first.ending) == (1, "lost: instance terminated by AWS")
    assert first.exit_reason.startswith("spot interruption")
    aws.runner.wait_idle(30)


def test_jobs_of_an_instance_terminated_from_outside_run_again_on_a_new_instance(aws: AwsWorld) -> None:
    """Someone terminates the instance (the console, another tool: TerminateInstances, state
    reason Client.UserInitiatedShutdown) while two of its three jobs run: those two run again,
    together on one new instance; the one that had finished does not. The side-effect counter is
    a file outside every job dir, written by the tasks themselves."""
    sweep_dir = aws.tmp / "sweep"
    counter = aws.tmp / "counter.log"
    launcher = aws.launcher_settings(jobs_per_instance=3, wait=True)

    def terminate_once_the_short_job_is_done() -> None:
        wait_for(lambda: marker_count(aws, ".done") >= 1, 90, "the short job to finish")
        wait_for(lambda: _lines(counter).count("start x=6 attempt=1") == 1, 30, "the long jobs to start")
        (iid,) = aws.instances()
        ec2 = aws.client("ec2")
        try:
            ec2.terminate_instances(InstanceIds=[iid])  # from outside the launcher
        finally:
            ec2.close()

    terminator = threading.Thread(target=terminate_once_the_short_job_is_done, daemon=True)
    terminator.start()
    # x=1 sleeps 1 s; x=6 and x=7 sleep 6 and 7 s (seconds * x)
    returns = multirun(sweep_dir, launcher, ["x=1,6,7"], mode="sleep", seconds=1.0, counter=str(counter))
    terminator.join(5)
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 3
    assert [r.return_value["x"] for r in returns] == [1, 6, 7]

    instances = aws.instances()
    assert len(instances) == 2  # the terminated one and one for both retries: nothing else
    job_rows = rows(sweep_dir)
    assert [job_rows[i].attempt for i in range(3)] == [1, 2, 2]
    first_iid = job_rows[0].handle["instance_id"]
    retry_iid = job_rows[1].handle["instance_id"]
    assert job_rows[2].handle["instance_id"] == retry_iid != first_iid
    assert set(instances) == {first_iid, retry_iid}
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        earlier = store.attempts()
    assert sorted(earlier) == sorted([job_rows[1].job_id, job_rows[2].job_id])
    for job_id in earlier:
        (first,) = earlier[job_id]
        assert (first.attempt, first.ending) == (1, "lost: instance terminated outside the launcher")
        assert f"instance {first_iid} is terminated" in first.exit_reason

    lines = _lines(counter)
    assert sorted(lines) == sorted(
        [
            "start x=1 attempt=1",
            "end x=1",  # finished on the first instance: never run again
            "start x=6 attempt=1",
            "start x=7 attempt=1",  # killed with their instance: no end
            "start x=6 attempt=2",
            "end x=6",
            "start x=7 attempt=2",
            "end x=7",
        ]
    ), lines
    aws.runner.wait_idle(30)


def test_the_launchers_own_terminations_are_never_taken_as_lost(aws: AwsWorld) -> None:
    """An instance the launcher terminates (cancel, a failed launch, stray cleanup: all through
    Fleet.terminate) is tagged first, so its unfinished jobs read as failed, never lost; the same
    terminate call without the tag reads as lost. Polled with the stored config, as the pull
    daemon does."""
    from launcher_core.jobs import Ending

    sweep_dir = aws.tmp / "sweep"
    multirun(sweep_dir, aws.launcher_settings(wait=False), ["x=5"], mode="sleep", seconds=60.0)
    wait_for(lambda: marker_count(aws, ".running") >= 1, 60, "the job to start")
    backend = stored_backend(sweep_dir)
    try:
        handles = {r.job_id: r.handle for r in rows(sweep_dir).values()}
        (iid,) = aws.instances()
        backend.terminate_instances([iid])  # what cancel and `cleanup --terminate` call
        wait_for(lambda: aws.instances()[iid]["State"]["Name"] == "terminated", 10, "the termination")
        (status,) = backend.poll(handles).values()
    finally:
        backend.close()
    assert status.state is JobState.FAILED and status.classified() is Ending.TASK_FAILED, status
    assert "Client.UserInitiatedShutdown" in (status.exit_reason or "")
    aws.runner.wait_idle(30)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
