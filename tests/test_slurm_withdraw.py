"""slurm ``withdraw``: taking back array tasks that have not started, on the real test cluster
(tests/slurm_cluster.py), on the shared file system and through ``login_host``.

Tasks are held pending the way a busy cluster holds them: the array's throttle
(``array_parallelism=1``, ``%1``) lets task 0 run (it sleeps) while the others wait
(JobArrayTaskLimit). sacct is asked independently of the backend for what Slurm recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher_core.backends.slurm import SlurmBackend, SlurmOptions
from launcher_core.backends.slurm.withdrawal import CONFIRM_ROUNDS
from launcher_core.contract import Sweep, Target, pid_alive, prepared_sweep, read_pid, wait_until
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHTestEnv

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(300)]


def _sweep_fixture(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, login: bool, **params: Any
) -> Iterator[Sweep]:
    cluster: SlurmCluster = request.getfixturevalue("slurm_cluster")
    project = tmp_path / "proj"
    project.mkdir()
    settings: dict[str, Any] = {"poll_interval_s": 0.3, "timeout_min": 5, "array_parallelism": 1, **params}
    settings["name"] = f"withdraw-{tmp_path.name}"[:60]
    if login:
        env: SSHTestEnv = request.getfixturevalue("ssh_env")
        settings.update(
            login_host=env.server.alias(),
            ssh_config=str(env.server.ssh_config),
            remote_dir=env.remote_dir(settings["name"]),
            python=env.python,
            login_setup=[f"export SLURM_CONF={cluster.conf}"],
        )
    options = SlurmOptions.from_params(settings)

    def build(task_function: Any, hydra_context: Any) -> SlurmBackend:
        return SlurmBackend(options, task_function=task_function, hydra_context=hydra_context)

    target = Target("slurm_login" if login else "slurm", "slurm", project, remote_copy=login, builder=build)
    with prepared_sweep(target, request, monkeypatch) as sweep:
        yield sweep


@pytest.fixture(params=[False, pytest.param(True, marks=pytest.mark.ssh)], ids=["shared_fs", "login_host"])
def sweep(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hydra_restore_singletons: None
) -> Iterator[Sweep]:
    yield from _sweep_fixture(request, monkeypatch, tmp_path, login=request.param)


@pytest.fixture
def packed_sweep(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hydra_restore_singletons: None
) -> Iterator[Sweep]:
    yield from _sweep_fixture(request, monkeypatch, tmp_path, login=False, jobs_per_task=2)


def _accounted(cluster: SlurmCluster, array: str) -> dict[str, tuple[str, str]]:
    """sacct's ``{task: (state, node list)}`` of the array's tasks (an unsplit pending record
    ``12_[3-4%1]`` is left as it is)."""
    out = cluster.run("sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList", "-j", array).stdout
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {job: (state.split()[0], nodes) for job, state, nodes in rows}


def _wait_running(sweep: Sweep, pid_file: Path) -> int:
    return wait_until(f"{sweep.label}: task 0 to start", lambda: read_pid(pid_file))


def test_pending_tasks_are_withdrawn_and_a_running_one_is_spared(sweep: Sweep, slurm_cluster: SlurmCluster) -> None:
    pid_file = sweep.pid_file(0)
    specs = sweep.specs({"x": 0, "seconds": 300, "pid_file": pid_file}, {"x": 1}, {"x": 2}, {"x": 3})
    handles = sweep.submit(specs)
    pid = _wait_running(sweep, pid_file)
    array = handles[specs[0].job_id]["array_job_id"]
    queued = {s.job_id for s in specs[1:]}
    before = dict(sweep.backend.calls)

    taken = sweep.backend.withdraw(handles)

    assert taken == queued, f"{sweep.label}: {taken}"
    calls = {k: v - before.get(k, 0) for k, v in sweep.backend.calls.items()}
    assert calls.get("scancel") == 1 and calls.get("scontrol") == 1, calls
    assert 1 <= calls.get("sacct", 0) <= CONFIRM_ROUNDS and calls.get("sbatch", 0) == 0, calls
    accounted = _accounted(slurm_cluster, array)
    for task in (1, 2, 3):  # cancelled, and no node was ever assigned
        assert accounted[f"{array}_{task}"] == ("CANCELLED", "None assigned"), accounted
    assert accounted[f"{array}_0"][0] == "RUNNING" and pid_alive(pid), accounted
    statuses = sweep.poll(handles)
    assert statuses[specs[0].job_id].state.is_active, statuses[specs[0].job_id]

    again = sweep.backend.withdraw(handles)  # a relaunch finishing the withdrawal: the same answer

    assert again == queued
    assert _accounted(slurm_cluster, array)[f"{array}_0"][0] == "RUNNING" and pid_alive(pid)
    assert not any(s.launcher_dir.exists() for s in specs[1:])  # they never ran


def test_a_packed_task_is_withdrawn_only_with_all_its_jobs(packed_sweep: Sweep, slurm_cluster: SlurmCluster) -> None:
    """jobs_per_task=2, five jobs: task 0 runs jobs 0+1 (and sleeps), task 1 holds jobs 2+3, and
    task 2 job 4 alone (the chunk's short last task)."""
    sweep = packed_sweep
    pid_file = sweep.pid_file(0)
    specs = sweep.specs({"x": 0, "seconds": 300, "pid_file": pid_file}, *({"x": x} for x in range(1, 5)))
    handles = sweep.submit(specs)
    _wait_running(sweep, pid_file)
    array = handles[specs[0].job_id]["array_job_id"]
    ids = [s.job_id for s in specs]
    assert [handles[j]["packed"] for j in ids] == [2, 2, 2, 2, 1]

    # job 1 is in the running task, job 2 is half of task 1: only task 2 (job 4) goes
    taken = sweep.backend.withdraw({j: handles[j] for j in (ids[1], ids[2], ids[4])})

    assert taken == {ids[4]}
    accounted = _accounted(slurm_cluster, array)
    assert accounted[f"{array}_2"] == ("CANCELLED", "None assigned"), accounted
    assert f"{array}_1" not in accounted or accounted[f"{array}_1"][0] == "PENDING", accounted

    assert sweep.backend.withdraw({j: handles[j] for j in (ids[2], ids[3])}) == {ids[2], ids[3]}
    assert _accounted(slurm_cluster, array)[f"{array}_1"] == ("CANCELLED", "None assigned")
    assert _accounted(slurm_cluster, array)[f"{array}_0"][0] == "RUNNING"
