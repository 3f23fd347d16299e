"""The retry rule's decisions and records, without a cluster: out of memory is not retried unless
asked (then with more memory), bad retry settings are refused naming the key, and an old state
store (no attempts table) stays readable.

Slurm's answers at a node failure are replayed (:class:`_CannedSlurm`, see its note). A real
out-of-memory end cannot be produced here (the test Slurm cluster enforces no memory
limit), so :class:`_OomBackend` stands in for a backend whose poll reported one: it records what
it is asked to submit, nothing else is simulated. The controller, the retry settings and the
state store are the real ones.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from launcher_core.backends.base import Backend
from launcher_core.backends.slurm.accounting import ExitInfo, SlurmAccounting, SlurmCommands
from launcher_core.backends.slurm.options import SlurmOptions
from launcher_core.controller import LaunchOptions, SweepController
from launcher_core.errors import ConfigError
from launcher_core.jobs import Ending, JobSpec, JobState, JobStatus, LossCause, SweepInfo
from launcher_core.retry import RetrySettings, retry_settings
from launcher_core.state import StateStore

OOM = "out of memory (raise hydra.launcher.mem_gb, or retry_on=[out_of_memory])"


class _OomBackend(Backend):
    """Stands in for a backend that reported a job out of memory (see the module docstring)."""

    name = "oom_standin"

    def __init__(self) -> None:
        self.submitted: list[tuple[str, int, dict[str, Any]]] = []

    def prepare(self, sweep: SweepInfo) -> None:
        """Nothing to prepare."""

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, dict[str, Any]]:
        self.submitted += [(j.job_id, j.attempt, dict(j.resources)) for j in jobs]
        return {j.job_id: {"host": "standin", "attempt": j.attempt} for j in jobs}

    def poll(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, JobStatus]:
        return {}

    def fetch(self, jobs: Mapping[str, Any], local_dirs: Mapping[str, Path], pull_filter: Any = None) -> None:
        """Nothing to fetch."""

    def cancel(self, handles: Mapping[str, dict[str, Any]]) -> None:
        """Nothing to cancel."""

    def retry_resources(self, spec: JobSpec, mem_factor: float) -> dict[str, Any]:
        return {**spec.resources, "mem_gb": spec.resources["mem_gb"] * mem_factor}


def _controller(tmp_path: Path, retry: RetrySettings) -> tuple[SweepController, _OomBackend, JobSpec]:
    store = StateStore.for_sweep_dir(tmp_path)
    spec = JobSpec(job_id="j0", idx=0, overrides=["x=0"], output_dir=tmp_path / "0", resources={"mem_gb": 4})
    backend = _OomBackend()
    controller = SweepController(backend, store, LaunchOptions(retry=retry), SweepInfo("s", tmp_path, tmp_path, "t"))
    controller.plan([spec])
    controller.submit([spec])
    return controller, backend, spec


def test_out_of_memory_is_not_retried_by_default_and_says_what_to_raise(tmp_path: Path, caplog) -> None:
    controller, backend, _spec = _controller(tmp_path, RetrySettings())
    with caplog.at_level(logging.WARNING, logger="launcher_core"):
        assert controller.resubmit({"j0": JobStatus(JobState.FAILED, OOM)}) == {}
    assert backend.submitted == [("j0", 1, {"mem_gb": 4})]  # the first submission only
    assert "hydra.launcher.mem_gb" in caplog.text and "retry_on=[out_of_memory]" in caplog.text
    controller.store.close()


def test_out_of_memory_is_retried_with_more_memory_on_request(tmp_path: Path) -> None:
    retry = RetrySettings(retry_on=frozenset({Ending.OUT_OF_MEMORY}), retry_mem_factor=1.5)
    controller, backend, spec = _controller(tmp_path, retry)
    status = JobStatus(JobState.FAILED, OOM, host="node7")
    assert status.classified() is Ending.OUT_OF_MEMORY
    handles = controller.resubmit({"j0": status})
    assert handles == {"j0": {"host": "standin", "attempt": 2}}
    assert backend.submitted[-1] == ("j0", 2, {"mem_gb": 6.0})
    (row,) = controller.store.jobs()
    assert (row.state, row.attempt, row.handle) == (JobState.SUBMITTED, 2, handles["j0"])
    (first,) = controller.store.attempts()["j0"]
    assert (first.attempt, first.ending, first.exit_reason, first.host) == (1, "out of memory", OOM, "node7")
    controller.store.close()


def test_a_lost_job_is_retried_at_most_max_retries_times(tmp_path: Path) -> None:
    controller, backend, _spec = _controller(tmp_path, RetrySettings(max_retries=1))
    lost = JobStatus.lost(LossCause.NODE_FAILURE, "node failure", "n1")
    assert controller.resubmit({"j0": lost}) != {}
    assert controller.resubmit({"j0": lost}) == {}  # attempt 2 was the last one allowed
    assert [a for _j, a, _r in backend.submitted] == [1, 2]
    controller.store.close()


@pytest.mark.parametrize(
    "params, key",
    [
        ({"max_retries": -1}, "hydra.launcher.max_retries"),
        ({"max_retries": "2"}, "hydra.launcher.max_retries"),
        ({"retry_on": "out_of_memory"}, "hydra.launcher.retry_on"),
        ({"retry_on": ["task_failed"]}, "hydra.launcher.retry_on"),
        ({"retry_mem_factor": 0.5}, "hydra.launcher.retry_mem_factor"),
    ],
)
def test_bad_retry_settings_are_refused_naming_the_key(params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        retry_settings(params)


def test_a_store_without_attempts_is_read_and_upgraded(tmp_path: Path) -> None:
    """A store written before attempts existed: read-only readers see one attempt per job; the
    next writer adds the table and the columns."""
    path = tmp_path / ".launcher" / "state.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, idx INTEGER NOT NULL, overrides TEXT NOT NULL,"
        " output_dir TEXT NOT NULL, state TEXT NOT NULL, handle TEXT, host TEXT, exit_reason TEXT, outcome TEXT,"
        " pull_mode TEXT, created_at REAL NOT NULL, submitted_at REAL, started_at REAL, finished_at REAL,"
        " pulled_at REAL, updated_at REAL NOT NULL);"
        "INSERT INTO jobs VALUES ('a', 0, '[]', '/x', 'pulled', NULL, NULL, NULL, 'completed', 'full',"
        " 1, 1, 1, 2, 3, 3);"
    )
    conn.commit()
    conn.close()
    with StateStore.for_sweep_dir(tmp_path, readonly=True) as old:
        (row,) = old.jobs()
        assert (row.attempt, row.ending, old.attempts()) == (1, None, {})
    with StateStore.for_sweep_dir(tmp_path) as upgraded:
        upgraded.begin_new_attempts(["a"])
        assert upgraded.jobs()[0].attempt == 2
        assert [a.attempt for a in upgraded.attempts()["a"]] == [1]


# --- slurm: lost only when Slurm did not requeue -------------------------------------------------
class _CannedSlurm(SlurmCommands):
    """Answers sacct and squeue with what they printed on the test cluster after ``scontrol update
    NodeName=... State=DOWN`` (accounting says NODE_FAIL while slurmctld has already requeued the
    task, or has not): that moment cannot be produced on purpose on the single test node, which
    returns to service at once, so its output is replayed. Nothing else is simulated."""

    def __init__(self, sacct: str, squeue: str) -> None:
        super().__init__()
        self.answers = {"sacct": sacct, "squeue": squeue}

    def run(self, argv: Sequence[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        self.calls[argv[0]] += 1
        return subprocess.CompletedProcess(list(argv), 0, self.answers.get(argv[0], ""), "")


def _slurm_status(
    sacct: str, squeue: str, exit_file: ExitInfo | None = None, age_s: float = 0.0
) -> tuple[JobStatus, _CannedSlurm]:
    commands = _CannedSlurm(sacct, squeue)
    options = SlurmOptions.from_params({"partition": "debug"})
    handle = {"slurm_job_id": "7_0", "array_job_id": "7", "launcher_dir": "/nowhere/.launcher"}
    handle["submitted_at"] = time.time() - age_s
    files = (lambda handles: {j: exit_file for j in handles}) if exit_file is not None else (lambda _h: {})
    statuses = SlurmAccounting(commands, options).statuses({"j": handle}, files)
    return statuses["j"], commands


def test_slurm_exit_file_of_a_run_lost_with_its_node_is_not_a_completion() -> None:
    """Right after a node failure accounting lists only the array ("7|NODE_FAIL", the task not split
    off yet), and the batch script has recorded exit code 0 (srun returns 0 after "Node failure on
    vm"), without a result: slurmctld (squeue) is asked, and the task is lost, not completed. Both
    outputs as the test cluster printed them."""
    status, commands = _slurm_status(
        "7|NODE_FAIL|0:0|vm|2026-12-07T08:35:46|Unknown\n",
        "7_0|NODE_FAIL|vm|NodeDown\n",
        ExitInfo(0, has_result=False),
    )
    assert (status.state, status.classified(), status.cause) == (JobState.FAILED, Ending.LOST, LossCause.NODE_FAILURE)
    assert commands.calls["squeue"] >= 1


@pytest.mark.parametrize("age_s, state", [(0.0, JobState.SUBMITTED), (600.0, JobState.FAILED)])
def test_slurm_exit_code_0_without_a_result_is_no_completion(age_s: float, state: JobState) -> None:
    """Neither sacct nor squeue knows the task: exit code 0 counts only with the job's result."""
    status, _commands = _slurm_status("", "", ExitInfo(0, has_result=False), age_s)
    assert status.state is state
    done, _commands = _slurm_status("", "", ExitInfo(0, has_result=True))
    assert done.state is JobState.COMPLETED


def test_slurm_node_failure_slurm_requeued_is_followed_not_retried() -> None:
    status, commands = _slurm_status(
        "7_0|NODE_FAIL|0:0|vm|2026-12-07T07:09:51|2026-12-07T07:09:53\n", "7_0|PENDING||BeginTime\n"
    )
    assert status.state is JobState.SUBMITTED and status.classified() is None  # Slurm's requeue runs it
    assert commands.calls["squeue"] == 1


@pytest.mark.parametrize(
    "state, cause",
    [("NODE_FAIL", LossCause.NODE_FAILURE), ("BOOT_FAIL", LossCause.BOOT_FAILURE), ("PREEMPTED", LossCause.PREEMPTED)],
)
def test_slurm_task_not_requeued_is_lost(state: str, cause: LossCause) -> None:
    status, _commands = _slurm_status(
        f"7_0|{state}|0:0|vm|2026-12-07T07:09:51|2026-12-07T07:09:53\n", f"7_0|{state}|vm|NodeDown\n"
    )
    assert (status.state, status.classified(), status.cause) == (JobState.FAILED, Ending.LOST, cause)


def test_slurm_out_of_memory_and_timeout_are_not_lost() -> None:
    oom, _c = _slurm_status("7_0|OUT_OF_MEMORY|0:125|vm|2026-12-07T07:09:51|2026-12-07T07:09:53\n", "")
    assert oom.classified() is Ending.OUT_OF_MEMORY and "retry_on=[out_of_memory]" in (oom.exit_reason or "")
    timeout, _c = _slurm_status("7_0|TIMEOUT|0:0|vm|2026-12-07T07:09:51|2026-12-07T07:09:53\n", "")
    assert timeout.classified() is Ending.TIMED_OUT


def test_a_slurm_retry_gets_its_own_job_table(tmp_path: Path) -> None:
    """Tasks of the first submission that Slurm requeues read their job table when they start
    again: a retry of some of its jobs must not overwrite it. The attempt reaches the job's entry
    (``HYDRA_LAUNCHER_ATTEMPT``). A dry run with an unreachable login_host writes the files only."""
    import json

    from launcher_core.backends.slurm import SlurmBackend
    from tests.test_slurm_units import _specs

    code, sweep_dir = tmp_path / "proj", tmp_path / "proj" / "multirun" / "x"
    options = SlurmOptions.from_params({"login_host": "no-such-host.invalid", "dry_run": True})
    backend = SlurmBackend(options, task_function=len, hydra_context=None)
    specs = _specs(3, sweep_dir)
    backend.prepare(SweepInfo("s1", sweep_dir, code, "app"))
    try:
        backend.write_scripts(specs)
        for spec in specs:
            spec.attempt = 2
        backend.write_scripts([specs[0], specs[2]])
    finally:
        backend.close()
    tables = sweep_dir / ".launcher" / "slurm"
    first = json.loads((tables / "jobs0-2.json").read_text())["jobs"]
    retry = json.loads((tables / "jobs0-2.attempt2.json").read_text())["jobs"]
    assert [e["idx"] for e in first] == [0, 1, 2] and all("attempt" not in e for e in first)
    assert [(e["idx"], e["attempt"]) for e in retry] == [(0, 2), (2, 2)]


@pytest.mark.parametrize(
    "code, tags, cause",
    [
        ("Server.SpotInstanceTermination", [], LossCause.INSTANCE_TERMINATED),
        ("Server.ScheduledStop", [], LossCause.INSTANCE_TERMINATED),
        ("Client.UserInitiatedShutdown", [], LossCause.TERMINATED_OUTSIDE),
        ("Client.UserInitiatedShutdown", [{"Key": "hydra-launcher:terminated-by", "Value": "launcher"}], None),
        ("Client.InstanceInitiatedShutdown", [], None),
        ("", [], None),
    ],
)
def test_which_ec2_instance_endings_lose_their_jobs(code: str, tags: list[dict[str, str]], cause: Any) -> None:
    """EC2's state reason codes (as DescribeInstances gives them; moto makes only the
    UserInitiatedShutdown one, tested end to end in test_retry_lost_ec2.py): AWS's own endings and
    terminate calls the launcher did not make lose the jobs; the launcher's own terminations
    (tagged first) and the instance's own shutdown do not."""
    pytest.importorskip("boto3")
    from launcher_core.backends.ec2.fleet import loss_cause

    instance = {"State": {"Name": "terminated"}, "StateReason": {"Code": code, "Message": code}, "Tags": tags}
    assert loss_cause(instance) is cause
