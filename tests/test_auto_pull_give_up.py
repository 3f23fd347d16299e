"""A collector that gives up politely: the pull daemon of a ``wait=false`` remote_ssh sweep whose
host (a loopback sshd of its own, frozen with SIGSTOP: the link looks dead, nothing is refused)
stays unreachable for ``auto_pull_give_up_h`` stops, records why in the sweep's meta, and
``launcher-core status`` gives the command that resumes collection; once the host is back that
command brings every result home. The give-up time is a real, small value (0.0005 h = 1.8 s)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launcher_core.cli import main as cli_main
from launcher_core.collect import autopull
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.sshd import SSHServer, SSHTestEnv, make_project, shared_file
from tests.test_auto_pull import _daemons, _wait
from tests.test_remote_ssh import launch, states

GIVE_UP_H = 0.0005


def _gave_up(sweep: Path) -> dict | None:
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        return store.meta().get(autopull.GAVE_UP_META)


def _status(sweep: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli_main(["status", str(sweep), "--offline", "--summary"]) == 0
    return capsys.readouterr().out


@pytest.mark.ssh
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_pull_daemon_gives_up_on_an_unreachable_host_and_status_says_how_to_resume(
    ssh_env: SSHTestEnv, extra_sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = make_project(tmp_path / "proj")
    gate = shared_file("hrl-gate")  # jobs wait until it exists: unfinished while the host is away
    gate.unlink()
    host = {"hosts": f"[{extra_sshd.alias()}]", "ssh_config": extra_sshd.ssh_config}
    fast = {"connect_timeout_s": 2, "command_timeout_s": 4, "retries": 1}
    proc, sweep = launch(
        ssh_env,
        proj,
        "give-up",
        "x=1,2",
        f"wait_for={gate}",
        wait="false",
        auto_pull="true",
        auto_pull_interval_s=0.3,
        auto_pull_give_up_h=GIVE_UP_H,
        **host,
        **fast,
    )
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert autopull.collector(sweep) is not None
        extra_sshd.pause()
        try:
            _wait("the daemon gives up and exits", lambda: not _daemons(sweep), 120)
        finally:
            extra_sshd.resume()
        gave_up = _gave_up(sweep)
        assert gave_up is not None
        assert gave_up["reason"] == f"{extra_sshd.alias()} unreachable for longer than {GIVE_UP_H:g} h", gave_up
        assert gave_up["at"] - gave_up["since"] >= GIVE_UP_H * 3600
        resume = f"python -m launcher_core.pull {sweep} --resume-auto-pull"
        assert "gave up" in (sweep / ".launcher" / "pull.log").read_text()
        said = _status(sweep, capsys)
        assert "not collecting: 2 jobs not home yet; the pull daemon gave up at" in said, said
        assert f"resume collection with `{resume}`" in " ".join(said.split()), said

        gate.touch()  # the host is back (resumed above); the jobs finish
        resumed = subprocess.run(
            [sys.executable, "-m", "launcher_core.pull", str(sweep), "--resume-auto-pull"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "is collected by its pull daemon (pid" in resumed.stdout
        _wait("every job pulled", lambda: {s for s, _ in states(sweep).values()} == {JobState.PULLED}, 120)
        _wait("the resumed daemon exits once the sweep is home", lambda: not _daemons(sweep), 30)
        assert _gave_up(sweep) is None
        assert all((sweep / str(n) / "result.json").exists() for n in (0, 1))
        assert "gave up" not in _status(sweep, capsys)
    finally:
        for pid in _daemons(sweep):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize("bad", [0, -1, "soon", True])
def test_a_give_up_time_that_is_not_a_positive_number_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"hydra\.launcher\.auto_pull_give_up_h must be a number of hours > 0"):
        autopull.check_give_up(bad)  # type: ignore[arg-type]
    autopull.check_give_up(0.0005)  # fractions of an hour are fine
