"""The two launch guarantees of the README on the ec2 backend: the code as it was at launch, and
exactly once across a crash.

The launching process is what a user runs: the test project's Hydra app (tests/sshd.py
``make_project``) as a subprocess with ``hydra/launcher=ec2``, pointed at the loopback moto server
of tests/ec2_fixtures.py. The instance agent runner of the ``aws`` fixture lives in the test
process and watches moto, so it boots the instances that subprocess starts (it runs their
user-data locally); the fake credentials reach the subprocess through the environment the fixture
sets. Nothing leaves 127.0.0.1.

- Frozen code: the jobs wait for a go-file before they import ``helper``; ``helper.py`` is edited
  right after a ``wait=false`` launch returns, then the go-file appears. Every job, once pulled
  with ``launcher_core.pull.pull_sweep_once``, reports the launch-time version and has
  ``.launcher/code.json``.
- Exactly once: the launch (``wait=true``) is SIGKILLed at a point of the sweep, the same command
  runs again: every job's side effect (a line in a file outside the job dirs) happens exactly
  once, every result comes home, and the relaunch says what it collected, re-attached and started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from launcher_core.collect.pull import PullOptions, pull_sweep_once
from launcher_core.jobs import JobState
from launcher_core.runtime.worker import load_job_return
from tests.ec2_fixtures import AwsWorld, wait_for
from tests.sshd import make_project
from tests.test_ec2_hydra import launcher_overrides
from tests.test_exactly_once import _lines, _states
from tests.test_frozen_code import _git, _git_project

pytestmark = [pytest.mark.ec2, pytest.mark.slow]

N_JOBS = 4
SLEEP_S = 1.5


def _argv(aws: AwsWorld, proj: Path, sweep_dir: Path, *extra: str, **settings: Any) -> list[str]:
    launcher = aws.launcher_settings(code_dir=str(proj), **settings)
    return [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=ec2",
        *launcher_overrides(launcher),
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


def test_ec2_jobs_import_the_code_as_it_was_at_launch(aws: AwsWorld) -> None:
    proj = _git_project(aws.tmp / "proj")
    sweep_dir, go, record = proj / "multirun" / "frozen", aws.tmp / "go", aws.tmp / "record.txt"
    argv = _argv(aws, proj, sweep_dir, "x=0,1,2", f"wait_for={go}", f"record={record}", wait=False, jobs_per_instance=2)
    launched = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=120, env=_env())
    assert launched.returncode == 0, launched.stderr[-3000:]
    (proj / "helper.py").write_text('VERSION = "v2-edited-after-launch"\n')  # right after the launch returns
    go.touch()

    def all_pulled() -> bool:
        report = pull_sweep_once(sweep_dir, PullOptions(once=True))
        assert report.skipped is None, report.skipped
        return set(_states(sweep_dir)) == {JobState.PULLED}

    wait_for(all_pulled, 90, "every job to be pulled", interval=0.5)
    assert _lines(record) == 3  # every job ran (and waited for the go-file before importing helper)
    head = _git(proj, "rev-parse", "HEAD").strip()
    for n in range(3):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value["x"] == n
        assert ret.return_value["helper"] == "v1", ret.return_value
        code = json.loads((sweep_dir / str(n) / ".launcher" / "code.json").read_text())
        assert code["commit"] == head and code["dirty"] is False and code["snapshot"], code
    # the edit really happened: the project holds v2 while every job ran v1
    assert (proj / "helper.py").read_text() == 'VERSION = "v2-edited-after-launch"\n'
    aws.runner.wait_idle(30)


# --- exactly once across a crash -------------------------------------------------------------
def _kill_condition(point: str, sweep_dir: Path, record: Path) -> Callable[[], bool]:
    def reached() -> bool:
        states = _states(sweep_dir)
        submitted = sum(n for s, n in states.items() if s is not JobState.PENDING)
        if point == "first-submitted":
            return submitted > 0
        if point == "jobs-running":
            return _lines(record) >= 1 and states[JobState.PULLED] == 0
        # "some-pulled": at least one job home, at least one still to come
        return 1 <= states[JobState.PULLED] < N_JOBS

    return reached


def _launch_and_kill(argv: list[str], cwd: Path, reached: Callable[[], bool], timeout_s: float = 90) -> str:
    """Start the launch, SIGKILL it once ``reached()``; its stderr up to then."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if reached():
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return proc.stderr.read() if proc.stderr else ""
            if proc.poll() is not None:
                pytest.fail(f"the launch ended before the kill point: {proc.stderr.read() if proc.stderr else ''}")
            time.sleep(0.02)
        pytest.fail("the kill point was not reached in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize("point", ("first-submitted", "jobs-running", "some-pulled"))
def test_ec2_resumes_after_the_launcher_is_killed(point: str, aws: AwsWorld) -> None:
    proj = make_project(aws.tmp / "proj")
    record = aws.tmp / "executions.txt"
    sweep_dir = proj / "multirun" / "s"
    # two instances, two jobs queued on each: jobs finish (and are pulled) at different times
    argv = _argv(
        aws,
        proj,
        sweep_dir,
        f"x=range({N_JOBS})",
        f"record={record}",
        f"sleep={SLEEP_S}",
        jobs_per_instance=1,
        max_instances=2,
    )
    _launch_and_kill(argv, proj, _kill_condition(point, sweep_dir, record))
    states_at_kill = _states(sweep_dir)
    time.sleep(SLEEP_S)  # the instances go on while no launcher is alive
    proc = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]

    ran = Counter(int(line.split()[0]) for line in record.read_text().splitlines())
    assert ran == dict.fromkeys(range(N_JOBS), 1), f"executions per job: {dict(ran)} (states at kill {states_at_kill})"
    for n in range(N_JOBS):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value["x"] == n
        assert (sweep_dir / str(n) / "result.json").exists()  # the job's own file came home too
        assert Path(ret.hydra_cfg.hydra.runtime.output_dir) == sweep_dir / str(n)
    assert set(_states(sweep_dir)) == {JobState.PULLED}
    message = re.search(r"(\d+) jobs collected, (\d+) re-attached, (\d+) started", proc.stdout + proc.stderr)
    assert message, (proc.stdout + proc.stderr)[-3000:]
    collected, reattached, started = map(int, message.groups())
    assert collected + reattached + started == N_JOBS, message.group(0)
    assert started == 0, message.group(0)  # every job had been handed to EC2 before the kill
    # no instance started twice for a job: the first launch's two, and nothing more
    assert len(aws.instances()) == 2
    aws.runner.wait_idle(30)
    wait_for(lambda: not aws.running_instances(), 15, "the instances to terminate themselves")
