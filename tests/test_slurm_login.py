"""``login_host``: submit from a "laptop" to the test cluster through its login node, the loopback
test sshd of tests/sshd.py (user hrltest1; its Python has no hydra-remote-launcher installed)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core.backends import backend_for_meta
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.slurm_cluster import (  # noqa: F401  (fixtures)
    CommandLog,
    SlurmCluster,
    launch_sweep,
    slurm_cluster_fixture,
    wait_until,
)
from tests.sshd import SSHTestEnv, shared_dir, ssh_env_fixture  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.ssh, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


def _login_overrides(cluster: SlurmCluster, env: SSHTestEnv, calls: CommandLog, sweep: Path, name: str) -> list[str]:
    setup = f"['export SLURM_CONF={cluster.conf}','export PATH={calls.bin_dir}:$PATH']"
    return [
        f"hydra.sweep.dir={sweep}",
        f"hydra.launcher.login_host={env.server.alias()}",
        f"hydra.launcher.ssh_config={env.server.ssh_config}",
        f"hydra.launcher.remote_dir={env.remote_dir(name)}",
        f"hydra.launcher.python={env.python}",
        f"hydra.launcher.login_setup={setup}",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
    ]


@pytest.mark.timeout(240)
def test_login_host_submits_watches_fetches_and_cancels_over_ssh(
    slurm_cluster: SlurmCluster,
    ssh_env: SSHTestEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    calls_dir = shared_dir("hrl-slurm-calls")  # the test user's ssh sessions log into it
    request.addfinalizer(lambda: shutil.rmtree(calls_dir, ignore_errors=True))
    calls = CommandLog(calls_dir)
    os.chmod(calls.bin_dir, 0o755)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "helper.py").write_text('VALUE = "from the code snapshot"\n')
    monkeypatch.chdir(project)

    def task(cfg):
        import getpass
        from pathlib import Path

        import helper
        from hydra.core.hydra_config import HydraConfig

        if cfg.x == 6:
            raise ValueError("failed on the cluster")
        (Path(HydraConfig.get().runtime.output_dir) / "out.txt").write_text(f"x={cfg.x}")
        return {"x": cfg.x, "user": getpass.getuser(), "helper": helper.VALUE}

    sweep = project / "multirun" / "login"
    connections = ssh_env.server.connections()
    returns = launch_sweep(
        task, [[f"+x={i}"] for i in range(7)], _login_overrides(slurm_cluster, ssh_env, calls, sweep, "login")
    )

    log_tail = ssh_env.server.log.read_text().splitlines()[-30:]
    assert ssh_env.server.connections() - connections == 1, log_tail  # one SSH connection for the launch
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 6 + [JobStatus.FAILED]
    assert [r.return_value for r in returns[:6]] == [
        {"x": i, "user": "hrltest1", "helper": "from the code snapshot"} for i in range(6)
    ]
    with pytest.raises(ValueError, match="failed on the cluster"):
        _ = returns[6].return_value
    assert (
        calls.calls("sbatch") == 2 and calls.calls("sacct") >= 1 and calls.calls("squeue") == 0
    )  # 7 jobs, MaxArraySize 5
    for num in range(6):  # results and outputs came home, with local paths
        assert (sweep / str(num) / "out.txt").read_text() == f"x={num}"
        assert returns[num].working_dir in (str(sweep / str(num)), str(project))
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        rows = store.jobs()
    assert {(r.state, r.outcome) for r in rows[:6]} == {(JobState.PULLED, JobState.COMPLETED)}
    assert rows[6].outcome is JobState.FAILED

    # wait=false, then another process rebuilds the backend from the stored config and cancels
    def sleeper(cfg):
        import time

        time.sleep(300)

    sweep2 = project / "multirun" / "login-cancel"
    overrides = [*_login_overrides(slurm_cluster, ssh_env, calls, sweep2, "login-cancel"), "hydra.launcher.wait=false"]
    launch_sweep(sleeper, [["+x=0"]], overrides)
    with StateStore.for_sweep_dir(sweep2, readonly=True) as store:
        meta = store.meta()
        handles = {r.job_id: r.handle for r in store.jobs()}
    assert meta["backend_config"]["login_host"] == ssh_env.server.alias()
    backend = backend_for_meta(meta)
    try:
        wait_until("running", lambda: all(s.state is JobState.RUNNING for s in backend.poll(handles).values()), 60)
        log = backend.read_log(next(iter(handles.values())), "stderr", 0)
        assert b"[hydra-remote-launcher] slurm job" in log
        backend.cancel(handles)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {s.state for s in backend.poll(handles).values()}
            if states == {JobState.CANCELLED}:
                break
            time.sleep(0.5)
        assert states == {JobState.CANCELLED}
    finally:
        backend.close()
