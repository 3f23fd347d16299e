"""``--notify COMMAND`` (and ``hydra.launcher.notify``, which auto_pull passes on as ``--notify``):
a shell command line run with ``sh -c`` once the sweep is home, the sweep's facts in its
environment (``SWEEP_ID``, ``SWEEP_DIR``, ``SWEEP_JOBS``, ``SWEEP_FAILED``) and never pasted into the
command, so a sweep dir full of shell syntax is data, not code.

The sweeps here are state stores of finished slurm sweeps (every job pulled, nothing to poll or
fetch); ``python -m launcher_core.pull`` and ``launcher-core pull`` run on them as separate
processes, as a user runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher_core.jobs import JobSpec, JobState
from launcher_core.state import StateStore

SWEEP_ID = "0123abcd4567ef89"


def finished_sweep(sweep_dir: Path, outcomes: list[JobState]) -> Path:
    """A slurm sweep whose jobs have all come home with these outcomes."""
    specs = [JobSpec(f"job{i}", i, [f"x={i}"], sweep_dir / str(i)) for i in range(len(outcomes))]
    with StateStore.for_sweep_dir(sweep_dir) as store:
        store.set_meta({"sweep_id": SWEEP_ID, "sweep_dir": str(sweep_dir), "backend": "slurm", "backend_config": {}})
        store.add_jobs(specs)
        store.mark_submitted({s.job_id: {"slurm_job_id": f"7_{s.idx}"} for s in specs})
        store.update_states({s.job_id: (state, None) for s, state in zip(specs, outcomes)})
        store.mark_pulled([s.job_id for s in specs])
    return sweep_dir


def pull(
    *args: str, home: Path, cwd: Path, module: str = "launcher_core.pull", path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_REMOTE_LAUNCHER_HOME": str(home), "PATH": path or os.environ["PATH"]}
    argv = [sys.executable, "-m", module, *(["pull"] if module == "launcher_core" else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_notify_runs_a_shell_line_with_the_sweep_in_its_environment(tmp_path: Path) -> None:
    sweep = finished_sweep(tmp_path / "sweep", [JobState.COMPLETED, JobState.FAILED, JobState.COMPLETED])
    out = tmp_path / "out.txt"
    command = f'echo "$SWEEP_ID" > {out}; echo "$SWEEP_DIR $SWEEP_JOBS $SWEEP_FAILED" >> {out}'
    proc = pull(str(sweep), "--once", "--notify", command, home=tmp_path / "home", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines() == [SWEEP_ID, f"{sweep} 3 1"]
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        assert store.meta().get("notified_at")
    again = pull(str(sweep), "--once", "--notify", f"echo again >> {out}", home=tmp_path / "home", cwd=tmp_path)
    assert again.returncode == 0 and "again" not in out.read_text()  # once per sweep


def test_readme_notify_example_expands_the_variables(tmp_path: Path) -> None:
    """``--notify 'notify-send "sweep $SWEEP_ID done: $SWEEP_FAILED failed"'``, with a notify-send
    on the PATH that records its arguments, through ``launcher-core pull``."""
    sweep = finished_sweep(tmp_path / "sweep", [JobState.COMPLETED, JobState.FAILED])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "notify-send.txt"
    fake = bin_dir / "notify-send"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    command = 'notify-send "sweep $SWEEP_ID done: $SWEEP_FAILED failed"'
    path = f"{bin_dir}:{os.environ['PATH']}"
    proc = pull(
        str(sweep), "--once", "--notify", command, home=tmp_path / "h", cwd=tmp_path, module="launcher_core", path=path
    )
    assert proc.returncode == 0, proc.stderr
    assert record.read_text().splitlines() == [f"sweep {SWEEP_ID} done: 1 failed"]


@pytest.mark.parametrize("name", ["a;touch PWNED1;b", "$(touch PWNED2)", "`touch PWNED3`", "q'\"x && touch PWNED4"])
def test_a_sweep_dir_with_shell_syntax_is_never_executed(tmp_path: Path, name: str) -> None:
    sweep = finished_sweep(tmp_path / name, [JobState.COMPLETED])
    out = tmp_path / "out.txt"
    proc = pull(
        str(sweep), "--once", "--notify", f'printf "%s" "$SWEEP_DIR" > {out}', home=tmp_path / "h", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == str(sweep)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("PWNED")) == []
