"""Jobs lost to the machine run again; jobs that fail on their own do not (docs/guarantees.md,
"Jobs lost to the machine run again").

Each job writes a ``start X ATTEMPT`` line when it starts and ``done X ATTEMPT`` when it finishes
into a record file outside the job dirs, so a test counts executions per attempt. A reboot is
stood in for by killing -9 the process that watched the job (its runner: on local_pool the
launcher, on remote_ssh the job's monitor) together with the job, and by changing the boot id the
job was started under: on local_pool through the test hook ``HYDRA_LAUNCHER_BOOT_ID_FILE`` (the
file read instead of the kernel's boot id), on remote_ssh by rewriting the job's recorded
``.launcher/boot_id`` (the host's own boot id cannot change without a reboot).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from launcher_core.jobs import Ending, JobState, JobStatus, LossCause
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.sshd import SSHTestEnv, shared_file
from tests.test_exactly_once import launch_and_kill

APP = """\
import os
import sys
import time

import hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    attempt = os.environ.get("HYDRA_LAUNCHER_ATTEMPT", "?")
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")  # a Slurm requeue within one attempt
    with open(cfg.record, "a") as f:
        f.write(f"start {cfg.x} {attempt} {os.getpid()} {restart}\\n")
    if attempt == "1" and restart == "0" and cfg.x in cfg.hold_on:
        time.sleep(120)  # killed from outside while it sleeps
    if cfg.x in cfg.raise_on:
        raise ValueError(f"bad x={cfg.x}")
    with open(cfg.record, "a") as f:
        f.write(f"done {cfg.x} {attempt}\\n")
    return {"x": cfg.x, "attempt": int(attempt)}


if __name__ == "__main__":
    main()
"""
CONFIG = """\
x: 0
record: ""
hold_on: []
raise_on: []
hydra:
  job:
    chdir: false
"""


def _project(root: Path) -> Path:
    (root / "conf").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    return root


def _events(record: Path) -> Counter[tuple[str, int, str]]:
    """(start|done, x, attempt) -> how many times."""
    lines = record.read_text().splitlines() if record.exists() else []
    return Counter((w[0], int(w[1]), w[2]) for w in (line.split() for line in lines))


def _pid_of(record: Path, x: int, attempt: str = "1") -> int:
    for line in record.read_text().splitlines():
        words = line.split()
        if words[:3] == ["start", str(x), attempt]:
            return int(words[3])
    raise AssertionError(f"job {x} did not start: {record.read_text()}")


def _started(record: Path, x: int) -> bool:
    return record.exists() and any(line.startswith(f"start {x} 1 ") for line in record.read_text().splitlines())


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in (env or os.environ).items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=240, env=env)


def _cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "launcher_core", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _status(sweep_dir: Path) -> str:
    """What `launcher-core status` prints, on a console wide enough for one line per job."""
    from rich.console import Console

    from launcher_core.cli.sweep_commands import render_status

    out = io.StringIO()
    render_status(sweep_dir, Console(file=out, width=400))
    return out.getvalue()


def _row(sweep_dir: Path, x: int):
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        (row,) = [r for r in store.jobs() if r.idx == x]
        return row, store.attempts().get(row.job_id, [])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_gone(pid: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
        if ") Z " in stat:
            return
        time.sleep(0.05)


# --- local_pool --------------------------------------------------------------------------------
def _local_argv(proj: Path, sweep_dir: Path, record: Path, *extra: str) -> list[str]:
    return [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=local_pool",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        "x=0,1",
        f"record={record}",
        "hold_on=[1]",
        *extra,
    ]


def _reboot_local(tmp_path: Path, *extra: str, change_boot_id: bool = True):
    """Launch two jobs, kill -9 the launcher (job 1's runner) and job 1 once job 0 is done, change
    the boot id, relaunch. Returns the relaunch, the sweep dir and the record."""
    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    boot = tmp_path / "boot_id"
    boot.write_text("boot-before\n")
    os.environ["HYDRA_LAUNCHER_BOOT_ID_FILE"] = str(boot)  # the test hook (launcher_core.runtime.procs)
    try:
        argv = _local_argv(proj, sweep_dir, record, *extra)
        launch_and_kill(argv, proj, lambda: _started(record, 1) and ("done", 0, "1") in _events(record))
        job = _pid_of(record, 1)
        _kill(job)
        _wait_gone(job)
        if change_boot_id:
            boot.write_text("boot-after\n")
        return _run(argv, proj), sweep_dir, record
    finally:
        del os.environ["HYDRA_LAUNCHER_BOOT_ID_FILE"]


@pytest.mark.slow
@pytest.mark.parametrize("change_boot_id, cause", [(True, "host rebooted"), (False, "runner died")])
def test_local_pool_job_lost_with_its_runner_runs_again_as_attempt_2(
    change_boot_id: bool, cause: str, tmp_path: Path
) -> None:
    proc, sweep_dir, record = _reboot_local(tmp_path, change_boot_id=change_boot_id)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _events(record) == {
        ("start", 0, "1"): 1,
        ("done", 0, "1"): 1,
        ("start", 1, "1"): 1,  # lost: killed with its runner
        ("start", 1, "2"): 1,
        ("done", 1, "2"): 1,
    }
    assert load_job_return(sweep_dir / "1" / ".launcher" / "result.pkl").return_value == {"x": 1, "attempt": 2}
    row, earlier = _row(sweep_dir, 1)
    assert (row.state, row.outcome, row.attempt) == (JobState.PULLED, JobState.COMPLETED, 2)
    assert [(a.attempt, a.ending) for a in earlier] == [(1, f"lost: {cause}")]
    assert _row(sweep_dir, 0)[0].attempt == 1
    assert f"attempt 1 lost: {cause}" in proc.stdout + proc.stderr  # the end-of-sweep list
    assert f"completed (attempt 2; attempt 1 lost: {cause}; pulled)" in _status(sweep_dir)
    results = _cli("results", str(sweep_dir), "--format", "csv")
    header, *lines = results.strip().splitlines()
    assert "attempts" in header.split(",")
    column = header.split(",").index("attempts")
    assert sorted(line.split(",")[column] for line in lines) == ["1", "2"]


@pytest.mark.slow
def test_max_retries_0_gives_the_failed_result_of_before(tmp_path: Path) -> None:
    proc, sweep_dir, record = _reboot_local(tmp_path, "hydra.launcher.max_retries=0")
    assert proc.returncode != 0
    assert "process gone without writing a result" in proc.stderr
    assert ("start", 1, "2") not in _events(record)
    row, earlier = _row(sweep_dir, 1)
    assert (row.outcome, row.attempt, row.exit_reason, earlier) == (
        JobState.FAILED,
        1,
        "process gone without writing a result",
        [],
    )


@pytest.mark.slow
def test_local_pool_job_killed_while_its_runner_lives_is_not_retried(tmp_path: Path) -> None:
    """SIGKILL from outside (as the kernel's out-of-memory killer sends) to a job whose launcher
    lives: an exit status says how it ended, ``killed by SIGKILL``; it is not run again."""
    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = _local_argv(proj, sweep_dir, record)
    launch = subprocess.Popen(
        [sys.executable, *argv], cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not _started(record, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill(_pid_of(record, 1))
        _out, err = launch.communicate(timeout=120)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    assert launch.returncode != 0
    assert "killed by SIGKILL" in err
    assert ("start", 1, "2") not in _events(record)
    row, earlier = _row(sweep_dir, 1)
    assert (row.outcome, row.attempt, row.ending, earlier) == (JobState.FAILED, 1, "task failed", [])


@pytest.mark.slow
def test_a_task_that_raises_is_not_retried(tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    argv = [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=local_pool",
        f"hydra.sweep.dir={sweep_dir}",
        "x=0,1",
        f"record={record}",
        "raise_on=[1]",
    ]
    proc = _run(argv, proj)
    assert proc.returncode != 0
    assert _events(record) == {("start", 0, "1"): 1, ("done", 0, "1"): 1, ("start", 1, "1"): 1}
    row, earlier = _row(sweep_dir, 1)
    assert (row.outcome, row.attempt, row.ending, earlier) == (JobState.FAILED, 1, "task failed", [])


# --- remote_ssh --------------------------------------------------------------------------------
def _remote_launcher_dir(remote_root: Path, x: int) -> Path:
    (found,) = [p.parent for p in remote_root.rglob(".launcher/boot_id") if p.parent.parent.name == str(x)]
    return found


@pytest.mark.slow
@pytest.mark.ssh
def test_remote_ssh_job_lost_in_a_reboot_runs_again_as_attempt_2(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    """The job's monitor (the runner process that watches it and writes its exit status) and the
    job are killed -9 together, as a reboot does, and the boot id the job started under is made
    another one: the launch, which lived on, runs it again as attempt 2."""
    proj = _project(tmp_path / "proj")
    record = shared_file("hrl-retry")
    sweep_dir = proj / "multirun" / "s"
    name = "retry-reboot"
    argv = [
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=remote_ssh",
        f"hydra.sweep.dir={sweep_dir}",
        "x=0,1",
        f"record={record}",
        "hold_on=[1]",
        *ssh_env.overrides(name, max_parallel=2),
    ]
    launch = subprocess.Popen(
        [sys.executable, *argv], cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while not (_started(record, 1) and ("done", 0, "1") in _events(record)) and time.monotonic() < deadline:
            time.sleep(0.05)
        launcher_dir = _remote_launcher_dir(ssh_env.remote_path(name), 1)
        monitor = int((launcher_dir / "pid").read_text().split()[0])
        (launcher_dir / "boot_id").write_text("a-boot-before-the-reboot\n")
        os.killpg(monitor, signal.SIGKILL)  # the monitor leads the job's process group
        _out, err = launch.communicate(timeout=180)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    assert launch.returncode == 0, err[-3000:]
    assert _events(record) == {
        ("start", 0, "1"): 1,
        ("done", 0, "1"): 1,
        ("start", 1, "1"): 1,
        ("start", 1, "2"): 1,
        ("done", 1, "2"): 1,
    }
    assert load_job_return(sweep_dir / "1" / ".launcher" / "result.pkl").return_value == {"x": 1, "attempt": 2}
    row, earlier = _row(sweep_dir, 1)
    assert (row.outcome, row.attempt) == (JobState.COMPLETED, 2)
    assert [(a.attempt, a.ending) for a in earlier] == [(1, "lost: host rebooted")]


def test_remote_ssh_poll_lines_map_to_the_vocabulary() -> None:
    """What the host's poll script says (see remote/scripts.py) and how it is classified."""
    from launcher_core.remote.scripts import status_from_line

    def kind(words: list[str]) -> tuple[Ending | None, LossCause | None]:
        st: JobStatus = status_from_line(words, "h")
        return st.classified(), st.cause

    assert kind(["lost"]) == (Ending.LOST, LossCause.RUNNER_DIED)
    assert kind(["rebooted"]) == (Ending.LOST, LossCause.HOST_REBOOTED)
    assert kind(["orphaned"]) == (Ending.LOST, LossCause.RUNNER_DIED)
    assert kind(["done", "-9", "0"]) == (Ending.TASK_FAILED, None)  # its monitor lived: an exit status
    assert kind(["done", "1", "1"]) == (Ending.TASK_FAILED, None)
    assert kind(["done", "0", "1"]) == (Ending.COMPLETED, None)
    assert kind(["cancelled"]) == (Ending.CANCELLED, None)
