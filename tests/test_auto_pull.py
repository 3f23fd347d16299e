"""Hands-free collection on remote_ssh (loopback sshd): a ``wait=false`` launch with
``auto_pull=true`` returns at once, its pull daemon (its own session, a log in the sweep's
``.launcher/``) brings every result home without anyone running pull, ``status`` says who collects,
a second start joins the running daemon instead of starting another, and the daemon exits when
the sweep is home."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from launcher_core.cli import main as cli_main
from launcher_core.collect import autopull
from launcher_core.jobs import JobState
from tests.sshd import SSHTestEnv, make_project, shared_file
from tests.test_remote_ssh import launch, states

pytestmark = pytest.mark.ssh


def _daemons(sweep: Path) -> list[int]:
    """PIDs of pull daemons started for this sweep (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"--sweep-daemon" in argv and str(sweep).encode() in argv:
                    found.append(int(entry.name))
    return found


def _wait(what: str, check, timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached after {timeout_s:g} s")


@pytest.mark.timeout(240)
def test_auto_pull_collects_a_detached_sweep_without_anyone_running_pull(
    ssh_env: SSHTestEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = make_project(tmp_path / "proj")
    gate = shared_file("hrl-gate")  # jobs wait until it exists, so they are surely unfinished below
    gate.unlink()
    name = "auto-pull"
    proc, sweep = launch(
        ssh_env,
        proj,
        name,
        "x=1,2",
        f"wait_for={gate}",
        wait="false",
        auto_pull="true",
        auto_pull_interval_s=0.5,
        notify="'touch notified.txt'",
    )
    try:
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout + proc.stderr
        log_path = sweep / ".launcher" / "pull.log"
        assert "results are collected in the background by its pull daemon (pid" in out and str(log_path) in out
        running = autopull.collector(sweep)
        assert running is not None and running.kind == "sweep" and _daemons(sweep) == [running.pid]
        assert {s for s, _ in states(sweep).values()} <= {JobState.SUBMITTED, JobState.RUNNING}

        assert cli_main(["status", str(sweep), "--offline", "--summary"]) == 0
        assert f"collecting: 2 jobs not home yet; its pull daemon (pid {running.pid}" in capsys.readouterr().out
        # a second start (another batch, a relaunch) joins it: still one daemon
        assert autopull.start(sweep, 0.5, None) == running
        assert _daemons(sweep) == [running.pid]

        gate.touch()
        _wait("every job pulled", lambda: {s for s, _ in states(sweep).values()} == {JobState.PULLED}, 120)
        assert all((sweep / str(n) / ".launcher" / "result.pkl").exists() for n in (0, 1))
        assert all((sweep / str(n) / "result.json").exists() for n in (0, 1))
        _wait("the daemon exits once the sweep is home", lambda: not _daemons(sweep), 30)
        _wait("notify ran (cwd: the sweep dir)", lambda: (sweep / "notified.txt").exists(), 10)
        assert autopull.collector(sweep) is None
        assert "collected; exiting" in log_path.read_text()
        capsys.readouterr()
        assert cli_main(["status", str(sweep), "--offline", "--summary"]) == 0
        assert "collecting" not in capsys.readouterr().out
    finally:
        for pid in _daemons(sweep):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def test_status_says_when_nobody_collects(tmp_path: Path) -> None:
    text = autopull.status_line(tmp_path, True, ["running", "pulled"])
    assert text is not None and text.startswith("not collecting: 1 jobs not home yet")
    assert f"python -m launcher_core.pull {tmp_path}" in text
    assert autopull.status_line(tmp_path, True, ["pulled", "cancelled"]) is None
    assert autopull.status_line(tmp_path, False, ["running"]) is None  # its jobs ended with the launch
