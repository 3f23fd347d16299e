"""Pipelines on remote_ssh (the loopback sshd): every stage on the same host and remote_dir, so a
downstream job reads its upstream job's dir where it ran; the runner pulls each stage home before
the next starts, is killed (-9) between stages and run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline_project import EXPECTED_RUNS, check_outputs, make_pipeline_project, pipeline_yaml, runs
from tests.sshd import SSHTestEnv, shared_file

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
LAUNCHER_CORE = [sys.executable, "-m", "launcher_core"]


def test_remote_ssh_pipeline_killed_between_stages_resumes(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_pipeline_project(tmp_path / "proj")
    record = shared_file("hrl-pipeline")
    file = proj / "pipeline.yaml"
    launcher = ["hydra/launcher=remote_ssh", *ssh_env.overrides("pipeline", max_parallel=3)]
    file.write_text(pipeline_yaml(record, launcher, sleep=0.5))
    pdir = proj / "runs" / "pl"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    argv = [*LAUNCHER_CORE, "pipeline", "run", str(file), "--wait", "--interval", "0.5"]

    proc = subprocess.Popen(
        argv, cwd=proj, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 120
    try:
        while not any(s == "finetune" for s, _x in runs(record)):  # pretrain is home, finetune runs
            assert time.monotonic() < deadline and proc.poll() is None, "finetune did not start"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    done = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-3000:]  # pretrain #1 failed, finetune #1 blocked
    assert runs(record) == EXPECTED_RUNS
    check_outputs(pdir)  # pulled home, each read on the host from its upstream job's remote dir
    remote = str(ssh_env.remote_path("pipeline"))
    assert (pdir / "evaluate" / "0" / ".hydra" / "overrides.yaml").read_text().count(remote) == 1
    status = subprocess.run(
        [*LAUNCHER_CORE, "pipeline", "status", str(file)],
        cwd=proj,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert "blocked: finetune #1 (x=1 tag=b): needs pretrain #1 (failed" in status.stdout, status.stdout
