"""Per-job instance types on ec2 (``resources_from.instance_type``) against moto, with the instance
agents run locally (tests/ec2_fixtures.py): jobs are grouped by the type their config asks for,
each group starts instances of that type, and a type that cannot be had stops the launch before
any upload or instance."""

from __future__ import annotations

import pytest
from hydra.core.utils import JobStatus

from launcher_core.backends.ec2.placement import plan_typed_groups
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobSpec
from tests.ec2_fixtures import AwsWorld, multirun, rows

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]

PER_JOB = {"resources_from": {"instance_type": "trainer.instance"}}


def test_jobs_run_on_instances_of_the_type_their_config_asks_for(aws: AwsWorld) -> None:
    """x=1,2 x trainer.instance=t3.micro,g4dn.xlarge, two jobs per instance: one instance of each
    type, each running the two jobs that asked for it."""
    sweep_dir = aws.tmp / "sweep"
    launcher = aws.launcher_settings(jobs_per_instance=2, **PER_JOB)
    returns = multirun(
        sweep_dir, launcher, ["x=1,2", "trainer.instance=t3.micro,g4dn.xlarge"], trainer={"instance": "t3.nano"}
    )

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 4
    instances = aws.instances()
    assert sorted(inst["InstanceType"] for inst in instances.values()) == ["g4dn.xlarge", "t3.micro"]
    asked = {0: "t3.micro", 1: "g4dn.xlarge", 2: "t3.micro", 3: "g4dn.xlarge"}  # the last key varies fastest
    for idx, row in rows(sweep_dir).items():
        assert row.overrides[1] == f"trainer.instance={asked[idx]}"
        assert instances[row.handle["instance_id"]]["InstanceType"] == asked[idx] == row.handle["instance_type"]
    assert len({row.handle["instance_id"] for row in rows(sweep_dir).values()}) == 2


def test_a_type_the_region_does_not_offer_is_refused_before_anything_is_started(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    launcher = aws.launcher_settings(**PER_JOB)
    with pytest.raises(Exception, match=r"resources_from.instance_type \(a job's\)='zz9.nosuch' is not offered"):
        multirun(sweep_dir, launcher, ["x=1", "trainer.instance=t3.micro,zz9.nosuch"], trainer={"instance": "t3.micro"})
    assert aws.instances() == {} and not any("/runs/" in key for key in aws.s3_objects())


@pytest.mark.parametrize(
    "value, message",
    [
        ("'t3.micro; reboot'", r"job #0 \(.*\): hydra.launcher.resources_from.instance_type: trainer.instance "
         r"must be an EC2 instance type like g5.xlarge"),
        ("null", r"trainer.instance is not set in the job's config"),
    ],
)
def test_an_invalid_or_missing_instance_type_is_refused_naming_job_and_key(
    aws: AwsWorld, value: str, message: str
) -> None:
    sweep_dir = aws.tmp / "sweep"
    with pytest.raises(ConfigError, match=message):
        multirun(sweep_dir, aws.launcher_settings(**PER_JOB), ["x=1", f"trainer.instance={value}"],
                 trainer={"instance": "t3.micro"})
    assert aws.instances() == {} and aws.s3_objects() == {}


def _specs(n: int) -> list[JobSpec]:
    from pathlib import Path

    return [JobSpec(str(i), i, [], Path(f"/s/{i}")) for i in range(n)]


def test_max_instances_holds_across_instance_types() -> None:
    """7 jobs of one type and 2 of another, one job per instance, at most 4 instances: every type
    keeps an instance and the others go where the queues are longest."""
    big, small = _specs(7), _specs(9)[7:]
    groups = plan_typed_groups([("g5.xlarge", big), ("t3.micro", small)], jobs_per_instance=1, max_instances=4)
    assert [(t, len(g)) for t, g in groups] == [("g5.xlarge", 3), ("g5.xlarge", 2), ("g5.xlarge", 2), ("t3.micro", 2)]
    assert [s.idx for _t, g in groups for s in g] == list(range(9))
    with pytest.raises(ConfigError, match=r"need 3 instance types .* more than hydra.launcher.max_instances=2"):
        plan_typed_groups([("a.x", big[:1]), ("b.x", big[1:2]), ("c.x", big[2:3])], 1, 2)
