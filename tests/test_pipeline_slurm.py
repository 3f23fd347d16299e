"""Pipelines on a real Slurm cluster: downstream stages are submitted at once with a dependency on
their upstream arrays (aftercorr: task i waits for task i only), the task whose upstream failed is
cancelled by Slurm (--kill-on-invalid-dep) and shown as blocked; the runner killed (-9) between
two stage submissions and run again submits nothing twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher_core.state import StateStore
from tests.pipeline_project import EXPECTED_RUNS, check_outputs, make_pipeline_project, pipeline_yaml, runs
from tests.slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
LAUNCHER_CORE = [sys.executable, "-m", "launcher_core"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.poll_interval_s=0.3", "hydra.launcher.timeout_min=5"]


def _pipeline(cmd: str, file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [*LAUNCHER_CORE, "pipeline", cmd, str(file), *args],
        cwd=file.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _handles(sweep_dir: Path) -> list[dict]:
    if not StateStore.exists_in(sweep_dir):
        return []
    try:
        with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
            return [r.handle for r in store.jobs() if r.handle]
    except sqlite3.OperationalError:  # being created this instant
        return []


def _kill_after_first_stage(file: Path, pdir: Path, timeout_s: float = 120) -> None:
    """``pipeline run``, SIGKILLed (with the stage launch it runs) once pretrain is submitted."""
    proc = subprocess.Popen(
        [*LAUNCHER_CORE, "pipeline", "run", str(file), "--no-driver"],
        cwd=file.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if len(_handles(pdir / "pretrain")) == 3:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return
            assert proc.poll() is None, "the runner ended before pretrain was submitted"
            time.sleep(0.01)
        pytest.fail("pretrain was not submitted in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_slurm_pipeline_submits_downstream_with_dependencies(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    proj = make_pipeline_project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    file = proj / "pipeline.yaml"
    # long enough that pretrain's tasks still run when squeue is read after the next launch (which
    # starts a Python per stage): a dependency shows in %E only while it is not met yet
    file.write_text(pipeline_yaml(record, SLURM, sleep=8))
    pdir = proj / "runs" / "pl"

    _kill_after_first_stage(file, pdir)
    pretrain_arrays = {h["array_job_id"] for h in _handles(pdir / "pretrain")}
    proc = _pipeline("run", file)  # submits finetune and evaluate now, while pretrain runs
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "driver" not in proc.stdout  # the cluster starts them: no process of ours stays
    assert {h["array_job_id"] for h in _handles(pdir / "pretrain")} == pretrain_arrays  # not submitted twice
    finetune = _handles(pdir / "finetune")
    evaluate = _handles(pdir / "evaluate")
    assert len(finetune) == 3 and len(evaluate) == 2  # finetune #1 waits too: its upstream has not failed yet
    (pretrain_array,) = pretrain_arrays
    deps = slurm_cluster.run("squeue", "-h", "-r", "-o", "%i %E").stdout
    assert f"aftercorr:{pretrain_array}" in deps, deps

    done = _pipeline("run", file, "--wait")
    assert done.returncode == 1, done.stderr[-3000:]
    assert runs(record) == EXPECTED_RUNS
    check_outputs(pdir)
    killed = slurm_cluster.run("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", finetune[1]["slurm_job_id"])
    assert "CANCELLED" in killed.stdout, killed.stdout  # Slurm cancelled it: its dependency can never be met
    status = _pipeline("status", file)
    assert "blocked: finetune #1 (x=1 tag=b): needs pretrain #1 (failed" in status.stdout, status.stdout
    assert slurm_cluster.queue_empty()
