"""slurm backend against a real single-node Slurm cluster (tests/slurm_cluster.py).

Each test launches through ``hydra/launcher=slurm`` in this process (``launch_sweep``) and checks
three views of the same jobs: what Hydra gets back, what the state store says, what sacct says.
Task functions are nested functions so that cloudpickle ships them by value.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core.backends import backend_for_meta
from launcher_core.backends.slurm import EXIT_FILE, TIMEOUTS_FILE
from launcher_core.controller import DetachedResult
from launcher_core.errors import ConfigError
from launcher_core.jobs import RESULT_FILE, JobState
from launcher_core.runtime.worker import JobLostError, JobTimeoutError
from launcher_core.state import StateStore
from tests.slurm_cluster import TEST_MAX_ARRAY_SIZE, CommandLog, SlurmCluster, launch_sweep, wait_until

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


_UNFINISHED = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "SUSPENDED", "RESIZING")


def _sacct_states(cluster: SlurmCluster, sweep_dir: Path, timeout_s: float = 60) -> dict[int, str]:
    """sacct's final state of every job of the sweep, by job number: waits (bounded) for accounting,
    which may lag behind slurmctld under load, to know every job as finished."""
    rows = _rows(sweep_dir)
    ids = {h["slurm_job_id"]: idx for idx, (_s, _o, _r, h) in rows.items()}
    arrays = sorted({i.split("_")[0] for i in ids})

    def query() -> dict[int, str] | None:
        out = cluster.run("sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(arrays)).stdout
        states = {}
        for line in out.splitlines():
            job, state, code = line.split("|")
            if job in ids:
                states[ids[job]] = f"{state.split()[0]} {code}"
        finished = len(states) == len(ids) and not any(v.startswith(_UNFINISHED) for v in states.values())
        return states if finished else None

    return wait_until("sacct knows every job as finished", query, timeout_s)


@pytest.mark.timeout(180)
def test_sweep_returns_values_through_split_arrays(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        import os
        import socket

        return {"x": cfg.x, "node": socket.gethostname(), "array_task": os.environ["SLURM_ARRAY_TASK_ID"]}

    n = 12
    sweep = tmp_path / "sweep"
    returns = launch_sweep(task, [[f"+x={i}"] for i in range(n)], _overrides(sweep))

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * n
    assert [r.return_value["x"] for r in returns] == list(range(n))
    # array index i of chunk k runs job k * MaxArraySize + i
    assert [int(r.return_value["array_task"]) for r in returns] == [i % TEST_MAX_ARRAY_SIZE for i in range(n)]
    assert slurm_calls.calls("sbatch") == math.ceil(n / TEST_MAX_ARRAY_SIZE) == 3
    # each poll is one sacct naming every array with unfinished jobs (all three at first); no squeue
    polls = [line for line in slurm_calls.lines("sacct") if "-o JobID,State" in line]  # not the pre-flight's
    arrays_per_call = [len(line.split(" -j ")[1].split(",")) for line in polls]
    assert arrays_per_call[0] == 3 and arrays_per_call == sorted(arrays_per_call, reverse=True)
    assert [line for line in slurm_calls.lines("squeue") if "-o %i" not in line] == []  # the pre-flight's only
    rows = _rows(sweep)
    assert {(state, outcome) for state, outcome, _r, _h in rows.values()} == {(JobState.PULLED, JobState.COMPLETED)}
    assert set(_sacct_states(slurm_cluster, sweep).values()) == {"COMPLETED 0:0"}
    handle = rows[7][3]
    assert handle["slurm_job_id"].endswith("_2") and handle["chunk_offset"] == 5


@pytest.mark.timeout(120)
def test_failing_task_is_failed_in_sacct_store_and_job_return(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    def task(cfg):
        if cfg.x == 1:
            raise ValueError(f"bad value x={cfg.x}")
        return cfg.x * 10

    sweep = tmp_path / "sweep"
    returns = launch_sweep(task, [["+x=0"], ["+x=1"]], _overrides(sweep))

    assert returns[0].status == JobStatus.COMPLETED and returns[0].return_value == 0
    assert returns[1].status == JobStatus.FAILED
    with pytest.raises(ValueError, match="bad value x=1"):
        _ = returns[1].return_value
    rows = _rows(sweep)
    assert rows[1][1] is JobState.FAILED and rows[0][1] is JobState.COMPLETED
    assert "ValueError: bad value x=1" in (rows[1][2] or "") or rows[1][2] == "task raised an exception"
    assert _sacct_states(slurm_cluster, sweep) == {0: "COMPLETED 0:0", 1: "FAILED 1:0"}
    # the exit code and the node, written by the batch script (what a lagging sacct cannot tell yet)
    assert (sweep / "1" / ".launcher" / EXIT_FILE).read_text().split() == ["1", slurm_cluster.hostname]


def _ranked_task(cfg):
    """Every task (rank) of the job runs this: it leaves ``rank<N>.txt`` in the job's output dir.
    mode ok: both ranks return; raise1: rank 1 raises while rank 0 blocks (as in a collective
    waiting for its peer); kill1: rank 1 is SIGKILLed once rank 0 has written its result."""
    import os
    import signal
    import time
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    rank = int(os.environ["SLURM_PROCID"])
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / f"rank{rank}.txt").write_text(f"{os.environ['SLURM_LOCALID']} {os.environ['SLURM_NTASKS']}")
    if cfg.mode == "raise1" and rank == 1:
        raise ValueError("rank 1 failed")
    if cfg.mode == "raise1":
        time.sleep(300)
        (out / "rank0-end.txt").write_text("rank 0 was not stopped")
    if cfg.mode == "kill1" and rank == 1:
        deadline = time.monotonic() + 60
        while not (out / ".launcher" / "result.pkl").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"rank": rank, "ntasks": int(os.environ["SLURM_NTASKS"])}


@pytest.mark.timeout(150)
def test_every_rank_runs_rank_0_returns_and_any_failed_rank_fails_the_job(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """tasks_per_node=2: both tasks run the function (each sees its SLURM_PROCID), Hydra gets rank
    0's value; a failure on rank 1 alone fails the job with rank 1's exception and stops rank 0
    (srun --kill-on-bad-exit) instead of leaving it to the time limit; a rank killed without a
    result fails the job even though rank 0 completed."""
    sweep = tmp_path / "sweep"
    jobs = [["+mode=ok"], ["+mode=raise1"], ["+mode=kill1"]]
    returns = launch_sweep(_ranked_task, jobs, _overrides(sweep, "hydra.launcher.tasks_per_node=2"))

    for num in range(3):  # both ranks ran in every job
        ranks = {p.name: p.read_text() for p in (sweep / str(num)).glob("rank?.txt")}
        assert ranks == {"rank0.txt": "0 2", "rank1.txt": "1 2"}, num
    assert returns[0].status == JobStatus.COMPLETED and returns[0].return_value == {"rank": 0, "ntasks": 2}
    assert returns[1].status == JobStatus.FAILED
    with pytest.raises(ValueError, match="rank 1 failed") as raised:
        _ = returns[1].return_value
    assert "(raised by task rank 1)" in getattr(raised.value, "__notes__", [])
    assert not (sweep / "1" / "rank0-end.txt").exists()
    assert returns[2].status == JobStatus.FAILED
    with pytest.raises(JobLostError, match="without writing a result"):
        _ = returns[2].return_value
    assert (sweep / "2" / ".launcher" / "ranks" / "result.0.pkl").exists()  # rank 0's, set aside
    rows = _rows(sweep)
    assert [rows[i][1] for i in range(3)] == [JobState.COMPLETED, JobState.FAILED, JobState.FAILED]
    sacct = _sacct_states(slurm_cluster, sweep)
    assert sacct[0] == "COMPLETED 0:0" and sacct[1].startswith("FAILED") and sacct[2].startswith("FAILED")


def _timed_task(cfg):
    """Sleeps cfg.s, appends "<x> <start> <end>" (wall clock) to cfg.record, then fails if x == cfg.fail."""
    import os
    import time

    start = time.time()
    time.sleep(cfg.s)
    fd = os.open(cfg.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{cfg.x} {start} {time.time()}\n".encode())
    finally:
        os.close(fd)
    if cfg.x == cfg.fail:
        raise ValueError(f"job {cfg.x} failed")
    return cfg.x


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at t comes before a start at t)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _t, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(240)
def test_arrays_chained_with_afterany_keep_array_parallelism_across_the_sweep(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    """12 jobs, MaxArraySize 5 (3 arrays), array_parallelism=3: each array is submitted with
    --dependency=afterany on the one before, so no more than 3 tasks of the sweep run at once and
    an array starts only when the previous one has ended. Job 1 (first array) fails: the next
    arrays still run (afterany, not afterok) and every other job completes with its value."""
    n, parallelism = 12, 3
    sweep = tmp_path / "sweep"
    record = tmp_path / "record.txt"
    jobs = [[f"+x={i}", "+s=3", "+fail=1", f"+record={record}"] for i in range(n)]
    overrides = _overrides(sweep, f"hydra.launcher.array_parallelism={parallelism}")
    returns = launch_sweep(_timed_task, jobs, overrides)

    assert [r.status for r in returns] == [JobStatus.COMPLETED] + [JobStatus.FAILED] + [JobStatus.COMPLETED] * (n - 2)
    assert [r.return_value for i, r in enumerate(returns) if i != 1] == [i for i in range(n) if i != 1]
    with pytest.raises(ValueError, match="job 1 failed"):
        _ = returns[1].return_value
    sacct = _sacct_states(slurm_cluster, sweep)
    assert sacct == {i: "FAILED 1:0" if i == 1 else "COMPLETED 0:0" for i in range(n)}

    # the dependency: array k+1 was submitted with afterany on array k (as the state store knows them)
    arrays = sorted({h["array_job_id"] for _s, _o, _r, h in _rows(sweep).values()}, key=int)
    sbatch = slurm_calls.lines("sbatch")
    assert len(arrays) == len(sbatch) == 3
    assert "--dependency" not in sbatch[0]
    assert [line.split()[2] for line in sbatch[1:]] == [f"--dependency=afterany:{a}" for a in arrays[:2]]
    # ... and what it did: at most `parallelism` tasks at once, each array after the previous one ended
    times = {
        int(x): (float(start), float(end))
        for x, start, end in (line.split() for line in record.read_text().splitlines())
    }
    assert sorted(times) == list(range(n))
    assert 2 <= _max_overlap(list(times.values())) <= parallelism
    chunks = [range(0, 5), range(5, 10), range(10, 12)]
    for before, after in zip(chunks, chunks[1:]):
        assert max(times[i][1] for i in before) < min(times[i][0] for i in after), times


@pytest.mark.timeout(120)
def test_wait_false_reattaches_and_cancel_from_stored_config(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        import time

        time.sleep(cfg.s)
        return cfg.x

    sweep = tmp_path / "sweep"
    jobs = [["+x=0", "+s=300"], ["+x=1", "+s=300"]]
    returns = launch_sweep(task, jobs, _overrides(sweep, "hydra.launcher.wait=false"))
    assert all(isinstance(r.return_value, DetachedResult) for r in returns)
    assert slurm_calls.calls("sbatch") == 1

    launch_sweep(task, jobs, _overrides(sweep, "hydra.launcher.wait=false"))  # a relaunch re-attaches
    assert slurm_calls.calls("sbatch") == 1

    # another process (status, pull, cancel) rebuilds the backend from the stored meta
    with StateStore.for_sweep_dir(sweep) as store:
        meta = store.meta()
        handles = {r.job_id: r.handle for r in store.jobs()}
    assert meta["backend"] == "slurm" and "env" not in meta["backend_config"]
    backend = backend_for_meta(meta)
    wait_until("jobs running", lambda: all(s.state is JobState.RUNNING for s in backend.poll(handles).values()), 60)
    backend.cancel(handles)
    statuses = wait_until(
        "jobs cancelled",
        lambda: (st := backend.poll(handles)) and all(s.state is JobState.CANCELLED for s in st.values()) and st,
        60,
    )
    assert all(s.exit_reason for s in statuses.values())
    assert {v.split()[0] for v in _sacct_states(slurm_cluster, sweep).values()} == {"CANCELLED"}


def _handles(sweep: Path) -> dict[str, dict]:
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        return {r.job_id: r.handle for r in store.jobs() if r.handle}


def _jobs(sweep: Path) -> dict[int, tuple[str, dict]]:
    """``{job number: (job id, handle)}`` from the state store."""
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        return {r.idx: (r.job_id, r.handle or {}) for r in store.jobs()}


@pytest.mark.timeout(120)
def test_preemption_notice_requeues_and_task_resumes_from_checkpoint(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        import os
        import time
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig

        ckpt = Path(HydraConfig.get().runtime.output_dir) / "checkpoint.txt"
        if ckpt.exists():
            return f"resumed from {ckpt.read_text()} at restart {os.environ.get('SLURM_RESTART_COUNT')}"
        ckpt.write_text("step 7")
        time.sleep(300)
        return "never"

    sweep = tmp_path / "sweep"
    jobs = [["+x=0"]]
    launch_sweep(task, jobs, _overrides(sweep, "hydra.launcher.wait=false"))
    wait_until("checkpoint written", lambda: (sweep / "0" / "checkpoint.txt").exists(), 60, 0.2)
    slurm_id = _rows(sweep)[0][3]["slurm_job_id"]
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", slurm_id)  # what a preemption notice sends

    returns = launch_sweep(task, jobs, _overrides(sweep))  # re-attaches and waits
    assert returns[0].status == JobStatus.COMPLETED
    assert returns[0].return_value == "resumed from step 7 at restart 1"
    launcher_dir = sweep / "0" / ".launcher"
    assert "preemption: stopping the task and requeueing it" in (launcher_dir / "stderr.log").read_text()
    assert not (launcher_dir / TIMEOUTS_FILE).exists()  # preemptions do not count against max_num_timeout
    # the requeue hold (~120 s) was lifted by the poll
    assert any(line.startswith(f"scontrol update JobId={slurm_id}") for line in slurm_calls.lines("scontrol"))


@pytest.mark.timeout(120)
def test_notice_during_set_up_requeues_before_the_task_starts(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A SIGUSR2 that reaches the batch shell while it still runs `setup` lines (module loads can take
    long; slurmctld's time-limit check may signal right after the start) must not kill it (bash's
    default for SIGUSR2): the job is requeued before its task starts, and its next run completes."""

    def task(cfg):
        import os
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig

        out = Path(HydraConfig.get().runtime.output_dir)
        (out / f"ran-{os.environ.get('SLURM_RESTART_COUNT', '0')}.txt").write_text("")
        return "ran"

    sweep = tmp_path / "sweep"
    overrides = _overrides(sweep, "hydra.launcher.setup=['sleep 8']")
    launch_sweep(task, [["+x=0"]], [*overrides, "hydra.launcher.wait=false"])
    stderr = sweep / "0" / ".launcher" / "stderr.log"
    wait_until("batch script in its set-up", lambda: stderr.exists() and "(restart 0)" in stderr.read_text(), 60, 0.1)
    slurm_cluster.run("scancel", "--batch", "--signal=USR2", _rows(sweep)[0][3]["slurm_job_id"])

    returns = launch_sweep(task, [["+x=0"]], overrides)  # re-attaches and waits
    log = stderr.read_text()
    assert returns[0].status == JobStatus.COMPLETED and returns[0].return_value == "ran", log
    assert sorted(p.name for p in (sweep / "0").glob("ran-*.txt")) == ["ran-1.txt"]  # the first run never ran it
    assert "preemption: stopping the task and requeueing it" in log and "(restart 1)" in log


@pytest.mark.timeout(420)
def test_timeout_requeues_up_to_max_num_timeout_then_fails(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """timeout_min=1, signal_delay_s=50: slurmctld checks time limits every 30 s and signals up to
    30 s early, so SIGUSR2 comes at its first check of each run, 0-30 s in (possibly while the batch
    script still sets up). Job 0 resumes after one requeue; job 1 never ends, is requeued once
    (max_num_timeout=1), then runs into the time limit (killed 60-90 s into its second run).

    Nothing here sleeps for a fixed time: the launch waits on Slurm's states; the bound (420 s, incl.
    the cluster's start when this test runs first) is ~3x the slowest legitimate course (~140 s)."""

    def task(cfg):
        import os
        import time

        if cfg.x == 0 and os.environ.get("SLURM_RESTART_COUNT"):
            return "resumed"
        time.sleep(600)
        return "never"

    sweep = tmp_path / "sweep"
    overrides = _overrides(
        sweep,
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=50",
        "hydra.launcher.max_num_timeout=1",
    )
    started = time.monotonic()
    returns = launch_sweep(task, [["+x=0"], ["+x=1"]], overrides)
    elapsed = time.monotonic() - started
    logs = {num: (sweep / str(num) / ".launcher" / "stderr.log").read_text() for num in (0, 1)}

    assert returns[0].status == JobStatus.COMPLETED and returns[0].return_value == "resumed", logs[0]
    assert returns[1].status == JobStatus.FAILED, logs[1]
    with pytest.raises(JobTimeoutError):
        _ = returns[1].return_value
    rows = _rows(sweep)
    assert rows[1][1] is JobState.FAILED and (rows[1][2] or "").startswith("timeout"), rows[1]
    for num in (0, 1):
        assert (sweep / str(num) / ".launcher" / TIMEOUTS_FILE).read_text().strip() == "1", logs[num]
        assert logs[num].count("timeout: stopping the task and requeueing it") == 1, logs[num]
    assert "not requeued (1 requeues after timeouts, max_num_timeout=1;" in logs[1]
    assert _sacct_states(slurm_cluster, sweep)[1].startswith("TIMEOUT")
    assert elapsed > 60


@pytest.mark.timeout(120)
def test_without_sacct_squeue_and_exit_files_decide(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        import time

        if cfg.x == 1:
            raise ValueError("no accounting, still failed")
        if cfg.x == 2:
            time.sleep(300)
        return cfg.x

    sweep = tmp_path / "sweep"
    jobs = [["+x=0"], ["+x=1"], ["+x=2"]]
    slurm_cluster.stop_slurmdbd()
    try:
        assert not slurm_cluster.sacct_works()
        launch_sweep(task, jobs, _overrides(sweep, "hydra.launcher.wait=false"))
        with StateStore.for_sweep_dir(sweep, readonly=True) as store:
            backend = backend_for_meta(store.meta())
        job_id, handle = _jobs(sweep)[2]
        wait_until("job 2 running", lambda: backend.poll({job_id: handle})[job_id].state is JobState.RUNNING, 60)
        backend.cancel({job_id: handle})
        returns = launch_sweep(task, jobs, _overrides(sweep))  # re-attaches, never hangs
        # a job neither sacct nor squeue knows: its exit file decides, or it is lost after a while
        ghost = {"slurm_job_id": "999999_0", "array_job_id": "999999", "launcher_dir": str(tmp_path / "ghost")}
        (tmp_path / "ghost").mkdir()
        assert backend.poll({"g": {**ghost, "submitted_at": time.time()}})["g"].state is JobState.SUBMITTED
        lost = backend.poll({"g": {**ghost, "submitted_at": time.time() - 3600}})["g"]
        assert lost.state is JobState.FAILED and "without an exit code" in (lost.exit_reason or "")
        (tmp_path / "ghost" / EXIT_FILE).write_text("0 ghost-node\n")
        no_result = backend.poll({"g": ghost})["g"]  # exit 0 without the job's result: no completion
        assert no_result.state is JobState.FAILED and "without a result" in (no_result.exit_reason or "")
        (tmp_path / "ghost" / RESULT_FILE).write_bytes(b"")
        done = backend.poll({"g": ghost})["g"]
        assert done.state is JobState.COMPLETED and done.host == "ghost-node"  # where it ran, from its exit file
    finally:
        slurm_cluster.restart_slurmdbd()
    assert returns[0].status == JobStatus.COMPLETED and returns[0].return_value == 0
    assert returns[1].status == JobStatus.FAILED
    with pytest.raises(ValueError, match="no accounting, still failed"):
        _ = returns[1].return_value
    assert returns[2].status == JobStatus.FAILED
    with pytest.raises(JobLostError, match="cancelled"):
        _ = returns[2].return_value
    rows = _rows(sweep)
    assert [rows[i][1] for i in range(3)] == [JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED]
    assert slurm_calls.calls("squeue") > 0 and (sweep / "1" / ".launcher" / EXIT_FILE).read_text().split()[0] == "1"


@pytest.mark.timeout(180)
def test_thousand_jobs_cost_ceil_n_over_max_array_size_sbatch_calls(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        import time

        time.sleep(300)

    n = 1000
    sweep = tmp_path / "sweep"
    max_array_size = slurm_cluster.max_array_size_from_config()
    slurm_calls.reset()
    launch_sweep(task, [[f"+x={i}"] for i in range(n)], _overrides(sweep, "hydra.launcher.wait=false"))
    try:
        assert slurm_calls.calls("sbatch") == math.ceil(n / max_array_size) == 200
        queued = slurm_cluster.run("squeue", "--me", "-h", "-r", "-o", "%i").stdout.split()
        handles = _handles(sweep)
        assert {h["slurm_job_id"] for h in handles.values()} == set(queued)
        with StateStore.for_sweep_dir(sweep, readonly=True) as store:
            backend = backend_for_meta(store.meta())
        slurm_calls.reset()
        statuses = backend.poll(handles)
        assert len(statuses) == n and slurm_calls.calls("sacct") == 1 and slurm_calls.calls("squeue") == 0
    finally:
        slurm_cluster.run("scancel", "--me")
    slurm_calls.reset()
    backend.cancel(handles)
    assert slurm_calls.calls("scancel") == 1
    wait_until("queue empty", slurm_cluster.queue_empty, 60)


@pytest.mark.timeout(120)
def test_dry_run_writes_scripts_and_submits_nothing(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    def task(cfg):
        return cfg.x

    sweep = tmp_path / "sweep"
    returns = launch_sweep(task, [[f"+x={i}"] for i in range(12)], _overrides(sweep, "hydra.launcher.dry_run=true"))

    scripts = sorted(p.name for p in (sweep / ".launcher" / "slurm").glob("*.sbatch"))
    assert scripts == ["jobs0-4.sbatch", "jobs10-11.sbatch", "jobs5-9.sbatch"]
    assert slurm_calls.calls("sbatch") == 0 and slurm_calls.lines("scontrol") == ["scontrol show config"]
    assert slurm_cluster.queue_empty() and not StateStore.exists_in(sweep)
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 12
    assert "array index 1 of" in str(returns[11].return_value) and "jobs10-11.sbatch" in str(returns[11].return_value)
    text = (sweep / ".launcher" / "slurm" / "jobs10-11.sbatch").read_text()
    assert "#SBATCH --array=0-1%2" in text and str(sweep / "11" / ".launcher") in text
    assert not (sweep / "11").exists()  # nothing per job: each job composes its config from the job table
    table = sweep / ".launcher" / "slurm" / "jobs0-11.json"
    assert table.stat().st_mode & 0o777 == 0o600 and str(table) in text
    # the script is complete: submitted by hand it runs the job
    array_id = slurm_cluster.run("sbatch", "--parsable", str(sweep / ".launcher" / "slurm" / "jobs10-11.sbatch"))
    wait_until("job 11 done", lambda: (sweep / "11" / ".launcher" / "result.pkl").exists(), 60)
    assert array_id.stdout.strip().isdigit()


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.launcher.timeout_min=0", "hydra.launcher.timeout_min must be > 0"),
        ("hydra.launcher.container.image=/i.sif", None),
        ("hydra.launcher.container.runtime=docker", None),
        ("+hydra.launcher.container.bogus=1", "hydra.launcher.container has unknown keys"),
    ],
)
def test_bad_config_is_refused_before_anything_runs(tmp_path: Path, override: str, message: str | None) -> None:
    """Invalid settings fail in the launcher's setup (no cluster needed); a valid one passes."""
    from hydra.errors import ConfigCompositionException

    def task(cfg):
        return 0

    overrides = _overrides(tmp_path / "sweep", override, "hydra.launcher.dry_run=true")
    overrides.append("hydra.launcher.max_array_size=10")
    if override.endswith("docker"):
        overrides.append("hydra.launcher.container.image=/i.sif")
        message = "hydra.launcher.container.runtime must be one of"
    if message is None:
        assert len(launch_sweep(task, [["+x=0"]], overrides)) == 1
        return
    with pytest.raises((ConfigError, ConfigCompositionException), match=message):
        launch_sweep(task, [["+x=0"]], overrides)
