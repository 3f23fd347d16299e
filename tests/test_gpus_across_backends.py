"""GPU locks are machine-wide: remote_ssh jobs on the test sshd (this same machine, logged in as
another user) and local_pool jobs started here draw on the same GPUs and never share one.

The one stand-in is ``nvidia-smi`` (``tests/gpu_standin.py``, 4 GPUs), on the PATH of both: it
stands in for the GPU driver, which cannot exist here. Both sweeps use one ``gpu_lock_dir`` of
their own (as all sweeps on a real machine share ``/tmp/hydra-launcher-gpus``), so other test
runs on this machine do not take part. Every job appends its ``CUDA_VISIBLE_DEVICES`` and its
start and end to one record file outside the job dirs; the intervals are checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_app
from tests.gpu_standin import install_nvidia_smi
from tests.sshd import SSHTestEnv, shared_dir, shared_file
from tests.test_local_pool_gpus import assert_never_shared, gpu_ids, peak_per_gpu, project, records

pytestmark = pytest.mark.ssh


class Shared:
    """What both users need: the stand-in, the lock dir and the record file."""

    def __init__(self) -> None:
        self.bin = shared_dir("hrl-gpu-bin")
        install_nvidia_smi(self.bin, 4)
        self.locks = shared_dir("hrl-gpu-locks")
        self.record = shared_file("hrl-gpu-record")

    def remote(self, env: SSHTestEnv, name: str, **settings: object) -> list[str]:
        return [
            "hydra/launcher=remote_ssh",
            f"record={self.record}",
            *env.overrides(
                name,
                prepare_commands=f'["PATH={self.bin}:$PATH; export PATH"]',
                **{"gpus": 4, "max_parallel": 4, "gpu_lock_dir": self.locks, **settings},
            ),
        ]

    def local(self) -> list[str]:
        return [
            "hydra/launcher=local_pool",
            f"record={self.record}",
            "hydra.launcher.gpus=4",
            f"hydra.launcher.gpu_lock_dir={self.locks}",
        ]

    def local_env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}


def _seeds(n: int) -> str:
    return "seed=" + ",".join(map(str, range(n)))


@pytest.mark.timeout(300)
def test_twelve_one_gpu_jobs_on_the_sshd_host_never_overlap(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    shared = Shared()
    argv = ["-m", *shared.remote(ssh_env, "twelve"), "hydra.launcher.gpus_per_job=1", _seeds(12), "sleep=1.5"]
    proc = run_app(proj / "app.py", argv, proj, 240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(shared.record)
    assert sorted(r["job"] for r in recs) == list(range(12))
    assert all(len(gpu_ids(r)) == 1 and r["nvidia"] == r["cuda"] for r in recs), recs
    assert assert_never_shared(recs) >= 4
    assert max(peak_per_gpu(recs).values()) == 1


@pytest.mark.timeout(300)
def test_jobs_per_gpu_two_on_the_sshd_host(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    shared = Shared()
    argv = [
        "-m",
        *shared.remote(ssh_env, "shared", jobs_per_gpu=2, max_parallel=8, gpus=2),
        "hydra.launcher.gpus_per_job=1",
        _seeds(8),
        "sleep=2",
    ]
    proc = run_app(proj / "app.py", argv, proj, 240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(shared.record)
    assert len(recs) == 8 and all(gpu_ids(r) <= {0, 1} for r in recs)
    assert peak_per_gpu(recs) == {0: 2, 1: 2}


@pytest.mark.timeout(300)
def test_a_local_pool_sweep_beside_a_remote_ssh_sweep_to_this_machine_never_share(
    ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    """local_pool runs as this user, remote_ssh's jobs as the sshd's test user: one set of locks."""
    proj = project(tmp_path / "proj")
    shared = Shared()
    remote = subprocess.Popen(
        [sys.executable, str(proj / "app.py"), "-m", *shared.remote(ssh_env, "beside"), "tag=remote",
         "hydra.launcher.gpus_per_job=1", _seeds(8), "sleep=2", f"hydra.sweep.dir={tmp_path / 'remote'}"],
        cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180  # the remote sweep holds GPUs first; the local one then waits for them
    while not records(shared.record, "start") and remote.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    local = subprocess.Popen(
        [sys.executable, str(proj / "app.py"), "-m", *shared.local(), "tag=local", _seeds(8), "sleep=2",
         f"hydra.sweep.dir={tmp_path / 'local'}"],
        cwd=proj, env=shared.local_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    outs = [p.communicate(timeout=240) for p in (remote, local)]
    assert [remote.returncode, local.returncode] == [0, 0], [err[-2000:] for _out, err in outs]
    recs = records(shared.record)
    assert sorted((r["sweep"], r["job"]) for r in recs) == sorted(
        (tag, i) for tag in ("remote", "local") for i in range(8)
    )
    assert_never_shared(recs)
    assert max(peak_per_gpu(recs).values()) == 1
    across = [
        (x, y)
        for x in recs
        for y in recs
        if x["sweep"] == "remote" and y["sweep"] == "local" and x["started"] < y["ended"] and y["started"] < x["ended"]
    ]
    assert across  # both sweeps ran at the same time, on different GPUs
    owners = {p.stat().st_uid for p in shared.locks.glob("gpu-*")}
    assert len(owners) >= 1  # lock files of either user serve both
