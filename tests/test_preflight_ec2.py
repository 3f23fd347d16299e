"""Pre-flight of ec2 against the moto server (tests/ec2_fixtures.py): a missing AMI, bucket,
instance profile or instance type, and missing credentials, are refused before anything is
uploaded or started (no instance, no S3 object, every job pending); ``launcher-core cluster
test`` of a good preset passes every check, the bucket's write included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from tests.ec2_fixtures import REGION, AwsWorld, multirun, rows
from tests.test_clusters import cli_main_with

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]


def _refused(aws: AwsWorld, tmp_path: Path, **settings: Any) -> str:
    sweep = tmp_path / "sweep"
    with pytest.raises(ConfigError) as info:
        multirun(sweep, aws.launcher_settings(**settings), ["x=1,2"])
    assert aws.instances() == {} and aws.s3_objects() == {}
    assert {row.state for row in rows(sweep).values()} == {JobState.PENDING}
    message = str(info.value)
    assert "pre-flight check failed" in message and "none of the 2 jobs was started" in message
    return message


@pytest.mark.timeout(120)
def test_a_missing_ami_bucket_profile_and_instance_type_are_refused(aws: AwsWorld, tmp_path: Path) -> None:
    message = _refused(
        aws,
        tmp_path,
        ami="ami-0123456789abcdef0",
        s3_bucket="hrl-no-such-bucket",
        iam_instance_profile="hrl-no-such-profile",
        instance_type="z9.mega",
    )
    host = f"ec2 {REGION}"
    assert f"{host}: ami: hydra.launcher.ami='ami-0123456789abcdef0' does not exist in region {REGION}" in message
    assert "fix: use an AMI id of this region" in message
    assert f"{host}: bucket: hydra.launcher.s3_bucket='hrl-no-such-bucket' cannot be reached" in message
    profile = "hydra.launcher.iam_instance_profile='hrl-no-such-profile'"
    assert f"{host}: instance profile: {profile} does not exist" in message
    assert f"{host}: instance type: hydra.launcher.instance_type='z9.mega' is not offered in {REGION}" in message


@pytest.mark.timeout(120)
def test_missing_credentials_are_refused(aws: AwsWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    message = _refused(aws, tmp_path)
    assert f"ec2 {REGION}: credentials: no AWS credentials found" in message
    assert "fix: run `aws configure`" in message


@pytest.mark.timeout(120)
def test_cluster_test_of_a_good_ec2_preset_passes_every_check(
    aws: AwsWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = aws.launcher_settings()
    keys = ("ami", "s3_bucket", "region", "instance_type", "iam_instance_profile", "endpoint_url", "subnet_id")
    overrides = [f"{k}={settings[k]}" for k in keys] + ["setup_commands=[]", "security_group_ids=[]"]
    assert cli_main_with(tmp_path / "home", ["cluster", "test", "ec2_spot", *overrides]) == 0
    table = capsys.readouterr().out
    for needle in ("credentials", f"{aws.ami}", f"s3://{aws.bucket}/sweeps is writable", "t3.micro is offered"):
        assert needle in table, table
    assert "fail" not in table
    assert aws.s3_objects() == {}  # the write probe was deleted
