"""local_pool: Hydra's conformance suites plus failure, timeout, orphan and relaunch behaviour."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cloudpickle
import pytest
from hydra.core.utils import JobStatus
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.conftest import REPO_ROOT, run_app

TASKS_APP = REPO_ROOT / "tests" / "apps" / "tasks.py"


@pytest.mark.parametrize("launcher_name, overrides", [("local_pool", [])])
class TestLocalPoolLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=local_pool", "hydra.launcher.n_jobs=2"])]
)
class TestLocalPoolIntegration(IntegrationTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("local_pool", ["hydra.sweeper.max_batch_size=2"])])
class TestLocalPoolBatchedSweeper(BatchedSweeperTestSuite):
    pass


def _sweep(tmp_path: Path, *args: str, timeout: float = 120):
    sweep_dir = tmp_path / "sweep"
    proc = run_app(
        TASKS_APP, ["-m", "hydra/launcher=local_pool", f"hydra.sweep.dir={sweep_dir}", *args], tmp_path, timeout
    )
    return proc, sweep_dir


def _result(sweep_dir: Path, num: int):
    with open(sweep_dir / str(num) / ".launcher" / "result.pkl", "rb") as f:
        return cloudpickle.load(f)


def _states(sweep_dir: Path) -> dict[int, tuple[JobState, str | None]]:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {row.idx: (row.outcome or row.state, row.exit_reason) for row in store.jobs()}


def _pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_failing_job_does_not_stop_others_and_is_reported(tmp_path: Path) -> None:
    proc, sweep_dir = _sweep(tmp_path, "x=1,2,3", "fail_on=[2]", "hydra.launcher.n_jobs=2")

    assert proc.returncode != 0
    assert "ValueError: bad value x=2" in proc.stderr
    assert "failed jobs" in proc.stderr  # the summary table lists failures together
    assert _result(sweep_dir, 0).return_value == 10
    assert _result(sweep_dir, 2).return_value == 30
    failed = _result(sweep_dir, 1)
    assert failed.status == JobStatus.FAILED
    assert isinstance(failed._return_value, ValueError)
    assert "bad value x=2" in str(failed._return_value)
    assert any("Traceback on the job side" in n for n in failed._return_value.__notes__)
    states = _states(sweep_dir)
    assert [states[i][0] for i in range(3)] == [JobState.COMPLETED, JobState.FAILED, JobState.COMPLETED]


def test_jobs_run_in_parallel_up_to_n_jobs(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    proc, _ = _sweep(tmp_path, "x=1,2,3,4", "mode=sleep", "seconds=0.5", f"record={record}", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr
    spans = [tuple(float(v) for v in line.split()[1:3]) for line in record.read_text().splitlines()]
    assert len(spans) == 4
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running, peak = 0, 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2
    assert len({line.split()[3] for line in record.read_text().splitlines()}) == 4  # one process per job


def test_timeout_kills_job_and_reports_it(tmp_path: Path) -> None:
    proc, sweep_dir = _sweep(tmp_path, "x=1,2", "mode=sleep", "seconds=60", "hydra.launcher.timeout_s=1")
    assert proc.returncode != 0
    states = _states(sweep_dir)
    assert states[0][0] is JobState.FAILED and "timeout" in (states[0][1] or "")
    assert "JobTimeoutError" in proc.stderr
    assert not (sweep_dir / "0" / ".launcher" / "result.pkl").exists()
    job_pid = int((sweep_dir / "0" / ".launcher" / "pid").read_text().split()[0])
    assert not _pid_alive(job_pid)


def test_orphaned_grandchild_is_killed_with_the_job(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc, sweep_dir = _sweep(tmp_path, "x=7", "mode=orphan", f"pid_file={pid_file}", "hydra.launcher.kill_grace_s=1")
    assert proc.returncode == 0, proc.stderr
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(grandchild), "the job's grandchild outlived the sweep"
    assert _result(sweep_dir, 0).return_value == 70


def test_job_exiting_without_result_is_failed(tmp_path: Path) -> None:
    proc, sweep_dir = _sweep(tmp_path, "x=1,2", "mode=exit", "code=3")
    assert proc.returncode != 0
    states = _states(sweep_dir)
    assert states[0] == (JobState.FAILED, "exited with code 3 without writing a result")
    assert "JobLostError" in proc.stderr


def test_skip_completed_reuses_results_on_relaunch(tmp_path: Path) -> None:
    record, flag = tmp_path / "record.txt", tmp_path / "fail-now"
    flag.touch()
    args = ["x=1,2,3", f"record={record}", "fail_on=[3]", f"fail_flag={flag}", "hydra.launcher.skip_completed=true"]
    proc, sweep_dir = _sweep(tmp_path, *args)
    assert proc.returncode != 0
    assert sorted(line.split()[0] for line in record.read_text().splitlines()) == ["1", "2"]

    flag.unlink()
    proc, _ = _sweep(tmp_path, *args)  # x=3 no longer fails: only it runs again
    assert proc.returncode == 0, proc.stderr
    runs = sorted(line.split()[0] for line in record.read_text().splitlines())
    assert runs == ["1", "2", "3"]
    assert "2 jobs already completed" in proc.stdout + proc.stderr
    assert _result(sweep_dir, 0).return_value == 10 and _result(sweep_dir, 2).return_value == 30

    proc, _ = _sweep(tmp_path, *args[:-1])  # default (skip_completed=false): run everything again
    assert proc.returncode == 0, proc.stderr
    assert len(record.read_text().splitlines()) == 6


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.launcher.n_jobs=-2", "hydra.launcher.n_jobs must be > 0, got -2"),
        ("hydra.launcher.n_jobs=0", "hydra.launcher.n_jobs must be > 0, got 0"),
        ("hydra.launcher.timeout_s=-1", "hydra.launcher.timeout_s must be > 0, got -1"),
        ("hydra.launcher.n_job=2", "Key 'n_job' not in 'LocalPoolLauncherConf'"),
        ("hydra.launcher.n_jobs=many", "Value 'many' of type 'str' could not be converted to Integer"),
    ],
)
def test_bad_launcher_config_is_refused_before_launch(tmp_path: Path, override: str, message: str) -> None:
    proc, sweep_dir = _sweep(tmp_path, "x=1,2", override)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (sweep_dir / "0").exists()


def test_example_app_sweep_with_paired_sweeper(tmp_path: Path) -> None:
    proc = run_app(
        REPO_ROOT / "example_app" / "train.py",
        [
            "-m",
            "+cluster=local",
            "hydra.sweeper.paired=[[model,data.aug]]",
            "model=cnn,transformer",
            "data.aug=basic,strong",
            "lr=1e-3,1e-2",
            f"hydra.sweep.dir={tmp_path / 'out'}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    metrics = [json.loads((tmp_path / "out" / str(i) / "metrics.json").read_text()) for i in range(4)]
    assert [(m["lr"], m["model"], m["aug"]) for m in metrics] == [
        (1e-3, "cnn", "basic"),
        (1e-3, "transformer", "strong"),
        (1e-2, "cnn", "basic"),
        (1e-2, "transformer", "strong"),
    ]
    for i, m in enumerate(metrics):
        assert _result(tmp_path / "out", i).return_value == pytest.approx(m["loss"])
    assert os.path.exists(tmp_path / "out" / "multirun.yaml")


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(tmp_path: Path) -> None:
    import select
    import subprocess
    import sys

    master, slave = os.openpty()
    cmd = [
        sys.executable,
        str(TASKS_APP),
        "-m",
        "hydra/launcher=local_pool",
        "x=1,2,3,4",
        f"hydra.sweep.dir={tmp_path}",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path) as proc:
        os.close(slave)
        chunks, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read().decode() if proc.stdout else ""
        proc.wait(timeout=30)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "━" in terminal and "4/4" in terminal  # a rich progress bar on the terminal
    assert "local_pool: 4/4 finished" not in stdout  # ... instead of the plain progress lines

    (tmp_path / "plain").mkdir()
    proc2, _ = _sweep(tmp_path / "plain", "x=1,2,3,4")
    assert "local_pool: 4/4 finished, 4 done, 0 failed" in proc2.stdout  # not a terminal: log lines


def test_hostile_override_values_reach_the_task_verbatim(tmp_path: Path) -> None:
    from tests.hostile import hostile_values, sweep_override

    canary = tmp_path / "INJECTED"
    values = hostile_values(canary)
    proc, sweep_dir = _sweep(tmp_path, "mode=echo", sweep_override("x", values))
    assert proc.returncode == 0, proc.stderr
    assert [_result(sweep_dir, i).return_value for i in range(len(values))] == values
    assert not canary.exists()
