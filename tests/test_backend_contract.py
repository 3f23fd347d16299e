"""The backend contract (:mod:`launcher_core.contract`) run on every built-in backend.

The tests themselves live in :class:`launcher_core.contract.BackendContract`, importable so that a
backend of another package runs the same suite on itself (``tests/test_entry_backend.py`` does,
through the entry point). This module only says how to build each built-in backend and how to
look at its side, each against the real service of the other test modules (everything on
127.0.0.1):

* ``local_pool``: forked processes of this test process;
* ``remote_ssh``: the loopback sshd of ``tests/sshd.py``;
* ``slurm``: the single-node cluster of ``tests/slurm_cluster.py``, on the shared file system;
* ``slurm_login``: the same cluster through ``login_host`` (the loopback sshd as login node);
* ``ec2``: the moto server and instance agents of ``tests/ec2_fixtures.py``.

A new built-in backend gets every test by adding ONE entry to :data:`TARGETS`: a ``pytest.param``
holding a function that builds its :class:`~launcher_core.contract.Target`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launcher_core.backends import Backend
from launcher_core.contract import JOB_TIMEOUT_S, BackendContract, Target, files_under, pid_alive
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHTestEnv

pytestmark = pytest.mark.timeout(300)


# --- the backends under test ---------------------------------------------------------------------
@dataclass
class MirrorTarget(Target):
    """remote_ssh and slurm ``login_host``: the remote layout lives on this machine's file system
    (loopback), under the test user's home."""

    def outputs(self, handle: Mapping[str, Any]) -> dict[str, int]:
        return files_under(Path(handle["remote_job_dir"]))

    def job_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        job_dir = Path(handle["remote_job_dir"])
        return [str(job_dir)] if job_dir.exists() else []

    def sweep_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        dirs = [Path(handle["remote_sweep_dir"]), Path(handle["remote_cwd"]).parent]  # sweep dir, snapshots
        return [str(d) for d in dirs if d.exists()]


@dataclass
class SlurmTarget(MirrorTarget):
    cluster: SlurmCluster | None = None

    def still_running(self, handle: Mapping[str, Any], pid: int) -> list[str]:
        left = super().still_running(handle, pid)
        assert self.cluster is not None
        queue = self.cluster.run("squeue", "-h", "-r", "-o", "%i %T", check=False)
        assert queue.returncode == 0, queue.stderr
        left += [f"squeue lists {ln}" for ln in queue.stdout.splitlines() if ln.split()[:1] == [handle["slurm_job_id"]]]
        return left


@dataclass
class Ec2Target(Target):
    aws: Any = None  # tests.ec2_fixtures.AwsWorld

    def still_running(self, handle: Mapping[str, Any], pid: int) -> list[str]:
        """The instance is terminated and its agent gone. (The task's process is not asked about:
        the test's power-off kills only the agent's process group, while a real termination takes
        the whole machine, jobs in their own sessions included; see :meth:`after_stop`.)"""
        left = []
        iid = handle["instance_id"]
        state = self.aws.instances().get(iid, {}).get("State", {}).get("Name", "gone")
        if state not in ("shutting-down", "terminated", "gone"):
            left.append(f"instance {iid} is {state}")
        run = self.aws.runner.runs.get(iid)
        if run is not None and run.proc.poll() is None:
            left.append(f"the instance agent of {iid} still runs")
        return left

    def after_stop(self, pid: int) -> None:
        """The job process of a terminated "instance" outlives the simulated power-off: end it."""
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _keys(self, prefix: str) -> dict[str, int]:
        s3 = self.aws.client("s3")
        try:
            found: dict[str, int] = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.aws.bucket, Prefix=prefix):
                found.update({obj["Key"]: int(obj["Size"]) for obj in page.get("Contents", [])})
            return found
        finally:
            s3.close()

    def outputs(self, handle: Mapping[str, Any]) -> dict[str, int]:
        prefix = str(handle["out_prefix"])
        return {k[len(prefix) :]: size for k, size in self._keys(prefix).items()}

    def job_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        return sorted(self._keys(str(handle["out_prefix"]).removesuffix("out/")))

    def sweep_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        return sorted(self._keys(f"{handle['base']}/"))

    def settle(self) -> None:
        self.aws.runner.wait_idle(JOB_TIMEOUT_S)  # agents upload their last logs after the markers


def local_pool_target(request: pytest.FixtureRequest, project: Path, name: str) -> Target:
    from launcher_core.backends.local_pool import LocalPoolBackend

    def build(task_function: Any, hydra_context: Any) -> Backend:
        return LocalPoolBackend(
            n_jobs=2, timeout_s=None, kill_grace_s=1.0, task_function=task_function, hydra_context=hydra_context
        )

    return Target("local_pool", "local_pool", project, remote_copy=False, builder=build, forks_from_here=True)


def remote_ssh_target(request: pytest.FixtureRequest, project: Path, name: str) -> Target:
    from launcher_core.backends.remote_ssh import RemoteSSHBackend, RemoteSSHSettings

    env: SSHTestEnv = request.getfixturevalue("ssh_env")
    settings = RemoteSSHSettings.from_mapping(env.settings(name, max_parallel=2))

    def build(task_function: Any, hydra_context: Any) -> Backend:
        return RemoteSSHBackend(settings, task_function=task_function, hydra_context=hydra_context)

    return MirrorTarget("remote_ssh", "remote_ssh", project, remote_copy=True, builder=build)


def _slurm_target(request: pytest.FixtureRequest, project: Path, name: str, login: bool) -> Target:
    from launcher_core.backends.slurm import SlurmBackend, SlurmOptions

    cluster: SlurmCluster = request.getfixturevalue("slurm_cluster")
    params: dict[str, Any] = {"poll_interval_s": 0.3, "timeout_min": 5, "name": f"contract-{name}"}
    if login:
        env: SSHTestEnv = request.getfixturevalue("ssh_env")
        params.update(
            login_host=env.server.alias(),
            ssh_config=str(env.server.ssh_config),
            remote_dir=env.remote_dir(name),
            python=env.python,
            login_setup=[f"export SLURM_CONF={cluster.conf}"],
        )
    options = SlurmOptions.from_params(params)

    def build(task_function: Any, hydra_context: Any) -> Backend:
        return SlurmBackend(options, task_function=task_function, hydra_context=hydra_context)

    key = "slurm_login" if login else "slurm"
    return SlurmTarget(key, "slurm", project, remote_copy=login, builder=build, cluster=cluster)


def slurm_target(request: pytest.FixtureRequest, project: Path, name: str) -> Target:
    return _slurm_target(request, project, name, login=False)


def slurm_login_target(request: pytest.FixtureRequest, project: Path, name: str) -> Target:
    return _slurm_target(request, project, name, login=True)


def ec2_target(request: pytest.FixtureRequest, project: Path, name: str) -> Target:
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    from launcher_core.backends.ec2 import Ec2Backend, Ec2Settings

    request.getfixturevalue("moto_server")
    request.getfixturevalue("metadata_server")
    aws = request.getfixturevalue("aws")
    settings = Ec2Settings.from_mapping(aws.launcher_settings(code_dir=str(project)))

    def build(task_function: Any, hydra_context: Any) -> Backend:
        return Ec2Backend(settings, task_function=task_function, hydra_context=hydra_context)

    return Ec2Target("ec2", "ec2", project, remote_copy=True, builder=build, aws=aws)


def spill_target(request: pytest.FixtureRequest, project: Path, name: str) -> Target:
    """The spill backend over two local_pool targets: every contract call goes through it to the
    target each job was placed on (the first target's slots, then the second's)."""
    from launcher_core.backends.local_pool import LocalPoolBackend
    from launcher_core.backends.spill import SpillBackend, TargetSettings
    from launcher_core.backends.spill import Target as SpillTarget

    def build(task_function: Any, hydra_context: Any) -> Backend:
        targets = [
            SpillTarget(
                settings=TargetSettings(name=f"local{i}", cluster="local", max_jobs=jobs, position=i),
                backend=LocalPoolBackend(
                    n_jobs=2, timeout_s=None, kill_grace_s=1.0, task_function=task_function, hydra_context=hydra_context
                ),
                interval_s=0.05,
            )
            for i, jobs in enumerate((1, 50))
        ]
        return SpillBackend(targets)

    return Target("spill", "spill", project, remote_copy=False, builder=build, forks_from_here=True)


# ONE entry per backend: every test of this module runs against each of them.
TARGETS = [
    pytest.param(local_pool_target, id="local_pool"),
    pytest.param(spill_target, id="spill"),
    pytest.param(remote_ssh_target, id="remote_ssh", marks=[pytest.mark.ssh, pytest.mark.slow]),
    pytest.param(slurm_target, id="slurm", marks=[pytest.mark.slurm, pytest.mark.slow]),
    pytest.param(slurm_login_target, id="slurm_login", marks=[pytest.mark.slurm, pytest.mark.ssh, pytest.mark.slow]),
    pytest.param(ec2_target, id="ec2", marks=[pytest.mark.ec2, pytest.mark.slow]),
]


class TestBackendContract(BackendContract):
    """Every test of :class:`~launcher_core.contract.BackendContract`, on each of :data:`TARGETS`."""

    @pytest.fixture(params=TARGETS)
    def contract_target(self, request: pytest.FixtureRequest, contract_project: Path, contract_name: str) -> Target:
        return request.param(request, contract_project, contract_name)
