"""Reliability and security of the slurm backend against the real cluster (issue 7, SLURM part).

Faults: slurmd killed by its PID file mid-sweep and restarted; a job cancelled from outside with
``scancel``. (sacct unavailable is covered by tests/test_slurm.py::test_without_sacct_squeue_and_exit_files_decide.)
Security: hostile override values and a hostile sweep dir reach the task verbatim and execute
nothing; payload and state files are private (0600 / 0700); a secret given through
``hydra.launcher.env`` stays out of the state store and logs.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus

from launcher_core.jobs import JobState
from launcher_core.runtime.worker import JobLostError
from launcher_core.state import StateStore
from launcher_core.sweep import quote_value
from tests.hostile import hostile_values, sweep_override
from tests.slurm_cluster import SlurmCluster, launch_sweep, pid_alive, read_pid, wait_until
from tests.test_slurm import _jobs, _overrides, _rows, _sacct_states

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


def _recording_task(cfg):
    """Appends "<x> start" / "<x> end" to cfg.record (O_APPEND: one write per line), sleeps cfg.s."""
    import os
    import time

    def note(what: str) -> None:
        fd = os.open(cfg.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{cfg.x} {what} {os.environ.get('SLURM_RESTART_COUNT', '0')}\n".encode())
        finally:
            os.close(fd)

    note("start")
    time.sleep(cfg.s)
    note("end")
    return cfg.x


def _record_lines(record: Path) -> list[tuple[int, str]]:
    if not record.exists():
        return []
    return [(int(x), what) for x, what, _restart in (line.split() for line in record.read_text().splitlines())]


# --- faults ---------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_slurmd_killed_mid_sweep_loses_and_duplicates_nothing(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """10 jobs of 6 s (2 arrays, 8 run at once, 2 pending): slurmd is SIGKILLed by its PID file while
    tasks run and stays down 8 s (running tasks finish meanwhile, pending ones cannot start), then is
    restarted; every job runs exactly once and ends COMPLETED in Hydra, the state store and sacct."""
    n = 10
    sweep = tmp_path / "sweep"
    record = tmp_path / "record.txt"
    jobs = [[f"+x={i}", "+s=6", f"+record={record}"] for i in range(n)]
    launch_sweep(_recording_task, jobs, _overrides(sweep, "hydra.launcher.wait=false"))
    wait_until("tasks running", lambda: len(_record_lines(record)) >= 4, 60, 0.2)

    pid_file = slurm_cluster.run_dir / "slurmd.pid"
    pid = read_pid(pid_file)
    assert pid is not None and pid_alive(pid)
    proc = slurm_cluster.procs.pop("slurmd", None)
    os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=10)
    slurm_cluster.started.remove("slurmd")
    wait_until("slurmd gone", lambda: not pid_alive(pid), 10, 0.1)
    started_at_kill = len(_record_lines(record))
    time.sleep(8)
    lines_while_down = _record_lines(record)
    slurm_cluster._start_slurmd(time.monotonic() + 60)  # the fixture's own start, waits for an idle/mixed node
    assert read_pid(pid_file) != pid

    started = time.monotonic()
    returns = launch_sweep(_recording_task, jobs, _overrides(sweep))  # re-attaches and waits; bounded by timeout
    assert time.monotonic() - started < 120

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * n
    assert [r.return_value for r in returns] == list(range(n))
    lines = _record_lines(record)
    assert sorted(x for x, what in lines if what == "start") == list(range(n)), lines  # each ran exactly once
    assert sorted(x for x, what in lines if what == "end") == list(range(n)), lines
    assert started_at_kill >= 4 and len(lines_while_down) < 2 * n  # the fault hit a sweep in progress
    rows = _rows(sweep)
    assert {idx: (state, outcome) for idx, (state, outcome, _r, _h) in rows.items()} == {
        i: (JobState.PULLED, JobState.COMPLETED) for i in range(n)
    }
    assert set(_sacct_states(slurm_cluster, sweep).values()) == {"COMPLETED 0:0"}
    assert slurm_cluster.node_state() in ("idle", "mixed")


@pytest.mark.timeout(150)
def test_scancel_from_outside_is_cancelled_in_store_and_job_return(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """While the launcher waits, job 1 is cancelled with a plain ``scancel`` (not our CLI)."""
    sweep = tmp_path / "sweep"
    record = tmp_path / "record.txt"
    jobs = [[f"+x={i}", f"+s={300 if i == 1 else 3}", f"+record={record}"] for i in range(3)]
    cancelled: list[str] = []
    errors: list[BaseException] = []

    def cancel_job_1() -> None:
        try:
            wait_until("job 1 running", lambda: (1, "start") in _record_lines(record), 60, 0.2)
            slurm_id = _jobs(sweep)[1][1]["slurm_job_id"]
            slurm_cluster.run("scancel", slurm_id)
            cancelled.append(slurm_id)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    canceller = threading.Thread(target=cancel_job_1, daemon=True)
    canceller.start()
    returns = launch_sweep(_recording_task, jobs, _overrides(sweep))
    canceller.join(timeout=30)
    assert not errors and cancelled

    assert returns[0].status == returns[2].status == JobStatus.COMPLETED
    assert [returns[0].return_value, returns[2].return_value] == [0, 2]
    assert returns[1].status == JobStatus.FAILED
    with pytest.raises(JobLostError, match="cancelled"):
        _ = returns[1].return_value
    rows = _rows(sweep)
    assert [rows[i][1] for i in range(3)] == [JobState.COMPLETED, JobState.CANCELLED, JobState.COMPLETED]
    assert "cancelled" in (rows[1][2] or "")
    sacct = _sacct_states(slurm_cluster, sweep)
    assert sacct[0] == sacct[2] == "COMPLETED 0:0" and sacct[1].startswith("CANCELLED")
    assert (1, "end") not in _record_lines(record)


# --- injection ------------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_hostile_values_and_sweep_dir_reach_the_task_verbatim(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    def task(cfg):
        import os

        return {"x": cfg.x, "cwd_ok": os.path.isdir(os.getcwd())}

    canary = tmp_path / "INJECTED"
    values = hostile_values(canary)
    # the sweeper's own expansion of one sweep override into per-job overrides
    (override,) = OverridesParser.create().parse_overrides([sweep_override("+x", values)])
    jobs = [[f"+x={v}"] for v in override.sweep_string_iterator()]
    assert len(jobs) == len(values)
    sweep = tmp_path / f'it\'s a "swept" $(touch {canary}) `touch {canary}` dir; touch {canary}'

    overrides = _overrides(sweep)
    overrides[0] = f"hydra.sweep.dir={quote_value(str(sweep))}"  # a user quotes such a path for Hydra
    returns = launch_sweep(task, jobs, overrides)

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * len(values)
    assert [r.return_value["x"] for r in returns] == values
    assert all(r.return_value["cwd_ok"] for r in returns)
    assert not canary.exists()
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == sorted(str(i) for i in range(len(values)))
    assert set(_sacct_states(slurm_cluster, sweep).values()) == {"COMPLETED 0:0"}


# --- files and secrets ----------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(120)
def test_payload_and_state_files_are_private(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    def task(cfg):
        if cfg.x == 1:
            raise ValueError("private failure")
        return cfg.x

    sweep = tmp_path / "sweep"
    returns = launch_sweep(task, [["+x=0"], ["+x=1"]], _overrides(sweep))
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.FAILED]

    sweep_launcher = sweep / ".launcher"
    slurm_dir = sweep_launcher / "slurm"
    private_dirs = [sweep_launcher, slurm_dir, slurm_dir / "logs", *(sweep / str(i) / ".launcher" for i in (0, 1))]
    assert {str(d): oct(_mode(d)) for d in private_dirs} == {str(d): oct(0o700) for d in private_dirs}

    payloads = [*slurm_dir.glob("sweep-*.pkl"), *slurm_dir.glob("jobs*.json")]  # sweep payload, job table
    results = [sweep / str(i) / ".launcher" / "result.pkl" for i in (0, 1)]
    state = [p for p in sweep_launcher.iterdir() if p.is_file()]
    scripts = list(slurm_dir.glob("*.sbatch"))
    logs = [p for i in (0, 1) for p in (sweep / str(i) / ".launcher").glob("*.log")] + list(
        (slurm_dir / "logs").iterdir()
    )
    assert len(payloads) == 2 and state and scripts and logs
    private = [*payloads, *results, *state, *scripts, *logs]
    assert {str(p): oct(_mode(p)) for p in private} == {str(p): oct(0o600) for p in private}


@pytest.mark.timeout(120)
def test_secret_env_reaches_the_task_but_not_the_state_store_or_logs(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    secret = "hrl-s3cr3t-" + os.urandom(8).hex()

    def task(cfg):
        import os

        print("task stdout line")
        return {"x": cfg.x, "secret_len": len(os.environ.get("HRL_TEST_SECRET", ""))}  # never the secret itself

    sweep = tmp_path / "sweep"
    returns = launch_sweep(
        task, [["+x=0"], ["+x=1"]], _overrides(sweep, f"+hydra.launcher.env.HRL_TEST_SECRET={secret}")
    )
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    assert [r.return_value for r in returns] == [{"x": i, "secret_len": len(secret)} for i in (0, 1)]

    hits = sorted(
        str(p.relative_to(sweep)) for p in sweep.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    )
    # the env reaches the job as `export` lines of the sbatch script (tests/test_slurm_units.py pins that),
    # so the script is owner-only
    scripts = [h for h in hits if h.endswith(".sbatch")]
    assert scripts and all(_mode(sweep / h) == 0o600 for h in scripts)
    # the composed config (hydra.launcher.env is part of it) is pickled into the payloads and the
    # JobReturn: all 0600 in 0700 dirs; Hydra itself writes it to .hydra/hydra.yaml (0644, not ours)
    pickles = [h for h in hits if h.endswith(".pkl")]
    assert all(_mode(sweep / h) == 0o600 and _mode((sweep / h).parent) == 0o700 for h in pickles)
    hydra_own = [h for h in hits if h.endswith(".hydra/hydra.yaml")]
    assert [h for h in hits if h not in scripts + pickles + hydra_own] == []  # state store, logs, exit files
    logs = [p for p in sweep.rglob("*.log") if p.is_file()]
    assert len(logs) >= 5 and not any(secret.encode() in p.read_bytes() for p in logs)
    assert any(b"task stdout line" in p.read_bytes() for p in logs)
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        assert secret not in repr(store.meta()) and secret not in repr([r.handle for r in store.jobs()])
