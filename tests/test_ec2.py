"""ec2 backend against a real moto server on loopback, with instance agents run locally.

See tests/ec2_fixtures.py for how instances "boot". Every sweep here goes through Hydra's own
multirun (in-process, or as a subprocess for the example app), the real controller, boto3 and
moto; the only thing simulated is the machine itself.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import tarfile
import time

import pytest
from hydra.core.utils import JobStatus

from launcher_core.controller import DetachedResult
from launcher_core.jobs import JobState, PullFilter
from launcher_core.runtime.worker import JobLostError, JobTimeoutError
from tests.ec2_fixtures import (
    BUCKET,
    AwsWorld,
    assert_no_credentials,
    collect,
    marker_count,
    meta,
    multirun,
    result,
    rows,
    stored_backend,
    wait_for,
)

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]


def test_sweep_end_to_end_with_packing(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    launcher = aws.launcher_settings(jobs_per_instance=2)
    started = time.monotonic()
    returns = multirun(sweep_dir, launcher, ["x=1,2,3,4,5"])
    elapsed = time.monotonic() - started

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 5
    assert [r.return_value["square"] for r in returns] == [1, 4, 9, 16, 25]
    assert {r.return_value["helper"] for r in returns} == {42}
    for ret in returns:  # jobs run in the instance's copy of the code dir, which Hydra reports as original cwd
        assert ret.return_value["cwd"].endswith("/code") and ret.return_value["original"] == ret.return_value["cwd"]
    # ceil(5 / 2) = 3 instances, all tagged with the sweep id, all terminated by their own agent
    instances = aws.instances()
    assert len(instances) == 3, elapsed
    sweep_id = meta(sweep_dir)["sweep_id"]
    for inst in instances.values():
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["hydra-launcher:sweep-id"] == sweep_id
        assert tags["project"] == "hrl-tests"
        assert inst.get("InstanceLifecycle") != "spot"
    aws.runner.wait_idle(30)
    wait_for(lambda: not aws.running_instances(), 10, "instances to terminate")
    for run in aws.runner.runs.values():
        assert not run.shutdown_called, run.console  # the agent's own TerminateInstances did it
        assert "terminated instance" in run.console
    # outputs are home in Hydra's layout
    for num in range(5):
        job_dir = sweep_dir / str(num)
        assert (job_dir / "artifact.txt").read_text() == f"x={num + 1}\n"
        assert (job_dir / ".hydra" / "overrides.yaml").exists()
        assert f"stdout of job x={num + 1}" in (job_dir / ".launcher" / "stdout.log").read_text()
        assert result(sweep_dir, num).return_value["x"] == num + 1
    # the snapshot ships the code dir and, in lib/, launcher_core plus every local Hydra plugin
    (snapshot,) = [v for k, v in aws.s3_objects().items() if k.endswith(".tar.gz")]
    with tarfile.open(fileobj=io.BytesIO(snapshot)) as tar:
        names = set(tar.getnames())
    # the user's code and the job-side package only (plugins are stood in for on the instance)
    assert {"code/helper.py", "lib/launcher_core/__init__.py", "lib/launcher_core/runtime/worker.py"} <= names
    assert not [n for n in names if n.startswith("lib/") and not n.startswith("lib/launcher_core/")]
    assert not [n for n in names if n.startswith("lib/launcher_core/") and "/runtime/" not in n
                and n != "lib/launcher_core/__init__.py"]
    job_rows = rows(sweep_dir)
    assert {row.state for row in job_rows.values()} == {JobState.PULLED}
    assert len({row.handle["instance_id"] for row in job_rows.values()}) == 3


def test_max_instances_queues_the_rest_on_the_instances(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    returns = multirun(sweep_dir, aws.launcher_settings(jobs_per_instance=1, max_instances=2), ["x=1,2,3"])
    assert [r.return_value["x"] for r in returns] == [1, 2, 3]
    assert len(aws.instances()) == 2  # not ceil(3 / 1) = 3
    per_instance: dict[str, list[int]] = {}
    for row in rows(sweep_dir).values():
        per_instance.setdefault(row.handle["instance_id"], []).append(row.idx)
    assert sorted(per_instance.values()) == [[0, 1], [2]]


def test_failing_jobs_come_back_failed_naming_the_real_error(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    with pytest.raises(ValueError, match="bad value x=2"):
        multirun(sweep_dir, aws.launcher_settings(jobs_per_instance=3), ["x=1,2,3"], fail_on=[2], exit_on=[3])
    assert len(aws.instances()) == 1
    ok, failed = result(sweep_dir, 0), result(sweep_dir, 1)
    assert ok.status is JobStatus.COMPLETED and ok.return_value["x"] == 1
    assert failed.status is JobStatus.FAILED
    assert isinstance(failed._return_value, ValueError) and "bad value x=2" in str(failed._return_value)
    assert "ValueError: bad value x=2" in (sweep_dir / "1" / ".launcher" / "stderr.log").read_text()
    job_rows = rows(sweep_dir)
    assert [job_rows[i].outcome for i in range(3)] == [JobState.COMPLETED, JobState.FAILED, JobState.FAILED]
    assert not (sweep_dir / "2" / ".launcher" / "result.pkl").exists()
    assert "exited with code 3 without writing a result" in job_rows[2].exit_reason
    assert (sweep_dir / "2" / "artifact.txt").read_text() == "x=3\n"  # synced although the job died
    assert_no_credentials(aws)


def test_spot_instances_and_interruption_notice(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    launcher = aws.launcher_settings(spot=True, max_price=0.05, jobs_per_instance=2, wait=False)
    returns = multirun(sweep_dir, launcher, ["x=1,2"], mode="sleep", seconds=30)
    assert all(isinstance(r.return_value, DetachedResult) for r in returns)
    (iid, inst), *_ = aws.instances().items()
    assert inst["InstanceLifecycle"] == "spot"
    # both jobs wrote their artifact and a periodic sync uploaded it
    synced = lambda: sum(k.endswith("/out/artifact.txt") for k in aws.s3_keys()) == 2  # noqa: E731
    wait_for(synced, 30, "both jobs to start")
    aws.metadata.set_spot_action(iid)
    statuses = collect(sweep_dir, timeout=30)
    for idx in (0, 1):
        assert statuses[idx].state is JobState.FAILED
        assert statuses[idx].exit_reason.startswith("spot interruption"), statuses[idx].exit_reason
        # the final sync brought home what the job wrote before the notice
        assert (sweep_dir / str(idx) / "artifact.txt").read_text() == f"x={idx + 1}\n"
        assert f"stdout of job x={idx + 1}" in (sweep_dir / str(idx) / ".launcher" / "stdout.log").read_text()
    wait_for(lambda: not aws.running_instances(), 15, "the spot instance to terminate")
    assert not aws.runner.runs[iid].shutdown_called


def test_cancel_terminates_the_instances(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    multirun(sweep_dir, aws.launcher_settings(wait=False), ["x=1,2"], mode="sleep", seconds=60)
    assert len(aws.running_instances()) == 2
    wait_for(lambda: marker_count(aws, ".running") == 2, 30, "the jobs to start")
    backend = stored_backend(sweep_dir)
    try:
        backend.cancel({r.job_id: r.handle for r in rows(sweep_dir).values()})
    finally:
        backend.close()
    wait_for(lambda: not aws.running_instances(), 10, "the instances to terminate")
    aws.runner.wait_idle(15)
    assert all(run.powered_off for run in aws.runner.runs.values())  # killed mid-job by the termination
    assert marker_count(aws, ".done") == 0


def test_cancel_one_job_of_a_shared_instance_keeps_the_others(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    multirun(sweep_dir, aws.launcher_settings(wait=False, jobs_per_instance=2), ["x=1,30"], mode="sleep", seconds=2)
    wait_for(lambda: marker_count(aws, ".running") == 2, 30, "the jobs to start")
    long_job = rows(sweep_dir)[1]
    backend = stored_backend(sweep_dir)
    try:
        backend.cancel({long_job.job_id: long_job.handle})
    finally:
        backend.close()
    statuses = collect(sweep_dir, timeout=30)
    assert statuses[0].state is JobState.COMPLETED
    assert statuses[1].state is JobState.FAILED and statuses[1].exit_reason == "cancelled by user"
    wait_for(lambda: not aws.running_instances(), 10, "the instance to terminate itself")


def test_user_data_over_16kb_is_fetched_from_s3(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    canary = aws.tmp / "canary"
    activate = aws.tmp / "activate.sh"
    hostile = f"$(touch {canary}); `touch {canary}`; a'b\"c \\ $HOME | rm -rf {canary} && echo"
    setup = [
        f"echo 'export FROM_SETUP=activated' > {activate}",
        f"source {activate}",  # runs in the bootstrap shell: the activation lasts for the jobs
        ": " + "padding " * 2200,
    ]
    launcher = aws.launcher_settings(setup_commands=setup, env={"HOSTILE": hostile, "PLAIN": "1"})
    names = ["HOSTILE", "PLAIN", "FROM_SETUP"]
    (ret,) = multirun(sweep_dir, launcher, ["x=1"], mode="env", env_names=names)
    assert ret.return_value == {"HOSTILE": hostile, "PLAIN": "1", "FROM_SETUP": "activated"}
    assert not canary.exists()
    (run,) = aws.runner.runs.values()
    assert len(run.user_data.encode()) <= 16 * 1024
    assert "exceeds EC2's 16 KB user-data limit" in run.user_data
    full = {k: v for k, v in aws.s3_objects().items() if k.endswith("/user-data.sh")}
    assert len(full) == 1 and len(next(iter(full.values()))) > 16 * 1024
    assert not run.shutdown_called
    assert_no_credentials(aws)


def test_failing_setup_command_fails_the_jobs_with_its_output(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    never = aws.tmp / "never"
    setup = ["echo installing deps", "echo 'pip: no matching distribution' >&2; false", f"touch {never}"]
    with pytest.raises(JobLostError, match="setup_commands failed with exit code 1"):
        multirun(sweep_dir, aws.launcher_settings(setup_commands=setup), ["x=1,2"], mode="ok")
    assert not never.exists()
    reason = rows(sweep_dir)[0].exit_reason
    assert "pip: no matching distribution" in reason and "installing deps" in reason
    wait_for(lambda: not aws.running_instances(), 10, "the instance to terminate itself")
    assert not next(iter(aws.runner.runs.values())).shutdown_called


def test_max_runtime_stops_jobs_with_a_final_sync(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    # 18 s; jobs stop ~1 s before. The instance checks the jobs' Python before the first job
    # starts (a Python start-up importing hydra): the budget leaves the job time to write its file
    launcher = aws.launcher_settings(max_runtime_min=0.3)
    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match="max_runtime_min"):
        multirun(sweep_dir, launcher, ["x=1"], mode="sleep", seconds=600)
    assert time.monotonic() - started < 45
    assert rows(sweep_dir)[0].exit_reason.startswith("timeout: the instance reached max_runtime_min")
    assert (sweep_dir / "0" / "artifact.txt").read_text() == "x=1\n"
    wait_for(lambda: not aws.running_instances(), 10, "the instance to terminate")


def test_hard_runtime_guard_powers_off_a_stuck_instance(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    launcher = aws.launcher_settings(setup_commands=["sleep 600"], max_runtime_min=0.05, wait=False)
    multirun(sweep_dir, launcher, ["x=1"])
    statuses = collect(sweep_dir, timeout=30)
    assert statuses[0].state is JobState.FAILED
    assert "is terminated" in statuses[0].exit_reason and "left no result" in statuses[0].exit_reason
    (run,) = aws.runner.runs.values()
    assert run.shutdown_called  # the budget guard of the user-data powered it off
    wait_for(lambda: not aws.running_instances(), 10, "the instance to terminate")


def test_wait_false_then_pull_with_the_stored_config(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    returns = multirun(sweep_dir, aws.launcher_settings(wait=False, jobs_per_instance=2), ["x=1,2"])
    assert all(isinstance(r.return_value, DetachedResult) for r in returns)
    stored = meta(sweep_dir)
    assert stored["backend"] == "ec2" and stored["backend_config"]["s3_bucket"] == BUCKET
    job_rows = list(rows(sweep_dir).values())
    handles = {r.job_id: r.handle for r in job_rows}
    dirs = {r.job_id: r.output_dir for r in job_rows}
    shutil.rmtree(aws.tmp / "code")  # launch-only settings may be stale when results are pulled
    backend = stored_backend(sweep_dir)
    try:
        wait_for(lambda: all(s.state is JobState.COMPLETED for s in backend.poll(handles).values()), 30, "the jobs")
        assert b"stdout of job x=1" in backend.read_log(handles[job_rows[0].job_id], "stdout")
        assert backend.read_log(handles[job_rows[0].job_id], "stdout", offset=10**6) == b""
        backend.fetch(handles, dirs, PullFilter(max_size_bytes=1))  # bare: launcher files only
        assert (sweep_dir / "0" / ".launcher" / "result.pkl").exists()
        assert not (sweep_dir / "0" / "artifact.txt").exists()
        backend.fetch(handles, dirs)
        inodes = {p: p.stat().st_ino for p in sweep_dir.rglob("*") if p.is_file() and ".launcher" not in p.parts[-3:]}
        backend.fetch(handles, dirs)  # incremental: nothing changed, nothing downloaded again
        assert inodes == {p: p.stat().st_ino for p in inodes}
    finally:
        backend.close()
    assert result(sweep_dir, 1).return_value["square"] == 4
    assert oct(os.stat(sweep_dir / "0" / ".launcher" / "result.pkl").st_mode & 0o777) == "0o600"


def test_root_volume_gb_resizes_the_root_volume_of_the_ami(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    gate = aws.tmp / "gate"
    # moto deletes a terminated instance's volumes: the instance holds (bounded) until they are checked
    hold = f"for _ in $(seq 300); do [ -e {shlex.quote(str(gate))} ] && break; sleep 0.1; done"
    launcher = aws.launcher_settings(root_volume_gb=37, wait=False, setup_commands=[hold])
    multirun(sweep_dir, launcher, ["x=1"])
    ((iid, inst),) = aws.instances().items()
    ec2 = aws.client("ec2")
    try:
        image = ec2.describe_images(ImageIds=[aws.ami])["Images"][0]
        root = image["RootDeviceName"]
        ebs = {m["DeviceName"]: m["Ebs"] for m in inst["BlockDeviceMappings"]}
        (volume,) = ec2.describe_volumes(VolumeIds=[ebs[root]["VolumeId"]])["Volumes"]
    finally:
        ec2.close()
    assert inst["RootDeviceName"] == root
    assert ebs[root]["DeleteOnTermination"] is True
    assert volume["Size"] == 37 and volume["Size"] != image["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"]
    assert [(a["InstanceId"], a["Device"]) for a in volume["Attachments"]] == [(iid, root)]
    gate.touch()
    statuses = collect(sweep_dir, timeout=60)
    assert statuses[0].state is JobState.COMPLETED
    wait_for(lambda: not aws.running_instances(), 10, "the instance to terminate itself")
