"""``login_host``: submit from a "laptop" to the test cluster through its login node, the loopback
test sshd of tests/sshd.py (user hrltest1; its Python has no hydra-remote-launcher installed)."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core.backends import backend_for_meta
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.slurm_cluster import TEST_MAX_ARRAY_SIZE, CommandLog, SlurmCluster, launch_sweep, wait_until
from tests.sshd import SSHTestEnv, shared_dir

pytestmark = [pytest.mark.slurm, pytest.mark.ssh, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


def _login_overrides(
    cluster: SlurmCluster, env: SSHTestEnv, calls: CommandLog, sweep: Path, name: str, absolute: bool = False
) -> list[str]:
    """Overrides of a login_host launch; ``absolute``: remote_dir as an absolute path (else under ~)."""
    setup = f"['export SLURM_CONF={cluster.conf}','export PATH={calls.bin_dir}:$PATH']"
    return [
        f"hydra.sweep.dir={sweep}",
        f"hydra.launcher.login_host={env.server.alias()}",
        f"hydra.launcher.ssh_config={env.server.ssh_config}",
        f"hydra.launcher.remote_dir={env.remote_path(name) if absolute else env.remote_dir(name)}",
        f"hydra.launcher.python={env.python}",
        f"hydra.launcher.login_setup={setup}",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
    ]


def _scripts(sweep: Path) -> dict[str, str]:
    """The sweep's sbatch scripts, the two names that change with every launch set aside: the code
    snapshot's tag (``<date>-<time>-<hex>``) and the content hash of the sweep payload (the pickled
    task function and Hydra state)."""
    out = {}
    for path in (sweep / ".launcher" / "slurm").glob("*.sbatch"):
        text = re.sub(r"/\d{8}-\d{6}-[0-9a-f]{6}\b", "/TAG", path.read_text())
        out[path.name] = re.sub(r"/sweep-[0-9a-f]{16}\.pkl\b", "/sweep-HASH.pkl", text)
    return out


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
    jobs = [[f"+x={i}"] for i in range(7)]
    overrides = _login_overrides(slurm_cluster, ssh_env, calls, sweep, "login", absolute=True)
    connections = ssh_env.server.connections()
    # a dry run first: it connects to nothing and shows exactly the scripts the launch then submits
    # (told the cluster's MaxArraySize, which it cannot ask for)
    launch_sweep(
        task, jobs, [*overrides, "hydra.launcher.dry_run=true", f"hydra.launcher.max_array_size={TEST_MAX_ARRAY_SIZE}"]
    )
    dry_scripts = _scripts(sweep)
    assert ssh_env.server.connections() == connections and calls.lines() == []
    returns = launch_sweep(task, jobs, overrides)

    log_tail = ssh_env.server.log.read_text().splitlines()[-30:]
    assert ssh_env.server.connections() - connections == 1, log_tail  # one SSH connection for the launch
    submitted = _scripts(sweep)
    assert sorted(submitted) == ["jobs0-4.sbatch", "jobs5-6.sbatch"]
    assert str(ssh_env.remote_path("login")) in submitted["jobs0-4.sbatch"]
    assert sorted(dry_scripts) == sorted(submitted)
    for name, text in submitted.items():
        diff = difflib.unified_diff(text.splitlines(True), dry_scripts[name].splitlines(True), "submitted", "dry run")
        assert dry_scripts[name] == text, "".join(diff)
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 6 + [JobStatus.FAILED]
    assert [r.return_value for r in returns[:6]] == [
        {"x": i, "user": "hrltest1", "helper": "from the code snapshot"} for i in range(6)
    ]
    with pytest.raises(ValueError, match="failed on the cluster"):
        _ = returns[6].return_value
    # 7 jobs, MaxArraySize 5: two arrays, watched by sacct. squeue is only the fallback for a
    # task accounting has not listed yet (it lags under load), never one call per poll.
    assert calls.calls("sbatch") == 2 and calls.calls("sacct") >= 1
    assert calls.calls("squeue") <= max(1, calls.calls("sacct") // 4)
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
