"""A backend of another package, found through the ``hydra_remote_launcher.backends`` entry point.

``tests/entry_backend`` holds that package as if installed: ``hrl_toy_backend`` (descriptor,
backend, settings), its Hydra face ``hydra_plugins/hrl_toy_launcher`` (``hydra/launcher=toy``)
and ``hrl_toy_backend-0.1.dist-info`` declaring the entry point. Each test puts the dir on
``sys.path`` and ``PYTHONPATH`` (subprocesses: the app, ``launcher-core``), so nothing of the
project names the backend: the registry finds it like any installed one.

Its jobs are detached local processes that write their output dirs into ``remote_dir`` (the
"other machine"); the tests check what a user sees: the importable contract suite, a Hydra sweep
with and without ``wait``, ``status``, ``logs``, ``cancel``, ``files``, ``pull``, ``results`` and
``clean`` on it (real rows, files brought home, the remote copy deleted), and a pipeline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from launcher_core.backends import registry
from launcher_core.contract import BackendContract, Target, files_under, pid_alive, read_pid, wait_until
from launcher_core.errors import ConfigError
from tests.conftest import run_app

pytestmark = pytest.mark.timeout(300)

ENTRY = Path(__file__).resolve().parent / "entry_backend"
LAUNCHER_TARGET = "hydra_plugins.hrl_toy_launcher.launcher.ToyLauncher"


@pytest.fixture(autouse=True)
def toy_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The package "installed" for this test: importable here, on PYTHONPATH for subprocesses, and
    the registry's list of backends read again (and again after the test, without it)."""
    monkeypatch.syspath_prepend(str(ENTRY))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ENTRY), os.environ.get("PYTHONPATH")) if p))
    registry.reload()
    yield
    monkeypatch.undo()
    registry.reload()


# --- the registry -----------------------------------------------------------------------------------
def test_the_registry_finds_the_backend_through_its_entry_point_only() -> None:
    from hrl_toy_backend.descriptor import DESCRIPTOR

    assert not any(ref.startswith("hrl_toy_backend") for ref in registry.BUILTIN)
    assert registry.descriptor("toy") is DESCRIPTOR
    assert registry.for_launcher_target(LAUNCHER_TARGET) is DESCRIPTOR
    caps = registry.capabilities_of({"backend": "toy", "backend_config": {"remote_dir": "/tmp/r"}})
    assert caps == registry.Capabilities(detached=True, remote_copy=True)


def test_without_the_package_on_the_path_the_backend_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ENTRY])
    registry.reload()
    with pytest.raises(ConfigError, match="unknown backend 'toy'"):
        registry.descriptor("toy")


# --- the contract suite, imported ------------------------------------------------------------------
class ToyTarget(Target):
    """The backend side is ``remote_dir``: the job dirs under ``<sweep id>/sweep/``."""

    def outputs(self, handle: Mapping[str, Any]) -> dict[str, int]:
        return files_under(Path(handle["remote_job_dir"]))

    def job_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        job_dir = Path(handle["remote_job_dir"])
        return [str(job_dir)] if job_dir.exists() else []

    def sweep_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        sweep_root = Path(handle["remote_sweep_dir"]).parent  # payloads, the claim, the job dirs
        return [str(sweep_root)] if sweep_root.exists() else []


class TestToyContract(BackendContract):
    @pytest.fixture
    def contract_target(self, contract_project: Path, tmp_path: Path) -> Target:
        from hrl_toy_backend.backend import ToyBackend
        from hrl_toy_backend.settings import ToySettings

        params = {"remote_dir": str(tmp_path / "remote"), "poll_interval_s": 0.2, "kill_grace_s": 1.0}
        settings = ToySettings.from_mapping(params)

        def build(task_function: Any, hydra_context: Any) -> Any:
            return ToyBackend(settings, task_function=task_function)

        return ToyTarget("toy", "toy", contract_project, remote_copy=True, builder=build)


def test_clean_refuses_a_path_outside_the_sweeps_remote_dir_before_deleting_anything(tmp_path: Path) -> None:
    from hrl_toy_backend.backend import from_config

    from launcher_core.remote.paths import CleanRefused

    remote = tmp_path / "remote"
    job_dir = remote / "sw-1" / "sweep" / "0"
    precious = tmp_path / "precious"
    for d in (job_dir, precious):
        d.mkdir(parents=True)
        (d / "keep.txt").write_text("data\n")
    (remote / "sw-1" / "SWEEP_ID").write_text("sw-1\n")
    backend = from_config({"remote_dir": str(remote)})
    handles = {"a": {"remote_job_dir": str(job_dir)}, "b": {"remote_job_dir": str(precious)}}

    with pytest.raises(CleanRefused, match="precious"):
        backend.clean(handles, sweep_id="sw-1")

    assert (job_dir / "keep.txt").is_file() and (precious / "keep.txt").is_file()
    report = backend.clean({"a": handles["a"]}, sweep_id="sw-1")
    assert report.cleaned == {"a"} and not job_dir.exists() and (precious / "keep.txt").is_file()


# --- as a user would --------------------------------------------------------------------------------
APP = """\
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "out.txt").write_text(f"x={cfg.x}\\n")
    if cfg.big_kb:
        (out / "big.bin").write_bytes(bytes([cfg.x % 256]) * (1024 * cfg.big_kb))
    if cfg.pid_dir:
        (Path(cfg.pid_dir) / f"pid-{cfg.x}").write_text(f"{os.getpid()}\\n")
    print(f"job x={cfg.x} started", flush=True)
    time.sleep(cfg.sleep)
    if cfg.x == cfg.fail_on:
        raise ValueError(f"bad x={cfg.x}")
    return {"x": cfg.x, "square": cfg.x * cfg.x}


if __name__ == "__main__":
    main()
"""

CONFIG = """\
x: 0
sleep: 0
fail_on: -1
big_kb: 0
pid_dir: ""
"""


def make_project(root: Path) -> Path:
    (root / "conf").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    return root


def launch(proj: Path, sweep: Path, remote: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``python app.py -m hydra/launcher=toy ...``, as a user types it."""
    argv = ["-m", "hydra/launcher=toy", f"hydra.launcher.remote_dir={remote}", f"hydra.sweep.dir={sweep}", *overrides]
    return run_app(proj / "app.py", argv, cwd=proj)


def launcher_core(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``launcher-core ARGS`` in a subprocess (which finds the backend through its entry point)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    argv = [sys.executable, "-m", "launcher_core", *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def remote_sweep_dirs(remote: Path) -> list[Path]:
    return sorted(p for p in remote.iterdir() if p.is_dir()) if remote.is_dir() else []


def job_rows(proj: Path, sweep: Path) -> list[dict[str, Any]]:
    proc = launcher_core("results", str(sweep), "--format", "json", cwd=proj)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_bad_setting_stops_the_launch_naming_the_key(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")

    proc = launch(proj, proj / "multirun" / "bad", Path("relative/remote"), "x=1,2")

    assert proc.returncode != 0
    assert "hydra.launcher.remote_dir must be an absolute path, got 'relative/remote'" in proc.stderr
    assert not (proj / "multirun" / "bad").exists() and not (proj / "relative").exists()


@pytest.mark.slow
def test_hydra_sweep_with_wait_runs_on_the_backend_and_brings_every_job_home(tmp_path: Path) -> None:
    proj, remote = make_project(tmp_path / "proj"), tmp_path / "remote"
    sweep = proj / "multirun" / "waited"

    proc = launch(proj, sweep, remote, "x=1,2,3", "big_kb=4")

    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout + proc.stderr
    assert "toy: sweep summary" in shown and re.search(r"\bdone\s+3\b", shown) and re.search(r"failed\s+0\b", shown)
    (remote_sweep,) = remote_sweep_dirs(remote)
    for num, x in enumerate((1, 2, 3)):
        job = sweep / str(num)
        assert (job / "out.txt").read_text() == f"x={x}\n"  # copied home
        assert (remote_sweep / "sweep" / str(num) / "out.txt").read_text() == f"x={x}\n"  # written remotely
        assert (job / "big.bin").stat().st_size == 4096
        assert f"job x={x} started" in (job / ".launcher" / "stdout.log").read_text()
    rows = job_rows(proj, sweep)
    expected = [(1, "completed", 1), (2, "completed", 4), (3, "completed", 9)]
    assert [(r["x"], r["state"], r["square"]) for r in rows] == expected


@pytest.mark.slow
def test_wait_false_then_status_files_pull_results_and_clean(tmp_path: Path) -> None:
    proj, remote = make_project(tmp_path / "proj"), tmp_path / "remote"
    sweep = proj / "multirun" / "detached"

    proc = launch(proj, sweep, remote, "hydra.launcher.wait=false", "x=1,2,3", "fail_on=2", "big_kb=200", "sleep=1")

    assert proc.returncode == 0, proc.stderr[-3000:]
    (remote_sweep,) = remote_sweep_dirs(remote)
    exits = [remote_sweep / "sweep" / str(n) / ".launcher" / "toy_exit" for n in range(3)]
    wait_until("the three jobs to end", lambda: all(p.exists() for p in exits))
    assert not (sweep / "0" / "out.txt").exists()  # nothing came home yet

    status = launcher_core("status", str(sweep), cwd=proj)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("completed") >= 2 and "failed" in status.stdout, status.stdout
    assert "ValueError: bad x=2" in status.stdout

    listed = launcher_core("files", str(sweep), "*.bin", "--format", "json", cwd=proj)
    assert listed.returncode == 0, listed.stderr
    assert [(r["#"], r["size"], r["where"]) for r in json.loads(listed.stdout)] == [
        (0, 200 * 1024, "remote"),
        (1, 200 * 1024, "remote"),
        (2, 200 * 1024, "remote"),
    ]

    pulled = launcher_core("pull", str(sweep), "--once", cwd=proj)

    assert pulled.returncode == 0, pulled.stderr
    for num, x in enumerate((1, 2, 3)):
        assert (sweep / str(num) / "out.txt").read_text() == f"x={x}\n"
        assert (sweep / str(num) / "big.bin").read_bytes() == bytes([x]) * (200 * 1024)
    assert "ValueError: bad x=2" in (sweep / "1" / ".launcher" / "stderr.log").read_text()
    rows = job_rows(proj, sweep)
    assert [(r["x"], r["state"]) for r in rows] == [(1, "completed"), (2, "failed"), (3, "completed")]
    assert [rows[0]["square"], rows[2]["square"]] == [1, 9]
    listed = launcher_core("files", str(sweep), "*.bin", "--format", "json", cwd=proj)
    assert {r["where"] for r in json.loads(listed.stdout)} == {"local"}

    cleaned = launcher_core("clean", str(sweep), "--yes", cwd=proj)

    assert cleaned.returncode == 0, cleaned.stderr
    assert remote_sweep_dirs(remote) == [], f"left on the backend: {list(remote.rglob('*'))[:10]}"
    assert (sweep / "2" / "big.bin").read_bytes() == bytes([3]) * (200 * 1024)  # the local copy stays
    assert [(r["x"], r["state"]) for r in job_rows(proj, sweep)][2] == (3, "completed")
    again = launcher_core("clean", str(sweep), "--yes", cwd=proj)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_cancel_stops_the_running_jobs_and_logs_reads_them_live(tmp_path: Path) -> None:
    proj, remote = make_project(tmp_path / "proj"), tmp_path / "remote"
    sweep = proj / "multirun" / "cancelled"
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()

    proc = launch(proj, sweep, remote, "hydra.launcher.wait=false", "x=1,2", "sleep=300", f"pid_dir={pid_dir}")

    assert proc.returncode == 0, proc.stderr[-3000:]

    def two_pids() -> list[int] | None:
        pids = [read_pid(p) for p in sorted(pid_dir.glob("pid-*"))]
        return [p for p in pids if p is not None] if len(pids) == 2 and None not in pids else None

    pids: list[int] = wait_until("both jobs to run", two_pids)
    assert all(pid_alive(pid) for pid in pids)
    logs = launcher_core("logs", str(sweep), "0", cwd=proj)
    assert logs.returncode == 0 and "job x=1 started" in logs.stdout, logs.stdout + logs.stderr

    cancelled = launcher_core("cancel", str(sweep), cwd=proj)

    assert cancelled.returncode == 0, cancelled.stderr
    left = [pid for pid in pids if pid_alive(pid)]
    assert left == [], f"still running after cancel: {left}"
    assert [(r["x"], r["state"]) for r in job_rows(proj, sweep)] == [(1, "cancelled"), (2, "cancelled")]
    status = launcher_core("status", str(sweep), cwd=proj)
    assert status.returncode == 0 and status.stdout.count("cancelled") >= 3, status.stdout  # the column, 2 rows


# --- a pipeline ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_stage_pipeline_runs_on_the_backend(tmp_path: Path) -> None:
    from tests.pipeline_project import make_pipeline_project

    proj, remote = make_pipeline_project(tmp_path / "proj"), tmp_path / "remote"
    launcher = ["hydra/launcher=toy", f"hydra.launcher.remote_dir={remote}"]
    stages = {
        "pretrain": {"app": "app.py", "overrides": ["stage=pretrain", "x=0,1", *launcher]},
        "evaluate": {
            "app": "app.py",
            "needs": ["pretrain"],
            "overrides": ["stage=evaluate", "x=0,1", "upstream=${stage:pretrain,output_dir}", *launcher],
        },
    }
    file = proj / "pipeline.yaml"
    file.write_text(json.dumps({"dir": "runs/pl", "stages": stages}))

    proc = launcher_core("pipeline", "run", str(file), "--wait", cwd=proj, timeout=240)

    assert proc.returncode == 0, proc.stderr[-3000:]
    pdir = proj / "runs" / "pl"
    assert (pdir / "evaluate" / "0" / "out.txt").read_text() == "pretrain:0>evaluate:0"
    assert (pdir / "evaluate" / "1" / "out.txt").read_text() == "pretrain:1>evaluate:1"
    status = launcher_core("pipeline", "status", str(file), cwd=proj)
    assert status.returncode == 0 and status.stdout.count("done") >= 2, status.stdout
