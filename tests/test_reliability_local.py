"""local_pool reliability and security (issue 7), beyond test_local_pool.py.

A job SIGKILLed from outside, a full disk under the sweep dir (small tmpfs), the modes of
payload and state files, and a secret env var that must never be written to any file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.conftest import run_app
from tests.sshd import make_project

FILL_PATCH = """
    if cfg.x in cfg.fill_on:
        _target = out / f"fill-{cfg.x}.bin"
        try:
            with open(_target, "wb") as _f:
                for _ in range(int(cfg.fill_mb)):
                    _f.write(b"\\0" * 1048576)
                    _f.flush()
        except OSError:
            if not cfg.fill_keep:  # a careful task removes its partial file
                _target.unlink()
            raise
    import helper
"""


def project(root: Path) -> Path:
    proj = make_project(root)
    app = (proj / "app.py").read_text()
    (proj / "app.py").write_text(app.replace("    import helper\n", FILL_PATCH, 1))
    conf = proj / "conf" / "config.yaml"
    conf.write_text(conf.read_text().replace("x: 0\n", "x: 0\nfill_on: []\nfill_mb: 0\nfill_keep: false\n"))
    return proj


def sweep(proj: Path, sweep_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = ["-m", "hydra/launcher=local_pool", f"hydra.sweep.dir={sweep_dir}", *args]
    return run_app(proj / "app.py", argv, cwd=proj, timeout=timeout)


def outcomes(sweep_dir: Path) -> dict[int, tuple[JobState, str | None]]:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {row.idx: (row.outcome or row.state, row.exit_reason) for row in store.jobs()}


def test_job_sigkilled_from_outside_is_failed_and_others_finish(tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    go = tmp_path / "go"
    killed: list[int] = []

    def kill_job_0() -> None:
        pid_file = sweep_dir / "0" / ".launcher" / "pid"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().split()[0])
                time.sleep(0.3)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.02)
        go.write_text("go")

    killer = threading.Thread(target=kill_job_0, daemon=True)
    killer.start()
    proc = sweep(proj, sweep_dir, "x=1,2", f"wait_for={go}", "hydra.launcher.n_jobs=2")
    killer.join(5)
    assert killed
    assert proc.returncode != 0
    got = outcomes(sweep_dir)
    assert got[0][0] is JobState.FAILED and "SIGKILL" in (got[0][1] or ""), got
    assert got[1][0] is JobState.COMPLETED, got
    assert not (sweep_dir / "0" / ".launcher" / "result.pkl").exists()
    assert (sweep_dir / "1" / "result.json").exists()


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("keep", [False, True], ids=["task-cleans-up", "disk-stays-full"])
def test_full_disk_in_a_job_output_dir_fails_that_job_only(tmp_path: Path, keep: bool) -> None:
    """Job 1's output dir is a 2 MB tmpfs; the task writes 8 MB into it."""
    proj = project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    with mounted_tmpfs(sweep_dir / "1"):
        args = ("x=1,2,3", "fill_on=[2]", "fill_mb=8", f"fill_keep={keep}", "hydra.launcher.n_jobs=2")
        proc = sweep(proj, sweep_dir, *args)
        assert proc.returncode != 0
        got = outcomes(sweep_dir)
        assert got[0][0] is JobState.COMPLETED and got[2][0] is JobState.COMPLETED, got
        assert got[1][0] is JobState.FAILED and got[1][1], got
        if not keep:  # the result (with the exception) fits again: the reason names the disk
            assert "No space left on device" in got[1][1], got
            assert "No space left on device" in (sweep_dir / "1" / ".launcher" / "stderr.log").read_text()
        else:  # nothing fits any more, not even the result: still a clear, terminal failure
            assert "without writing a result (no space left on device under" in got[1][1], got
        assert "no space left on device" in (proc.stdout + proc.stderr).lower()
        with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
            assert [r.state for r in store.jobs()] == [JobState.PULLED] * 3  # local: every job is terminal
        assert (sweep_dir / "0" / "result.json").exists() and (sweep_dir / "2" / "result.json").exists()


def test_full_disk_under_the_whole_sweep_dir_fails_cleanly(tmp_path: Path) -> None:
    """When the sweep dir's own disk fills up, even the state store cannot be written: the launch
    stops with an error that says so, and what was recorded before stays intact and readable."""
    import sqlite3

    proj = project(tmp_path / "proj")
    with mounted_tmpfs(tmp_path / "small") as small:
        sweep_dir = small / "sweep"
        args = ("x=1,2,3", "fill_on=[2]", "fill_mb=8", "fill_keep=true", "hydra.launcher.n_jobs=1")
        proc = sweep(proj, sweep_dir, *args)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert f"cannot update the sweep's state store in {sweep_dir}: the disk under it is full" in out
        assert "free space, then relaunch" in out
        conn = sqlite3.connect(sweep_dir / ".launcher" / "state.sqlite")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            conn.close()
        got = outcomes(sweep_dir)
        assert got[0][0] is JobState.COMPLETED, got  # recorded before the disk filled up
        assert not (sweep_dir / "2" / "result.json").exists()  # the third job was never started


def _bad_modes(root: Path) -> list[str]:
    bad = []
    for d in [p for p in root.rglob(".launcher") if p.is_dir()]:
        if stat.S_IMODE(d.stat().st_mode) != 0o700:
            bad.append(f"{d} {oct(stat.S_IMODE(d.stat().st_mode))}")
        for p in d.rglob("*"):
            if p.is_symlink():
                continue
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode != (0o700 if p.is_dir() else 0o600):
                bad.append(f"{p} {oct(mode)}")
    return bad


def test_payload_and_state_files_are_private(tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    proc = sweep(proj, sweep_dir, "x=1,2", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep_dir / "0" / ".launcher" / "result.pkl").exists()
    assert _bad_modes(sweep_dir) == []


SECRET = "hrl-local-s3cr3t-31a7"


def test_secret_env_var_is_never_written(tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    app = (proj / "app.py").read_text()
    (proj / "app.py").write_text(
        app.replace(
            '"token": os.environ.get("HRL_TEST_TOKEN"),',
            '"token": __import__("hashlib").sha256(os.environ.get("HRL_TEST_TOKEN", "").encode()).hexdigest(),',
        )
    )
    sweep_dir = tmp_path / "sweep"
    proc = run_app(
        proj / "app.py",
        ["-m", "hydra/launcher=local_pool", f"hydra.sweep.dir={sweep_dir}", "x=1,2"],
        cwd=proj,
        env={"HRL_TEST_TOKEN": SECRET},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits = [str(p) for p in sweep_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert hits == []
