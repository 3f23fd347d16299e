"""Every job runs the code as it was at launch, and records which code that was.

The task imports ``helper`` only after a go-file appears; the test edits ``helper.py`` while
the jobs wait, then lets them go: every job must report the launch-time version. Each job dir
gets ``.launcher/code.json``, the sweep its full diff once, ``list``/``status`` show the commit
and ``launcher-core diff`` shows what differed between two sweeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher_core import cli
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHTestEnv, make_project, shared_file

pytestmark = pytest.mark.slow
N_JOBS = 4


def _git(proj: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", str(proj), *args], check=True, capture_output=True, text=True, env=env).stdout


def _git_project(root: Path) -> Path:
    proj = make_project(root)
    (proj / ".gitignore").write_text("multirun/\n__pycache__/\n")
    _git(proj, "init", "-q")
    _git(proj, "add", "-A")
    _git(proj, "commit", "-q", "-m", "v1")
    return proj


def _local_pool_argv(proj: Path, sweep_dir: Path, go: Path, record: Path) -> list[str]:
    return [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=local_pool",
        f"hydra.launcher.n_jobs={N_JOBS}",
        f"hydra.sweep.dir={sweep_dir}",
        f"x=range({N_JOBS})",
        f"wait_for={go}",
        f"record={record}",
    ]


def _wait_for_lines(path: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    pytest.fail(f"{n} jobs did not start in time")


def test_local_pool_jobs_import_the_code_as_it_was_at_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = _git_project(tmp_path / "proj")
    (proj / "helper.py").write_text('VERSION = "v1-uncommitted"\n')  # a dirty tree: recorded as such
    sweep_dir, go, record = proj / "multirun" / "a", tmp_path / "go", tmp_path / "record.txt"
    proc = subprocess.Popen(
        _local_pool_argv(proj, sweep_dir, go, record), cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for_lines(record, N_JOBS)  # every job runs, none imported helper yet
        (proj / "helper.py").write_text('VERSION = "v2-edited-after-launch"\n')
        go.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    head = _git(proj, "rev-parse", "HEAD").strip()
    for n in range(N_JOBS):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value["helper"] == "v1-uncommitted"
        assert ret.return_value["cwd"] == str(proj)  # the task's cwd is what Hydra makes it
        record_json = json.loads((sweep_dir / str(n) / ".launcher" / "code.json").read_text())
        assert record_json["commit"] == head and record_json["dirty"] is True
        assert record_json["diff_sha256"] and record_json["snapshot"]
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        meta = store.meta()
    assert meta["code_commit"] == head and meta["code_dirty"] is True
    snapshot = sweep_dir / ".launcher" / "code" / meta["code_snapshot"]
    assert (snapshot / "helper.py").read_text() == 'VERSION = "v1-uncommitted"\n'
    assert not (snapshot / "multirun").exists()  # the sweep dir itself is not part of the code
    assert "v1-uncommitted" in (sweep_dir / ".launcher" / "code" / f"{meta['code_snapshot']}.diff").read_text()

    # the commit shows where users look
    assert cli.main(["list"]) == 0
    assert f"{head[:10]} +dirty" in capsys.readouterr().out.replace("\n", "")
    assert cli.main(["status", str(sweep_dir), "--offline", "--summary"]) == 0
    assert f"code: {head[:10]} +dirty" in capsys.readouterr().out

    # a second sweep with the edit: `diff` names the file and both versions
    sweep_b = proj / "multirun" / "b"
    argv_b = _local_pool_argv(proj, sweep_b, go, tmp_path / "record_b.txt")
    done = subprocess.run(argv_b, cwd=proj, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    edited = load_job_return(sweep_b / "0" / ".launcher" / "result.pkl").return_value["helper"]
    assert edited == "v2-edited-after-launch"
    assert cli.main(["diff", str(sweep_dir), str(sweep_b)]) == 0
    shown = capsys.readouterr().out
    assert "helper.py" in shown
    assert '-VERSION = "v1-uncommitted"' in shown and '+VERSION = "v2-edited-after-launch"' in shown


def test_relaunch_links_unchanged_files_to_the_previous_snapshot(tmp_path: Path) -> None:
    """The second snapshot of the same code dir costs hard links, not copies."""
    from launcher_core.snapshots import freeze_code

    proj = make_project(tmp_path / "proj")
    (proj / "big.py").write_text("X = 1\n" * 10000)
    first = freeze_code(proj, tmp_path / "s1", sweep_dir=tmp_path / "elsewhere")
    (proj / "helper.py").write_text('VERSION = "v2"\n')
    second = freeze_code(proj, tmp_path / "s2", sweep_dir=tmp_path / "elsewhere")
    assert (first / "big.py").stat().st_ino == (second / "big.py").stat().st_ino
    assert (first / "helper.py").read_text() == 'VERSION = "v1"\n'
    assert (second / "helper.py").read_text() == 'VERSION = "v2"\n'
    assert not (first / "data").exists() and not (first / "__pycache__").exists()  # default excludes
    # editing the live dir in place never reaches a snapshot (no file is shared with it)
    with open(proj / "big.py", "a") as f:
        f.write("Y = 2\n")
    assert "Y = 2" not in (second / "big.py").read_text()


@pytest.mark.slurm
def test_slurm_shared_file_system_jobs_import_the_code_as_it_was_at_launch(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """The usual login-node use: jobs may queue for days while the code dir changes."""
    proj = _git_project(tmp_path / "proj")
    sweep_dir, go = proj / "multirun" / "slurm", tmp_path / "go"
    argv = [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.wait=false",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={sweep_dir}",
        "x=0,1,2",
        f"wait_for={go}",
    ]
    launched = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stderr[-3000:]
    (proj / "helper.py").write_text('VERSION = "v2-edited-after-launch"\n')  # right after the launch returns
    go.touch()
    deadline = time.monotonic() + 120
    results = [sweep_dir / str(n) / ".launcher" / "result.pkl" for n in range(3)]
    while not all(p.exists() for p in results) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [load_job_return(p).return_value["helper"] for p in results] == ["v1"] * 3
    head = _git(proj, "rev-parse", "HEAD").strip()
    assert json.loads((sweep_dir / "0" / ".launcher" / "code.json").read_text())["commit"] == head
    script = next((sweep_dir / ".launcher" / "slurm").glob("*.sbatch")).read_text()
    assert "HRL_CODE_SNAPSHOT" in script and str(sweep_dir / ".launcher" / "code") in script


def test_import_path_maps_only_what_the_snapshot_holds(tmp_path: Path) -> None:
    from launcher_core.runtime.worker import import_path_in_snapshot

    code, snapshot = tmp_path / "proj", tmp_path / "snap"
    for d in (code / "src", code / ".venv" / "lib", snapshot / "src"):
        d.mkdir(parents=True)
    path = [str(code), str(code / "src"), str(code / ".venv" / "lib"), "/usr/lib/python3.11"]
    assert import_path_in_snapshot(code, snapshot, path) == [
        str(snapshot),
        str(snapshot / "src"),
        str(code / ".venv" / "lib"),  # a venv inside the project is not frozen: imported in place
        "/usr/lib/python3.11",
    ]


@pytest.mark.ssh
def test_remote_ssh_jobs_import_the_code_as_it_was_at_launch(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    from launcher_core.collect.pull import PullOptions, pull_sweep_once

    proj = _git_project(tmp_path / "proj")
    go = shared_file("hrl-go").with_name("go")
    sweep_dir = proj / "multirun" / "ssh"
    argv = [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        "hydra/launcher=remote_ssh",
        f"hydra.sweep.dir={sweep_dir}",
        "x=0,1,2",
        f"wait_for={go}",
        "hydra.launcher.wait=false",
        *ssh_env.overrides("frozen", max_parallel=3),
    ]
    launched = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stderr[-3000:]
    (proj / "helper.py").write_text('VERSION = "v2-edited-after-launch"\n')  # right after the launch returns
    go.touch()
    results = [sweep_dir / str(n) / ".launcher" / "result.pkl" for n in range(3)]
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in results) and time.monotonic() < deadline:
        pull_sweep_once(sweep_dir, PullOptions())
        time.sleep(0.3)
    assert [load_job_return(p).return_value["helper"] for p in results] == ["v1"] * 3
    head = _git(proj, "rev-parse", "HEAD").strip()
    assert json.loads((sweep_dir / "1" / ".launcher" / "code.json").read_text())["commit"] == head


@pytest.mark.slurm
@pytest.mark.ssh
def test_slurm_login_host_jobs_import_the_code_as_it_was_at_launch(
    slurm_cluster: SlurmCluster, ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    from launcher_core.collect.pull import PullOptions, pull_sweep_once
    from tests.test_exactly_once import _login_host_overrides

    proj = _git_project(tmp_path / "proj")
    go = shared_file("hrl-go-login").with_name("go")
    sweep_dir = proj / "multirun" / "login"
    argv = [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        *_login_host_overrides(slurm_cluster, ssh_env, "frozen-login"),
        "hydra.launcher.wait=false",
        f"hydra.sweep.dir={sweep_dir}",
        "x=0,1,2",
        f"wait_for={go}",
    ]
    launched = subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stderr[-3000:]
    (proj / "helper.py").write_text('VERSION = "v2-edited-after-launch"\n')  # right after the launch returns
    go.touch()
    results = [sweep_dir / str(n) / ".launcher" / "result.pkl" for n in range(3)]
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in results) and time.monotonic() < deadline:
        pull_sweep_once(sweep_dir, PullOptions())
        time.sleep(0.3)
    assert [load_job_return(p).return_value["helper"] for p in results] == ["v1"] * 3
    head = _git(proj, "rev-parse", "HEAD").strip()
    assert json.loads((sweep_dir / "2" / ".launcher" / "code.json").read_text())["commit"] == head
