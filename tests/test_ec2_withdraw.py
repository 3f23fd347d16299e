"""ec2 ``withdraw``, ``billed_hours`` and ``hourly_price_usd`` against the moto server and the
instance agents of tests/ec2_fixtures.py (everything on 127.0.0.1).

An instance still ``pending`` is one EC2 has not booted: the test keeps the agent runner (the
stand-in hypervisor) from booting the instances it submits after the first, and puts them back
to ``pending`` in moto (which starts every instance ``running``), in this process as the
fixture's own power-off does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from launcher_core.backends.ec2 import Ec2Backend, Ec2Settings
from launcher_core.backends.ec2.aws import TAG_TERMINATED_BY
from launcher_core.backends.ec2.billing import (
    GUARD_SLACK_S,
    MIN_BILLED_S,
    MachineHours,
    latest_spot_price,
    reason_time,
)
from launcher_core.contract import Sweep, Target, pid_alive, prepared_sweep, read_pid, wait_until
from launcher_core.jobs import JobState
from tests.ec2_fixtures import REGION, AwsWorld

pytestmark = [pytest.mark.timeout(300)]


def _sweep(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, aws: AwsWorld, **settings: Any
) -> Iterator[Sweep]:
    project = tmp_path / "proj"
    project.mkdir()
    ec2_settings = Ec2Settings.from_mapping(aws.launcher_settings(code_dir=str(project), **settings))

    def build(task_function: Any, hydra_context: Any) -> Ec2Backend:
        return Ec2Backend(ec2_settings, task_function=task_function, hydra_context=hydra_context)

    target = Target("ec2", "ec2", project, remote_copy=True, builder=build)
    with prepared_sweep(target, request, monkeypatch) as sweep:
        yield sweep
    aws.runner.wait_idle(60)


@pytest.fixture
def sweep(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    aws: AwsWorld,
    hydra_restore_singletons: None,
) -> Iterator[Sweep]:
    yield from _sweep(request, monkeypatch, tmp_path, aws, jobs_per_instance=2)


def _set_pending(instance_id: str) -> None:
    """Put a moto instance back to ``pending`` (in this process: the server is threaded here)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    instance = ec2_backends[DEFAULT_ACCOUNT_ID][REGION].get_instance(instance_id)
    instance._state.name, instance._state.code = "pending", 0


def _state(aws: AwsWorld, instance_id: str) -> tuple[str, dict[str, str]]:
    inst = aws.instances()[instance_id]
    return inst["State"]["Name"], {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


@pytest.mark.ec2
@pytest.mark.slow
def test_jobs_of_a_pending_instance_are_withdrawn_and_a_running_instance_is_left(
    sweep: Sweep, aws: AwsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = sweep.pid_file(0)
    (started,) = sweep.specs({"x": 0, "seconds": 300, "pid_file": pid_file})
    handles = sweep.submit([started])
    pid = wait_until("the first job to start", lambda: read_pid(pid_file))
    monkeypatch.setattr(aws.runner, "boot", lambda inst: None)  # EC2 boots nothing more
    queued = sweep.specs({"x": 1}, {"x": 2})  # one pending instance, both jobs asked for
    partly = sweep.specs({"x": 3}, {"x": 4})  # one pending instance, one job asked for
    handles.update(sweep.submit(queued))
    handles.update(sweep.submit(partly))
    running_iid = handles[started.job_id]["instance_id"]
    pending_iid = handles[queued[0].job_id]["instance_id"]
    partly_iid = handles[partly[0].job_id]["instance_id"]
    assert len({running_iid, pending_iid, partly_iid}) == 3
    _set_pending(pending_iid)
    _set_pending(partly_iid)
    asked = {j: handles[j] for j in (started.job_id, queued[0].job_id, queued[1].job_id, partly[0].job_id)}

    taken = sweep.backend.withdraw(asked)

    assert taken == {queued[0].job_id, queued[1].job_id}
    state, tags = _state(aws, pending_iid)
    assert state in ("shutting-down", "terminated") and tags.get(TAG_TERMINATED_BY) == "launcher"
    assert _state(aws, running_iid)[0] == "running" and pid_alive(pid)
    assert _state(aws, partly_iid)[0] == "pending"
    statuses = sweep.poll({started.job_id: handles[started.job_id]})
    assert statuses[started.job_id].state is JobState.RUNNING

    assert sweep.backend.withdraw(asked) == taken  # a relaunch finishing the withdrawal
    assert _state(aws, running_iid)[0] == "running" and pid_alive(pid)
    sweep.terminal |= taken  # nothing left of them to cancel


@pytest.mark.ec2
@pytest.mark.slow
def test_billed_hours_count_each_instance_from_its_launch_time(sweep: Sweep, aws: AwsWorld) -> None:
    specs = sweep.specs({"x": 1, "seconds": 300}, {"x": 2, "seconds": 300}, {"x": 3, "seconds": 300})
    handles = sweep.submit(specs[:2])  # one instance for two jobs
    handles.update(sweep.submit(specs[2:]))  # and another one
    iids = [handles[specs[0].job_id]["instance_id"], handles[specs[2].job_id]["instance_id"]]
    assert len(set(iids)) == 2 and handles[specs[1].job_id]["instance_id"] == iids[0]
    launched = {iid: aws.instances()[iid]["LaunchTime"].timestamp() for iid in iids}
    backend = sweep.backend

    before = time.time()
    hours = backend.billed_hours(handles)
    after = time.time()

    # each instance from its real LaunchTime until now, and at least a minute
    low = sum(max(MIN_BILLED_S, before - at) for at in launched.values()) / 3600
    high = sum(max(MIN_BILLED_S, after - at) for at in launched.values()) / 3600
    assert low - 1e-9 <= hours <= high + 1e-9 and hours >= 2 * MIN_BILLED_S / 3600
    assert backend.billed_hours({specs[0].job_id: handles[specs[0].job_id]}) < hours  # one instance of two
    described = backend.describe_sweep_instances(sweep.info.sweep_id)
    in_an_hour = backend.machine_hours.hours(launched, described, now=after + 3600)
    assert in_an_hour == pytest.approx(sum(after + 3600 - at for at in launched.values()) / 3600, abs=1e-6)

    sweep.backend.cancel({specs[2].job_id: handles[specs[2].job_id]})  # terminates the second instance
    ended = wait_until("the instance to end", lambda: _state(aws, iids[1])[0] == "terminated" or None)
    assert ended
    reason = aws.instances()[iids[1]]["StateTransitionReason"]
    end = reason_time(reason)
    assert end is not None, reason
    one = {iids[1]: launched[iids[1]]}
    described = backend.describe_sweep_instances(sweep.info.sweep_id)
    frozen = max(MIN_BILLED_S, end - launched[iids[1]]) / 3600
    assert backend.machine_hours.hours(one, described) == pytest.approx(frozen)
    assert backend.machine_hours.hours(one, described, now=time.time() + 7200) == pytest.approx(frozen)
    sweep.terminal.add(specs[2].job_id)


@pytest.mark.ec2
@pytest.mark.parametrize("spot", [True, False], ids=["spot", "on_demand"])
def test_hourly_price_is_the_spot_price_history_for_spot_and_none_on_demand(
    aws: AwsWorld, spot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("launcher_core.backends.ec2.billing._PRICES", {})
    backend = Ec2Backend(Ec2Settings.from_mapping(aws.launcher_settings(spot=spot)))
    try:
        ec2 = aws.client("ec2")
        history = ec2.describe_spot_price_history(InstanceTypes=["t3.micro"])["SpotPriceHistory"]
        ec2.close()
        price = backend.hourly_price_usd()
        if not spot:
            assert price is None
            return
        assert history and price == float(history[0]["SpotPrice"])  # moto's (fixed) price
        monkeypatch.setattr(backend.fleet, "spot_price", lambda types: pytest.fail("asked EC2 again"))
        assert backend.hourly_price_usd() == price  # once per process
    finally:
        backend.close()


# --- the parts, without AWS ---------------------------------------------------------------------------
def test_reason_time_reads_gmt_and_utc() -> None:
    at = datetime(2024, 5, 1, 12, 0, 7, tzinfo=timezone.utc).timestamp()
    assert reason_time("User initiated (2024-05-01 12:00:07 GMT)") == at
    assert reason_time("User initiated (2024-05-01 12:00:07 UTC)") == at
    assert reason_time("Client.InstanceInitiatedShutdown") is None and reason_time(None) is None


def test_machine_hours_of_ended_instances_use_the_best_time_known() -> None:
    launch = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    t0 = launch.timestamp()

    def inst(state: str, reason: str = "") -> dict[str, Any]:
        return {"State": {"Name": state}, "LaunchTime": launch, "StateTransitionReason": reason}

    hours = MachineHours(guard_s=3600)
    # stated end: 30 min after launch, whenever asked
    stated = {"i-a": inst("terminated", "User initiated (2024-05-01 12:30:00 GMT)")}
    assert hours.hours({"i-a": t0}, stated, now=t0 + 99999) == pytest.approx(0.5)
    # seen running at +10 min, then ended without a stated time: counted until then
    hours.observe({"i-b": inst("running")}, now=t0 + 600)
    assert hours.hours({"i-b": t0}, {"i-b": inst("terminated")}, now=t0 + 5000) == pytest.approx(600 / 3600)
    # never seen running: until first seen ended, bounded by the max_runtime guard
    assert hours.hours({"i-c": t0}, {"i-c": inst("stopped")}, now=t0 + 1200) == pytest.approx(1200 / 3600)
    assert hours.hours({"i-c": t0}, {"i-c": inst("stopped")}, now=t0 + 9000) == pytest.approx(1200 / 3600)
    late = hours.hours({"i-d": t0}, {"i-d": inst("terminated")}, now=t0 + 86400)
    assert late == pytest.approx((3600 + GUARD_SLACK_S) / 3600)
    # no longer listed: as last counted; never counted: the guard's bound from the handle
    assert hours.hours({"i-b": t0}, {}, now=t0 + 86400) == pytest.approx(600 / 3600)
    assert hours.hours({"i-e": t0}, {}, now=t0 + 86400) == pytest.approx((3600 + GUARD_SLACK_S) / 3600)
    # a minute at least
    assert hours.hours({"i-f": t0}, {"i-f": inst("running")}, now=t0 + 5) == pytest.approx(MIN_BILLED_S / 3600)


def test_latest_spot_price_takes_the_newest_entry_of_the_zone_or_the_dearest_zone() -> None:
    now = datetime(2024, 5, 1, tzinfo=timezone.utc)

    def entry(zone: str, price: str, age_h: float, kind: str = "t3.micro", product: str = "Linux/UNIX") -> dict:
        return {
            "AvailabilityZone": zone,
            "InstanceType": kind,
            "ProductDescription": product,
            "SpotPrice": price,
            "Timestamp": now - timedelta(hours=age_h),
        }

    history = [
        entry("us-east-1a", "0.0040", 5),
        entry("us-east-1a", "0.0031", 1),  # the newest of zone a
        entry("us-east-1b", "0.0050", 2),
        entry("us-east-1b", "0.9000", 0, kind="p5.48xlarge"),  # another type
        entry("us-east-1b", "0.7000", 0, product="Windows"),
    ]
    assert latest_spot_price(history, ["t3.micro"], "us-east-1a") == pytest.approx(0.0031)
    assert latest_spot_price(history, ["t3.micro"]) == pytest.approx(0.0050)
    assert latest_spot_price(history, ["t3.micro"], "us-east-1c") is None
    assert latest_spot_price([], ["t3.micro"]) is None
