"""``launcher-core clean`` of a slurm ``login_host`` sweep: the test cluster through the loopback
sshd (as in tests/test_slurm_login.py); the mirrored files on the login node are checked on disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from launcher_core import cli
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.slurm_cluster import CommandLog, SlurmCluster, launch_sweep
from tests.sshd import SSHTestEnv, shared_dir
from tests.test_slurm_login import _login_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.ssh, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


@pytest.mark.timeout(240)
def test_clean_removes_the_login_node_mirror_of_a_pulled_sweep(
    slurm_cluster: SlurmCluster,
    ssh_env: SSHTestEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls_dir = shared_dir("hrl-slurm-clean-calls")
    request.addfinalizer(lambda: shutil.rmtree(calls_dir, ignore_errors=True))
    calls = CommandLog(calls_dir)
    os.chmod(calls.bin_dir, 0o755)
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.chdir(project)

    def task(cfg):
        from pathlib import Path

        from hydra.core.hydra_config import HydraConfig

        (Path(HydraConfig.get().runtime.output_dir) / "out.txt").write_text(f"x={cfg.x}")
        return cfg.x * 10

    sweep = project / "multirun" / "clean"
    launch_sweep(task, [["+x=1"], ["+x=2"]], _login_overrides(slurm_cluster, ssh_env, calls, sweep, "clean"))
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        handles = [r.handle for r in store.jobs()]
    remote_jobs = [Path(h["remote_job_dir"]) for h in handles]
    remote_sweep = Path(handles[0]["remote_sweep_dir"])
    snapshots = Path(handles[0]["remote_cwd"]).parent
    assert remote_sweep.is_relative_to(ssh_env.remote_path("clean") / "runs")
    assert all((d / ".launcher" / "result.pkl").is_file() for d in remote_jobs) and snapshots.is_dir()

    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert cli.main(["clean", str(sweep), "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"{ssh_env.server.alias()}: 2 jobs" in out and "sweep-level files deleted" in out
    assert not remote_sweep.exists() and not snapshots.exists()
    assert all(not d.exists() for d in remote_jobs)
    assert (ssh_env.remote_path("clean") / "snapshots").is_dir()  # shared by every sweep: kept
    for num, x in enumerate((1, 2)):  # the local copies are intact
        assert (sweep / str(num) / "out.txt").read_text() == f"x={x}"
        assert load_job_return(sweep / str(num) / ".launcher" / "result.pkl").return_value == x * 10
    assert cli.main(["clean", str(sweep), "--yes"]) == 0
    assert "nothing to clean" in capsys.readouterr().out
