"""ec2 backend: API faults, bad settings, credentials, stray instances (moto on loopback)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from launcher_core.backends.ec2 import (
    Ec2Backend,
    Ec2Settings,
    cleanup,
    find_stray_instances,
    main,
    plan_groups,
    root_volume_mapping,
)
from launcher_core.errors import BackendError, ConfigError
from launcher_core.jobs import JobSpec, JobState
from launcher_core.state import StateStore, SweepIndex
from tests.ec2_fixtures import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    REGION,
    TAG_SWEEP,
    AwsWorld,
    FaultProxy,
    credential_leaks,
    files_under,
    multirun,
    rows,
    wait_for,
)

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]


def _through_proxy(aws: AwsWorld, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> dict:
    """Settings whose EC2 calls go through the fault proxy (S3 straight to moto)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", proxy.url)
    return aws.launcher_settings(endpoint_url=None, **settings)


def test_throttled_run_instances_is_retried(
    aws: AwsWorld, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_proxy.fail("RunInstances", "RequestLimitExceeded", times=2)
    launcher = _through_proxy(aws, fault_proxy, monkeypatch)
    returns = multirun(aws.tmp / "sweep", launcher, ["x=1,2"])
    assert [r.return_value["x"] for r in returns] == [1, 2]
    assert fault_proxy.calls["RunInstances"] == 4  # two throttled, then one per instance
    assert len(aws.instances()) == 2  # ClientToken: a retry never starts a second instance


def test_capacity_error_after_retries_leaves_no_instance_running(
    aws: AwsWorld, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first instance starts, the second never gets capacity
    fault_proxy.fail("RunInstances", "InsufficientInstanceCapacity", times=100, after=1, status=500)
    launcher = _through_proxy(aws, fault_proxy, monkeypatch, api_retries=3)
    sweep_dir = aws.tmp / "sweep"
    with pytest.raises(BackendError, match=r"InsufficientInstanceCapacity.*instance_type") as err:
        multirun(sweep_dir, launcher, ["x=1,2"])
    assert "after 3 attempts" in str(err.value)
    assert fault_proxy.calls["RunInstances"] == 1 + 3
    assert len(aws.instances()) == 1
    wait_for(lambda: not aws.running_instances(), 10, "the started instance to be terminated")
    assert {row.state for row in rows(sweep_dir).values()} == {JobState.PENDING}  # nothing half launched


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ami": None}, "hydra.launcher.ami is required"),
        ({"ami": "ubuntu-22.04"}, "hydra.launcher.ami is required"),
        ({"s3_bucket": None}, "hydra.launcher.s3_bucket is required"),
        ({"s3_bucket": "Bad_Bucket"}, "hydra.launcher.s3_bucket is required"),
        ({"jobs_per_instance": 0}, "hydra.launcher.jobs_per_instance must be > 0"),
        ({"jobs_per_instance": 1.5}, "hydra.launcher.jobs_per_instance must be an integer"),
        ({"max_instances": -1}, "hydra.launcher.max_instances must be > 0"),
        ({"max_runtime_min": 0}, "hydra.launcher.max_runtime_min must be > 0"),
        ({"max_price": 0.1}, "hydra.launcher.max_price is set but hydra.launcher.spot is false"),
        ({"spot": "yes"}, "hydra.launcher.spot must be true or false"),
        ({"root_volume_gb": 0}, "hydra.launcher.root_volume_gb must be > 0"),
        ({"root_volume_gb": -8}, "hydra.launcher.root_volume_gb must be > 0"),
        ({"root_volume_gb": 20.5}, "hydra.launcher.root_volume_gb must be an integer"),
        ({"root_volume_gb": "20"}, "hydra.launcher.root_volume_gb must be an integer"),
        ({"root_volume_gb": True}, "hydra.launcher.root_volume_gb must be an integer"),
        ({"remote_dir": "/"}, "hydra.launcher.remote_dir must be an absolute directory"),
        ({"remote_dir": "~/runs"}, "hydra.launcher.remote_dir must be an absolute directory"),
        ({"remote_dir": "relative/dir"}, "hydra.launcher.remote_dir must be an absolute directory"),
        ({"remote_dir": "/tmp/$(reboot)"}, "hydra.launcher.remote_dir must be an absolute directory"),
        ({"env": {"AWS_SECRET_ACCESS_KEY": "x"}}, "credentials are never shipped to instances"),
        ({"env": {"aws_session_token": "x"}}, "credentials are never shipped to instances"),
        ({"env": {"1BAD": "x"}}, "is not a valid environment variable name"),
        ({"env": {"A; reboot": "x"}}, "is not a valid environment variable name"),
        ({"tags": {"aws:owner": "me"}}, "hydra.launcher.tags: 'aws:owner' is not allowed"),
        ({"tags": {"hydra-launcher:sweep-id": "x"}}, "is not allowed"),
        ({"security_group_ids": ["default"]}, "hydra.launcher.security_group_ids: 'default' is not a valid id"),
        ({"subnet_id": "my-subnet"}, "hydra.launcher.subnet_id: 'my-subnet' is not a valid id"),
        ({"endpoint_url": "ftp://example"}, "hydra.launcher.endpoint_url must be an http(s) URL"),
        ({"python": "  "}, "hydra.launcher.python must be a non-empty string"),
        ({"python": "python3 'unclosed"}, "hydra.launcher.python must be a command"),
        ({"setup_commands": "pip install x"}, "hydra.launcher.setup_commands must be a list"),
        ({"code_dir": "/no/such/dir"}, "hydra.launcher.code_dir must be an existing directory"),
        ({"bogus": 1}, "hydra.launcher.bogus is not a setting of the ec2 launcher"),
    ],
)
def test_bad_settings_are_rejected_naming_the_key(change: dict, message: str) -> None:
    values = {"ami": "ami-0123456789abcdef0", "s3_bucket": "my-sweeps", **change}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Ec2Settings.from_mapping(values)


def test_settings_take_keys_and_defaults_from_the_hydra_config() -> None:
    from hydra_plugins.remote_launcher.config import Ec2LauncherConf
    from launcher_core.settings import setting_names

    # (not issubclass: Hydra's plugin scan may import the config module a second time)
    assert [c.__name__ for c in Ec2Settings.__mro__[:2]] == ["Ec2Settings", "Ec2LauncherConf"]
    names = setting_names(Ec2LauncherConf)
    assert setting_names(Ec2Settings) == names and len(names) == 41
    values = {"ami": "ami-0123456789abcdef0", "s3_bucket": "my-sweeps"}
    built = Ec2Settings.from_mapping({**values, "_target_": "ignored"})
    defaults = Ec2LauncherConf()
    assert {n: getattr(built, n) for n in names} == {**{n: getattr(defaults, n) for n in names}, **values}
    stored = built.to_dict()
    assert list(stored) == names  # no _target_ in the state store
    assert Ec2Settings.from_mapping(stored) == built


def _nothing_launched(aws: AwsWorld) -> None:
    assert aws.instances() == {}
    assert aws.s3_objects() == {}


def test_bad_environment_fails_before_anything_is_launched(aws: AwsWorld) -> None:
    with pytest.raises(ConfigError, match="hydra.launcher.s3_bucket='no-such-bucket' cannot be (used|reached)"):
        multirun(aws.tmp / "s1", aws.launcher_settings(s3_bucket="no-such-bucket"), ["x=1"])
    with pytest.raises(ConfigError, match="hydra.launcher.ami='ami-0123456789abcdef0' does not exist"):
        multirun(aws.tmp / "s2", aws.launcher_settings(ami="ami-0123456789abcdef0"), ["x=1"])
    with pytest.raises(ConfigError, match="hydra.launcher.ami is required"):
        multirun(aws.tmp / "s3", aws.launcher_settings(ami=None), ["x=1"])
    _nothing_launched(aws)


def test_root_volume_smaller_than_the_ami_snapshot_fails_before_anything_is_launched(aws: AwsWorld) -> None:
    ec2 = aws.client("ec2")
    try:
        image = ec2.describe_images(ImageIds=[aws.ami])["Images"][0]
    finally:
        ec2.close()
    (snapshot_gb,) = [
        m["Ebs"]["VolumeSize"] for m in image["BlockDeviceMappings"] if m["DeviceName"] == image["RootDeviceName"]
    ]
    message = f"hydra.launcher.root_volume_gb={snapshot_gb - 1} is smaller than the root snapshot of {aws.ami}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        multirun(aws.tmp / "s1", aws.launcher_settings(root_volume_gb=snapshot_gb - 1), ["x=1"])
    _nothing_launched(aws)


def test_root_volume_mapping_targets_the_root_device_of_the_ami() -> None:
    image = {
        "ImageId": "ami-0123456789abcdef0",
        "RootDeviceName": "/dev/xvda",
        "RootDeviceType": "ebs",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8, "SnapshotId": "snap-1"}}],
    }
    assert root_volume_mapping(image, None) == []  # unset: the AMI's own mapping, nothing requested
    assert root_volume_mapping(image, 8) == [
        {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}}
    ]
    with pytest.raises(ConfigError, match=r"root_volume_gb=100 needs an EBS-backed AMI"):
        root_volume_mapping({**image, "RootDeviceType": "instance-store"}, 100)


def test_credentials_are_refused_before_they_leave_the_machine(aws: AwsWorld) -> None:
    with pytest.raises(ConfigError, match=r"hydra.launcher \(env_vars, .*\) contains your AWS credentials"):
        multirun(aws.tmp / "s1", aws.launcher_settings(env={"TOKEN": FAKE_SECRET_ACCESS_KEY}), ["x=1"])
    assert aws.instances() == {}
    code_dir = aws.tmp / "leaky-code"
    code_dir.mkdir()
    (code_dir / "settings.py").write_text(f"KEY = {FAKE_ACCESS_KEY_ID!r}\n")
    with pytest.raises(ConfigError, match="settings.py contains your AWS credentials"):
        multirun(aws.tmp / "s2", aws.launcher_settings(code_dir=str(code_dir)), ["x=1"])
    _nothing_launched(aws)
    # the overrides travel in the instance's plan (its job table), checked before any upload
    in_plan = r"the plan of instance group g000 \(job overrides\) contains your AWS credentials"
    with pytest.raises(ConfigError, match=in_plan):
        multirun(aws.tmp / "s3", aws.launcher_settings(), ["x=1", f"+secret='{FAKE_SECRET_ACCESS_KEY}'"])
    assert aws.instances() == {}
    assert not any("/runs/" in key for key in aws.s3_objects())  # no job payload, plan or user-data
    # What the launcher wrote: S3 objects, and the state stores of the first two sweeps (the third
    # records the overrides as typed, secret included; multirun.yaml is Hydra's, the code dir ours).
    written = dict(aws.s3_objects())
    written.update(files_under(*(aws.tmp / s / ".launcher" for s in ("s1", "s2"))))
    assert len(written) >= 4
    assert not credential_leaks(written)


def _tagged_instance(aws: AwsWorld, sweep_id: str) -> str:
    ec2 = aws.client("ec2")
    try:
        response = ec2.run_instances(
            ImageId=aws.ami,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": TAG_SWEEP, "Value": sweep_id}]}],
        )
        return response["Instances"][0]["InstanceId"]
    finally:
        ec2.close()


def _sweep_with_job(tmp: Path, index: SweepIndex, sweep_id: str, instance_id: str, state: JobState) -> None:
    sweep_dir = tmp / sweep_id
    spec = JobSpec(job_id=f"job-{sweep_id}", idx=0, overrides=["x=1"], output_dir=sweep_dir / "0")
    with StateStore.for_sweep_dir(sweep_dir) as store:
        store.add_jobs([spec])
        store.mark_submitted({spec.job_id: {"instance_id": instance_id}})
        if state is not JobState.SUBMITTED:
            store.update_states({spec.job_id: (state, None)})
    index.register(sweep_id, sweep_dir, "ec2")


def test_cleanup_reports_instances_of_finished_and_unknown_sweeps(
    aws: AwsWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.runner.stop()  # these instances are only for the report: nobody boots them
    home = aws.tmp / "home"
    index = SweepIndex(home)
    try:
        active = _tagged_instance(aws, "sweep-active")
        finished = _tagged_instance(aws, "sweep-finished")
        unknown = _tagged_instance(aws, "sweep-unknown")
        _sweep_with_job(aws.tmp, index, "sweep-active", active, JobState.RUNNING)
        _sweep_with_job(aws.tmp, index, "sweep-finished", finished, JobState.PULLED)
    finally:
        index.close()
    backend = Ec2Backend(Ec2Settings(region=REGION, endpoint_url=aws.moto_url))
    try:
        stray = {s.instance_id: s for s in find_stray_instances(backend, home)}
        assert set(stray) == {finished, unknown}
        assert stray[unknown].why.startswith("unknown sweep")
        assert stray[finished].why == "no active job of the sweep runs on it"
        assert main(["cleanup", "--region", REGION, "--endpoint-url", aws.moto_url]) == 0  # report only
        assert {active, finished, unknown} <= set(capsys.readouterr().out.split())  # unknown to the test home
        cleanup(backend, terminate=True, home=home)
    finally:
        backend.close()
    assert set(aws.running_instances()) == {active}


def _specs(n: int) -> list[JobSpec]:
    return [JobSpec(job_id=str(i), idx=i, overrides=[], output_dir=Path(str(i))) for i in range(n)]


@pytest.mark.parametrize(
    "n, per_instance, cap, sizes",
    [(5, 2, 10, [2, 2, 1]), (4, 4, 10, [4]), (5, 1, 2, [3, 2]), (10, 3, 2, [5, 5]), (1, 8, 1, [1]), (0, 2, 3, [])],
)
def test_jobs_are_packed_on_instances(n: int, per_instance: int, cap: int, sizes: list[int]) -> None:
    groups = plan_groups(_specs(n), per_instance, cap)
    assert [len(g) for g in groups] == sizes
    assert [s.idx for g in groups for s in g] == list(range(n))  # contiguous, in order


def test_user_data_scripts_are_valid_bash_and_small(tmp_path: Path) -> None:
    from launcher_core.backends.ec2 import userdata as ud

    common = {
        "sweep_id": "s-1",
        "run": "r1",
        "group": "g000",
        "workspace": "/var/tmp/hydra remote/s-1",
        "python": ["/opt/conda/bin/python", "-X", "utf8"],
        "max_runtime_s": 3600,
    }
    hostile = "$(reboot); `reboot`; 'q' \"q\" \\ HRL_AGENT_EOF\nHRL_BOOTSTRAP_EOF"
    full = ud.render_user_data(
        **common,
        bootstrap={"bucket": "b", "plan_key": hostile, "workspace": common["workspace"]},
        env={"HOSTILE": hostile},
        setup_commands=["pip install hydra-core"],
    )
    stub = ud.render_fetch_stub(
        **common, bucket="b", key=hostile, region="eu-west-1", endpoint_url=None, full_size=len(full)
    )
    for name, script in (("full", full), ("stub", stub)):
        path = tmp_path / f"{name}.sh"
        path.write_text(script)
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    assert len(full.encode()) < 11 * 1024  # leaves room for setup_commands and env under the 16 KB limit
    assert len(stub.encode()) < 4 * 1024
