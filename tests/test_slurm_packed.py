"""slurm ``jobs_per_task``: several short jobs run one after another in one array task, each with
its own output dir, result, logs and state, against the real single-node cluster."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core.backends.slurm import EXIT_FILE
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.slurm_cluster import CommandLog, SlurmCluster, launch_sweep, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


def _overrides(sweep_dir: Path, *extra: str) -> list[str]:
    return [
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
        *extra,
    ]


def _rows(sweep_dir: Path) -> dict[int, tuple[JobState, JobState | None, str | None, dict]]:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {r.idx: (r.state, r.outcome, r.exit_reason, r.handle or {}) for r in store.jobs()}


def _runs(sweep_dir: Path, idx: int) -> int:
    path = sweep_dir / str(idx) / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.timeout(180)
def test_packed_jobs_keep_their_own_result_logs_and_state(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        import os

        print(f"job x={cfg.x} says hello")
        if cfg.x == 5:
            raise ValueError("job 5 fails on its own")
        return {"x": cfg.x, "pid": os.getpid(), "task": os.environ["SLURM_ARRAY_TASK_ID"]}

    n, per_task = 10, 4
    sweep = tmp_path / "sweep"
    overrides = _overrides(sweep, f"hydra.launcher.jobs_per_task={per_task}")
    returns = launch_sweep(task, [[f"+x={i}"] for i in range(n)], overrides)

    assert [r.status for r in returns] == [JobStatus.FAILED if i == 5 else JobStatus.COMPLETED for i in range(n)]
    values = {i: r.return_value for i, r in enumerate(returns) if i != 5}
    assert [v["x"] for v in values.values()] == [i for i in range(n) if i != 5]
    assert {i: int(v["task"]) for i, v in values.items()} == {i: i // per_task for i in values}  # 3 tasks
    assert len({v["pid"] for v in values.values()}) == n - 1  # a process per job (forked)
    with pytest.raises(ValueError, match="job 5 fails on its own"):
        _ = returns[5].return_value
    assert slurm_calls.calls("sbatch") == 1
    rows = _rows(sweep)
    assert {i: (s, o) for i, (s, o, _r, _h) in rows.items()} == {
        i: (JobState.PULLED, JobState.FAILED if i == 5 else JobState.COMPLETED) for i in range(n)
    }
    assert rows[5][2] == "ValueError: job 5 fails on its own"
    assert {h["slurm_job_id"] for _s, _o, _r, h in rows.values()} == {
        f"{rows[0][3]['array_job_id']}_{t}" for t in range(math.ceil(n / per_task))
    }
    # sacct has one array task per pack, and the failed job fails its task
    array = rows[0][3]["array_job_id"]
    wanted = {f"{array}_0": "COMPLETED", f"{array}_1": "FAILED", f"{array}_2": "COMPLETED"}
    deadline = time.monotonic() + 30  # slurmdbd may hold the array as one record for a moment
    while True:
        out = slurm_cluster.run("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array).stdout
        tasks = dict(line.split("|") for line in out.splitlines())
        if tasks == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert tasks == wanted
    for i in range(n):  # each job's own logs, exit file and code record
        launcher_dir = sweep / str(i) / ".launcher"
        assert f"job x={i} says hello" in (launcher_dir / "stdout.log").read_text()
        assert (launcher_dir / EXIT_FILE).read_text().split() == ["1" if i == 5 else "0", slurm_cluster.hostname]
        assert (launcher_dir / "code.json").exists()
    assert "ValueError: job 5 fails on its own" in (sweep / "5" / ".launcher" / "stderr.log").read_text()


@pytest.mark.timeout(240)
def test_a_requeued_pack_reruns_only_its_unfinished_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A preemption notice stops the task in its second job: after the requeue the first job is
    not run again, the second runs again (from its checkpoint) and the third runs once."""

    def task(cfg):
        import time
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
        with open(out / "runs.txt", "a") as f:
            f.write("run\n")
        if cfg.x == 1:
            ckpt = out / "checkpoint.txt"
            if ckpt.exists():
                return "resumed"
            ckpt.write_text("step 3")
            time.sleep(300)
        return "done"

    sweep = tmp_path / "sweep"
    jobs = [[f"+x={i}"] for i in range(3)]
    launch_sweep(task, jobs, _overrides(sweep, "hydra.launcher.jobs_per_task=3", "hydra.launcher.wait=false"))
    wait_until("job 1 checkpointed", lambda: (sweep / "1" / "checkpoint.txt").exists(), 60, 0.2)
    task_id = _rows(sweep)[0][3]["slurm_job_id"]
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", task_id)  # what a preemption notice sends

    returns = launch_sweep(task, jobs, _overrides(sweep, "hydra.launcher.jobs_per_task=3"))  # re-attaches
    assert [r.return_value for r in returns] == ["done", "resumed", "done"]
    assert [_runs(sweep, i) for i in range(3)] == [1, 2, 1]
    task_logs = list((sweep / ".launcher" / "slurm" / "tasks").glob("*.0/stderr.log"))
    assert len(task_logs) == 1 and "preemption: stopping the task and requeueing it" in task_logs[0].read_text()
    assert "job #0 finished in an earlier run: skipped" in task_logs[0].with_name("stdout.log").read_text()


@pytest.mark.timeout(240)
def test_relaunch_with_skip_completed_packs_only_the_failed_jobs(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
        with open(out / "runs.txt", "a") as f:
            f.write("run\n")
        fail_flag = out.parent / f"fail-{cfg.x}"
        if fail_flag.exists():
            fail_flag.unlink()
            raise RuntimeError("transient")
        return cfg.x

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for i in (2, 5):
        (sweep / f"fail-{i}").write_text("")
    jobs = [[f"+x={i}"] for i in range(6)]
    extra = ("hydra.launcher.jobs_per_task=2", "hydra.launcher.skip_completed=true")
    first = launch_sweep(task, jobs, _overrides(sweep, *extra))
    assert [r.status for r in first].count(JobStatus.FAILED) == 2
    slurm_calls.reset()

    second = launch_sweep(task, jobs, _overrides(sweep, *extra))
    assert [r.return_value for r in second] == list(range(6))
    assert [_runs(sweep, i) for i in range(6)] == [1, 1, 2, 1, 1, 2]  # only the failed ones again
    assert slurm_calls.calls("sbatch") == 1
    handles = {i: h for i, (_s, _o, _r, h) in _rows(sweep).items()}
    assert handles[2]["slurm_job_id"] == handles[5]["slurm_job_id"]  # the two reruns share one task


@pytest.mark.timeout(240)
def test_packed_tasks_still_get_distinct_gpus(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Slurm hands out GPUs to tasks (gres; the test cluster's 4 GPUs are empty device files, so
    no CUDA_VISIBLE_DEVICES is set: each job reads its task's GPU index from ``scontrol -d``). The
    jobs of a packed task run one after another on their task's GPU, and tasks running at the same
    time never hold the same GPU. runtime/gpus.py takes no lock here: Slurm is the allocator."""

    def task(cfg):
        import os
        import re
        import subprocess
        import time

        started = time.time()
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        shown = subprocess.run(
            ["scontrol", "-d", "show", "job", job], capture_output=True, text=True, timeout=30
        ).stdout
        time.sleep(1.5)
        return {
            "gpus": re.findall(r"gpu(?::[^(\s]*)?\(IDX:([0-9,-]+)\)", shown),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "task": os.environ["SLURM_ARRAY_TASK_ID"],
            "started": started,
            "ended": time.time(),
        }

    sweep = tmp_path / "sweep"
    extra = ("hydra.launcher.jobs_per_task=2", "hydra.launcher.gpus_per_node=1", "hydra.launcher.array_parallelism=4")
    returns = launch_sweep(task, [[f"+x={i}"] for i in range(8)], _overrides(sweep, *extra))
    assert all(r.status == JobStatus.COMPLETED for r in returns), [r._return_value for r in returns]
    seen = [r.return_value for r in returns]
    assert all(len(s["gpus"]) == 1 and "," not in s["gpus"][0] for s in seen), str([s["gpus"] for s in seen])
    overlapping = 0
    for a, x in enumerate(seen):
        for y in seen[a + 1 :]:
            if x["started"] < y["ended"] and y["started"] < x["ended"]:
                overlapping += 1
                assert x["task"] != y["task"] and x["gpus"] != y["gpus"], (x, y)
            if x["task"] == y["task"]:
                assert (x["gpus"], x["cuda"]) == (y["gpus"], y["cuda"]), (x, y)  # the task's GPU, in turn
    assert overlapping > 0  # tasks did run side by side
