"""The last exactly-once window: the launching process dies right after the backend accepted a
submission (``sbatch`` returned an array id, ``RunInstances`` an instance id) and before the state
store recorded it. The relaunch finds what was accepted (one ``sacct``, one ``DescribeInstances``)
from the intents recorded before each submission, re-attaches to it and submits only the rest.

The kill is the test hook of :mod:`launcher_core.intents` (an environment variable, no setting):
the launching process SIGKILLs itself at exactly that point. Proofs are real outputs: the arrays
Slurm's accounting holds for the sweep, the instances moto holds, and each job's side effect (a
line in a file outside the job dirs) happening exactly once.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from launcher_core.errors import BackendError
from launcher_core.intents import TEST_KILL_AFTER_SUBMIT_ENV
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.ec2_fixtures import AwsWorld, FaultProxy, multirun, rows, wait_for
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHTestEnv, make_project, shared_file
from tests.test_ec2_hydra import launcher_overrides
from tests.test_exactly_once import N_JOBS, _check_exactly_once, _login_host_overrides, _states

SLEEP_S = 0.4


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", TEST_KILL_AFTER_SUBMIT_ENV)}
    return {**env, **extra}


def _killed_after(argv: list[str], cwd: Path, submissions: int) -> None:
    """Run the launch with the hook set: it must die by SIGKILL after ``submissions`` accepted
    submissions, with none of their jobs recorded as submitted."""
    env = _env(**{TEST_KILL_AFTER_SUBMIT_ENV: str(submissions)})
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-3000:])


def _relaunch(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=240, env=_env())


def _said(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def _open_intents(sweep_dir: Path) -> int:
    with StateStore.for_sweep_dir(sweep_dir) as store:
        return len(store.open_intents())


# --- slurm -----------------------------------------------------------------------------------
def _sacct_arrays(cluster: SlurmCluster, name: str, expected: int) -> dict[str, str]:
    """``{array id: job name}`` of every array whose job name starts with ``name``, from Slurm's
    accounting (waiting, bounded, for it to catch up with slurmctld and hold ``expected``)."""

    def arrays() -> dict[str, str]:
        out = cluster.run("sacct", "-X", "-n", "-P", "-a", "-S", "now-7200", "-o", "JobID,JobName").stdout
        found: dict[str, str] = {}
        for line in out.splitlines():
            job_id, _, job_name = line.partition("|")
            if job_name.startswith(f"{name}.hrl-"):
                found[job_id.split("_")[0]] = job_name
        return found

    wait_for(lambda: len(arrays()) >= expected, 30, f"{expected} arrays in sacct", interval=0.5)
    return arrays()


def _slurm_argv(proj: Path, sweep_dir: Path, record: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        *extra,
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
    ]


def _local_slurm(jobs_per_task: int, max_array_size: int) -> list[str]:
    return [
        "hydra/launcher=slurm",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.array_parallelism=2",
        f"hydra.launcher.jobs_per_task={jobs_per_task}",
        f"hydra.launcher.max_array_size={max_array_size}",
    ]


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.parametrize(
    "jobs_per_task, max_array_size, killed_after, arrays",
    [
        (1, 3, 1, 3),  # 3 arrays (3 + 3 + 2 jobs): killed once the first was accepted
        (1, 3, 2, 3),  # ... once the second was: two to adopt, one never submitted
        (2, 4, 1, 1),  # one array (4 tasks x 2 jobs), accepted: the relaunch submits nothing at all
        (3, 2, 1, 2),  # packed: 2 arrays of 2 tasks x 3 jobs (6 + 2 jobs)
    ],
)
def test_slurm_array_accepted_before_the_store_recorded_it_is_not_submitted_again(
    jobs_per_task: int,
    max_array_size: int,
    killed_after: int,
    arrays: int,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
) -> None:
    proj = make_project(tmp_path / "proj")
    record = tmp_path / "executions.txt"
    sweep_dir = proj / "multirun" / "s"
    name = f"win-{secrets.token_hex(3)}"
    argv = _slurm_argv(proj, sweep_dir, record, name, *_local_slurm(jobs_per_task, max_array_size))
    _killed_after(argv, proj, killed_after)
    assert len(_sacct_arrays(slurm_cluster, name, killed_after)) == killed_after  # accepted by Slurm ...
    assert set(_states(sweep_dir)) == {JobState.PENDING}  # ... and never recorded as submitted
    assert _open_intents(sweep_dir) == killed_after  # each recorded before its sbatch

    proc = _relaunch(argv, proj)
    _check_exactly_once(proc, sweep_dir, record)
    found = _sacct_arrays(slurm_cluster, name, arrays)
    assert len(found) == arrays, found  # nothing submitted twice
    adopted = min(killed_after * max_array_size * jobs_per_task, N_JOBS)
    assert f"{adopted} jobs an interrupted launch submitted but had not recorded were found" in _said(proc)
    assert _open_intents(sweep_dir) == 0
    assert slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.ssh
def test_slurm_login_host_array_accepted_before_the_store_recorded_it_is_not_submitted_again(
    slurm_cluster: SlurmCluster, ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    proj = make_project(tmp_path / "proj")
    record = shared_file("hrl-window-login")
    sweep_dir = proj / "multirun" / "s"
    name = f"winl-{secrets.token_hex(3)}"
    login = [*_login_host_overrides(slurm_cluster, ssh_env, f"window-{name}"), "hydra.launcher.max_array_size=3"]
    argv = _slurm_argv(proj, sweep_dir, record, name, *login)
    _killed_after(argv, proj, 2)
    assert len(_sacct_arrays(slurm_cluster, name, 2)) == 2
    assert set(_states(sweep_dir)) == {JobState.PENDING}

    proc = _relaunch(argv, proj)
    _check_exactly_once(proc, sweep_dir, record)
    assert len(_sacct_arrays(slurm_cluster, name, 3)) == 3
    assert "6 jobs an interrupted launch submitted but had not recorded were found" in _said(proc)


# --- ec2 (moto) ------------------------------------------------------------------------------
def _ec2_argv(aws: AwsWorld, proj: Path, sweep_dir: Path, record: Path, **settings: Any) -> list[str]:
    launcher = aws.launcher_settings(code_dir=str(proj), **settings)
    return [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=ec2",
        *launcher_overrides(launcher),
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
    ]


@pytest.mark.slow
@pytest.mark.ec2
@pytest.mark.parametrize("killed_after, instances", [(1, 2), (2, 2)])
def test_ec2_instance_started_before_the_store_recorded_it_is_not_started_again(
    killed_after: int, instances: int, aws: AwsWorld
) -> None:
    """moto stores a RunInstances ClientToken but does not act on it (a second call with the same
    token starts a second instance), so what keeps the instance single here is the lookup by the
    intent tag; on AWS the token also guards the retries of one call."""
    proj = make_project(aws.tmp / "proj")
    record = aws.tmp / "executions.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = _ec2_argv(aws, proj, sweep_dir, record, jobs_per_instance=N_JOBS // instances, max_instances=instances)
    _killed_after(argv, proj, killed_after)
    started = aws.instances()
    assert len(started) == killed_after
    assert set(_states(sweep_dir)) == {JobState.PENDING}
    tags = [{t["Key"]: t["Value"] for t in inst.get("Tags", [])} for inst in started.values()]
    assert all(t.get("hydra-launcher:intent") for t in tags), tags

    proc = _relaunch(argv, proj)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = Counter(int(line.split()[0]) for line in record.read_text().splitlines())
    assert ran == dict.fromkeys(range(N_JOBS), 1), f"executions per job: {dict(ran)}"
    assert set(_states(sweep_dir)) == {JobState.PULLED}
    assert len(aws.instances()) == instances  # nothing started twice
    adopted = killed_after * (N_JOBS // instances)
    assert f"{adopted} jobs an interrupted launch submitted but had not recorded were found" in _said(proc)
    assert _open_intents(sweep_dir) == 0
    aws.runner.wait_idle(30)
    wait_for(lambda: not aws.running_instances(), 15, "the instances to terminate themselves")


@pytest.mark.slow
@pytest.mark.ec2
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_ec2_request_that_failed_is_made_again_with_the_same_client_token(
    aws: AwsWorld, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second RunInstances of a launch fails (as a call cut off after AWS may have accepted
    it): its intent stays open. The relaunch finds no instance with its tag and asks again for
    the same jobs with the same ClientToken (moto keeps the token on the instance), so on AWS an
    instance accepted after all is never doubled."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", fault_proxy.url)
    launcher = aws.launcher_settings(endpoint_url=None, api_retries=1)
    sweep_dir = aws.tmp / "sweep"
    fault_proxy.fail("RunInstances", "InternalError", times=1, after=1, status=500)
    with pytest.raises(BackendError, match="InternalError"):
        multirun(sweep_dir, launcher, ["x=1,2"])
    with StateStore.for_sweep_dir(sweep_dir) as store:
        (failed,) = store.open_intents()  # the first instance was terminated: its intent discarded
    assert {row.state for row in rows(sweep_dir).values()} == {JobState.PENDING}

    returns = multirun(sweep_dir, launcher, ["x=1,2"])
    assert [r.return_value["x"] for r in returns] == [1, 2]
    tokens = {
        {t["Key"]: t["Value"] for t in inst["Tags"]}["hydra-launcher:intent"]: inst.get("ClientToken")
        for inst in aws.instances().values()
    }
    assert len(tokens) == 3  # the terminated first one, and the two of the relaunch
    assert tokens[failed.key] == f"hrl-{failed.key}"  # the failed request's token, made again
    assert _open_intents(sweep_dir) == 0
    aws.runner.wait_idle(30)


def test_arrays_are_found_by_job_name_in_sacct_and_squeue_output() -> None:
    from launcher_core.backends.slurm.accounting import parse_named_arrays

    sacct = "41_0|app.hrl-aaa\n41_[1-2%2]|app.hrl-aaa\n42_[0-3]|app.hrl-bbb\n43_0|other\n"
    squeue = "44|app.hrl-ccc\n"
    names = ["app.hrl-aaa", "app.hrl-bbb", "app.hrl-ccc", "app.hrl-ddd"]
    assert parse_named_arrays(sacct + squeue, names) == {"app.hrl-aaa": "41", "app.hrl-bbb": "42", "app.hrl-ccc": "44"}


def test_intents_are_kept_until_closed_and_survive_reopening_the_store(tmp_path: Path) -> None:
    from launcher_core.intents import SubmitIntent

    with StateStore.for_sweep_dir(tmp_path) as store:
        store.record_intent(SubmitIntent("k1", "app.hrl-k1", {"j1": {"array_index": 0}}, launch_id="L1"))
        store.record_intent(SubmitIntent("k2", "app.hrl-k2", {"j2": {"array_index": 0}}, launch_id="L1"))
        store.close_intents(["k1"])
    with StateStore.for_sweep_dir(tmp_path) as store:
        (left,) = store.open_intents()
    assert (left.key, left.tag, left.launch_id) == ("k2", "app.hrl-k2", "L1")
    assert dict(left.handles) == {"j2": {"array_index": 0}}
    assert left.created_at > 0
