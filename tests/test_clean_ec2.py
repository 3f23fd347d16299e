"""``launcher-core clean`` on an ec2 sweep: S3 objects against a real moto server on loopback
(tests/ec2_fixtures.py), asserted through ``list_objects_v2``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from launcher_core import cli
from launcher_core.collect.clean import CleanRefused
from launcher_core.collect.pull import PullOptions, pull_sweep_once
from launcher_core.jobs import JobState
from launcher_core.runtime.worker import load_job_return
from tests.ec2_fixtures import AwsWorld, meta, multirun, rows, stored_backend, wait_for

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]


def keys(world: AwsWorld, prefix: str = "") -> set[str]:
    s3 = world.client("s3")
    try:
        found = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=world.bucket, Prefix=prefix):
            found |= {obj["Key"] for obj in page.get("Contents", [])}
        return found
    finally:
        s3.close()


def test_clean_deletes_the_s3_objects_of_cleaned_jobs_only(
    aws: AwsWorld, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_dir = aws.tmp / "sweep"
    other_dir = aws.tmp / "other"
    multirun(sweep_dir, aws.launcher_settings(wait=False), ["x=1,2,3"])
    multirun(other_dir, aws.launcher_settings(wait=False), ["x=7"])  # another sweep, same bucket/prefix

    def pulled(directory: Path) -> bool:
        pull_sweep_once(directory, PullOptions())
        return all(r.state is JobState.PULLED for r in rows(directory).values())

    wait_for(lambda: all([pulled(sweep_dir), pulled(other_dir)]), 60, "both sweeps to be pulled", interval=0.3)
    aws.runner.wait_idle(60)  # every instance agent is gone: nothing writes to S3 behind the snapshots below
    sweep_id = meta(sweep_dir)["sweep_id"]
    other_id = meta(other_dir)["sweep_id"]
    base = f"sweeps/{sweep_id}/"
    job_rows = rows(sweep_dir)
    job_prefix = {i: r.handle["out_prefix"].removesuffix("out/") for i, r in job_rows.items()}
    before_other = keys(aws, f"sweeps/{other_id}/")
    assert before_other and all(keys(aws, p) for p in job_prefix.values())
    assert any(k.endswith(".tar.gz") for k in keys(aws, base))

    # job #2's local result is gone (say, deleted by hand): it must keep its S3 copy
    result2 = sweep_dir / "2" / ".launcher" / "result.pkl"
    saved = aws.tmp / "result2.pkl"
    shutil.move(result2, saved)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert cli.main(["clean", str(sweep_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"s3://{aws.bucket}: 2 jobs" in out and job_prefix[0] in out and job_prefix[2] not in out
    assert "kept 1 jobs: no local result.pkl" in out
    assert all(keys(aws, p) for p in job_prefix.values())  # dry run: nothing deleted
    assert cli.main(["clean", str(sweep_dir)]) == 2  # no terminal, no --yes
    assert all(keys(aws, p) for p in job_prefix.values())

    assert cli.main(["clean", str(sweep_dir), "--yes"]) == 0
    assert "cleaned 2 of 2 jobs" in capsys.readouterr().out
    assert not keys(aws, job_prefix[0]) and not keys(aws, job_prefix[1])
    assert any(k.endswith("/out/.launcher/result.pkl") for k in keys(aws, job_prefix[2]))
    assert any(k.endswith(".tar.gz") for k in keys(aws, base))  # sweep-level: job #2 is not clean
    assert keys(aws, f"sweeps/{other_id}/") == before_other
    assert load_job_return(sweep_dir / "0" / ".launcher" / "result.pkl").return_value["square"] == 1
    assert [r.cleaned_at is not None for r in rows(sweep_dir).values()] == [True, True, False]

    shutil.move(saved, result2)  # back: now every job is safely home
    assert cli.main(["clean", str(sweep_dir), "--yes"]) == 0
    assert "sweep-level files deleted" in capsys.readouterr().out
    assert keys(aws, base) == set()  # tarball, payloads, plans, markers: all gone
    assert keys(aws, f"sweeps/{other_id}/") == before_other  # the other sweep's objects are intact
    assert cli.main(["clean", str(sweep_dir), "--yes"]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_ec2_clean_refuses_a_handle_outside_the_sweep_prefix(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    multirun(sweep_dir, aws.launcher_settings(wait=False), ["x=1"])
    row = next(iter(rows(sweep_dir).values()))
    sweep_id = meta(sweep_dir)["sweep_id"]
    backend = stored_backend(sweep_dir)
    try:
        for key, value in (("out_prefix", "sweeps/"), ("out_prefix", ""), ("base", "sweeps"), ("run", "..")):
            bad = {**row.handle, key: value}
            with pytest.raises(CleanRefused) as err:
                backend.clean({row.job_id: bad}, sweep_id=sweep_id, dry_run=True)
            assert repr(value) in str(err.value) or repr(bad["out_prefix"]) in str(err.value)
        with pytest.raises(CleanRefused):
            backend.clean({}, sweep_id="", sweep_handles={}, dry_run=True)
    finally:
        backend.close()
    assert keys(aws, f"sweeps/{sweep_id}/")  # nothing was deleted by the refused calls


def test_local_backends_have_nothing_to_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from launcher_core.jobs import JobSpec
    from launcher_core.state import StateStore

    sweep = tmp_path / "sweep"
    with StateStore.for_sweep_dir(sweep) as store:
        store.add_jobs([JobSpec("j0", 0, [], sweep / "0")])
        store.set_meta({"backend": "local_pool", "sweep_id": "S"})
    assert cli.main(["clean", str(sweep), "--yes"]) == 0
    assert "nothing to clean: local sweep" in capsys.readouterr().out
    with StateStore.for_sweep_dir(sweep) as store:
        store.set_meta({"backend": "slurm", "backend_config": {"login_host": None}})
    assert cli.main(["clean", str(sweep)]) == 0
    assert "nothing to clean: slurm on a shared file system" in capsys.readouterr().out
