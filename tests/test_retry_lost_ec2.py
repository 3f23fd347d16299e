"""ec2: a job lost with its instance (AWS reclaims a spot instance) runs again on a new instance;
the job that had finished on it does not (docs/guarantees.md, "Jobs lost to the machine run
again"). moto on loopback and locally run instance agents (tests/ec2_fixtures.py); the spot
interruption notice is what AWS's metadata service would serve (the fixture's stand-in)."""

from __future__ import annotations

import threading

import pytest
from hydra.core.utils import JobStatus

from launcher_core.state import StateStore
from tests.ec2_fixtures import (  # noqa: F401  (fixtures)
    AwsWorld,
    aws_fixture,
    marker_count,
    metadata_server_fixture,
    moto_server_fixture,
    multirun,
    rows,
    wait_for,
)

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
