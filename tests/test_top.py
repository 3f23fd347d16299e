"""``launcher-core top`` against real sweeps: local_pool here, remote_ssh on the loopback sshd,
slurm on the test cluster. Each job prints a few lines, then waits for a release file, so the
snapshot sees it running with its last line; ``top --once`` is run as a user would, and the
snapshot model (``launcher_core.collect.overview``) is checked directly.

The one stand-in is ``nvidia-smi`` (no GPU here): a script answering the query formats the real
one answers (``tests/gpu_standin.py``), put on this machine's PATH or on the PATH the remote
jobs get from their set-up lines.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from launcher_core.cli.top import Selection, handle_key, render_live, render_text
from launcher_core.collect.overview import Overview, Snapshot
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.conftest import REPO_ROOT
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHServer, SSHTestEnv

APP = """\
import os
import shutil
import sys
import time

import hydra


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    for epoch in range(1, 4):
        print(f"epoch {epoch}/3 x={cfg.x}", flush=True)
    if cfg.x in cfg.fail_on:
        raise ValueError(f"bad x={cfg.x}")
    deadline = time.time() + 120
    while not os.path.exists(cfg.release) and time.time() < deadline:
        time.sleep(0.1)
    return cfg.x


if __name__ == "__main__":
    main()
"""


def _app(tmp_path: Path) -> Path:
    path = tmp_path / "top_app.py"
    path.write_text(APP)
    return path


def _wait(what: str, check, timeout_s: float = 90.0, interval_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout_s:g} s")
        time.sleep(interval_s)


def _refresh_until(overview: Overview, what: str, done: Callable[[Snapshot], bool]) -> Snapshot:
    """Refresh until ``done`` holds for a snapshot (that one is returned); on a timeout the error
    shows the last snapshot as top draws it."""
    seen: list[Snapshot] = []
    try:
        _wait(what, lambda: seen.append(overview.refresh()) or done(seen[-1]))
    except AssertionError:
        raise AssertionError(render_text(seen[-1])) from None
    return seen[-1]


@pytest.fixture(name="home")
def home_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sweep index of this test's own: top lists only its sweeps."""
    home = tmp_path / "launcher-home"
    home.mkdir()
    monkeypatch.setenv("HYDRA_REMOTE_LAUNCHER_HOME", str(home))
    return home


def _top_once(env_path: str | None = None, *sweeps: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if env_path is not None:
        env["PATH"] = env_path
    proc = subprocess.run(
        [sys.executable, "-m", "launcher_core.cli", "top", "--once", *sweeps],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _states(sweep_dir: Path) -> dict[int, JobState]:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {row.idx: row.state for row in store.jobs()}


def _job_pid(sweep_dir: Path, idx: int) -> int:
    return int((sweep_dir / str(idx) / ".launcher" / "pid").read_text().split()[0])


def _standin(bin_dir: Path, **kwargs: object) -> Path:
    from tests.gpu_standin import install_nvidia_smi

    return install_nvidia_smi(bin_dir, 4, **kwargs)


# --- local_pool ----------------------------------------------------------------------------
@pytest.fixture(name="local_sweep")
def local_sweep_fixture(tmp_path: Path, home: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[str]]]:
    """A local_pool sweep of 4 jobs, 3 at a time: #0 fails at once, #1-#3 run until released."""
    release = tmp_path / "release"
    sweep_dir = tmp_path / "sweep"
    argv = [sys.executable, str(_app(tmp_path)), "-m", "hydra/launcher=local_pool", "hydra.launcher.n_jobs=3"]
    argv += [f"hydra.sweep.dir={sweep_dir}", "+x=0,1,2,3", "+fail_on=[0]", f"+release={release}"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait("3 jobs running", lambda: StateStore.exists_in(sweep_dir) and _running_with_lines(sweep_dir, 3))
        yield sweep_dir, release, proc
    finally:
        release.touch()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _running_with_lines(sweep_dir: Path, n: int) -> bool:
    try:
        states = _states(sweep_dir)
    except sqlite3.Error:  # the launch is creating the store's tables right now
        return False
    running = [i for i, s in states.items() if s is JobState.RUNNING]
    logs = [sweep_dir / str(i) / ".launcher" / "stdout.log" for i in running]
    return len(running) == n and all(p.exists() and "epoch 3/3" in p.read_text() for p in logs)


def test_once_on_local_pool_shows_states_gpus_and_last_lines(
    local_sweep: tuple[Path, Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    sweep_dir, _release, _proc = local_sweep
    running = sorted(i for i, s in _states(sweep_dir).items() if s is JobState.RUNNING)
    assert running == [1, 2, 3]
    # the stand-in lists job #1's process on GPU 0 and job #2's on GPU 2 (pid, GPU, MiB)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apps = [(_job_pid(sweep_dir, 1), 0, 1000), (_job_pid(sweep_dir, 2), 2, 3000)]
    _standin(bin_dir, util=[50, 0, 75, 0], mem=[1000, 0, 3000, 0], apps=apps)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    text = _top_once(path)

    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        sweep_id = store.meta()["sweep_id"]
    assert f"sweep {sweep_id} (local_pool)  pending 0  submitted 0  running 3  completed 0  failed 1" in text
    for idx in running:
        assert f"running #{idx} on localhost" in text and f": epoch 3/3 x={idx}" in text
    assert "failed #0: ValueError: bad x=0" in text
    assert f"GPU 0  util 50%  memory 1000/81559 MiB  {sweep_id}#1" in text
    assert "GPU 1  util 0%  memory 0/81559 MiB  free" in text
    assert f"GPU 2  util 75%  memory 3000/81559 MiB  {sweep_id}#2" in text
    assert "localhost  running 3" in text

    # without nvidia-smi on the PATH this machine shows no GPU rows
    plain = _top_once(os.environ["PATH"])
    assert "GPU " not in plain and "localhost  running 3" in plain


def test_cancel_key_cancels_the_selected_job_only_after_yes(
    local_sweep: tuple[Path, Path, subprocess.Popen[str]],
) -> None:
    sweep_dir, _release, _proc = local_sweep
    with Overview() as overview:
        snapshot = overview.refresh()
    sweep = snapshot.sweeps[0]
    assert [(j.idx, j.state) for j in sweep.jobs] == [(1, "running"), (2, "running"), (3, "running"), (0, "failed")]
    assert sweep.failed[0].reason == "ValueError: bad x=0"
    selection = Selection()
    screen = Console(record=True, width=200, file=io.StringIO())
    screen.print(render_live(snapshot, selection))
    drawn = screen.export_text()
    assert sweep.sweep_id in drawn and "epoch 3/3 x=1" in drawn and "ValueError: bad x=0" in drawn
    asked: list[str] = []
    opened: list[int] = []

    def no(question: str) -> bool:
        asked.append(question)
        return False

    assert handle_key("j", selection, snapshot, confirm=no, open_log=lambda job: opened.append(job.idx))
    assert handle_key("l", selection, snapshot, confirm=no, open_log=lambda job: opened.append(job.idx))
    assert opened == [2]
    assert handle_key("c", selection, snapshot, confirm=no, open_log=lambda job: None)
    assert asked and "cancel job #2" in asked[0] and selection.message == "not cancelled"
    assert _states(sweep_dir)[2] is JobState.RUNNING

    assert handle_key("c", selection, snapshot, confirm=lambda q: True, open_log=lambda job: None)
    assert selection.message == "cancelled #2"
    states = _states(sweep_dir)
    assert states[2] is JobState.CANCELLED
    assert states[1] is JobState.RUNNING and states[3] is JobState.RUNNING
    _wait(
        "job #2's process gone", lambda: not Path(f"/proc/{_job_pid(sweep_dir, 2)}").exists() or _zombie(sweep_dir, 2)
    )
    assert not handle_key("q", selection, snapshot, confirm=no, open_log=lambda job: None)


def _zombie(sweep_dir: Path, idx: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{_job_pid(sweep_dir, idx)}/status").read_text()
    except OSError:
        return True


def _snapshot_text(snapshot: Snapshot) -> str:
    return render_text(snapshot)


# --- remote_ssh on the loopback sshd ----------------------------------------------------------
def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "app.py").write_text(APP)
    return root


def _logins(server: SSHServer) -> int:
    """Logins the sshd accepted so far (its log, ``LogLevel VERBOSE``)."""
    return server.log.read_text(errors="replace").count("Accepted publickey")


def _sweep_id(sweep_dir: Path) -> str:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return str(store.meta()["sweep_id"])


def _settled(snapshot: Snapshot, running: dict[str, int]) -> bool:
    """Each sweep has its number of running jobs, every one with its third line printed."""
    views = {s.sweep_id: s for s in snapshot.sweeps}
    return all(
        sweep_id in views
        and len(views[sweep_id].running) == n
        and all((j.last_line or "").startswith("epoch 3/3") for j in views[sweep_id].running)
        for sweep_id, n in running.items()
    )


@pytest.mark.ssh
@pytest.mark.timeout(400)
def test_remote_ssh_one_command_per_host_and_no_new_login_per_refresh(
    ssh_env: SSHTestEnv, tmp_path: Path, home: Path
) -> None:
    from tests.gpu_standin import install_nvidia_smi
    from tests.sshd import USERS, shared_dir
    from tests.test_remote_ssh import launch

    proj = _project(tmp_path / "proj")
    shared = shared_dir("hrl-top")
    release = shared / "release"
    bin_dir = shared / "bin"
    bin_dir.mkdir(mode=0o755)
    install_nvidia_smi(bin_dir, 4, util=[10, 20, 30, 40], mem=[100, 200, 300, 400])
    # the stand-in is on the PATH the jobs' set-up lines give them, not on the login's own PATH
    gpus = {
        "gpus": 4,
        "gpus_per_job": 1,
        "max_parallel": 4,
        "prepare_commands": f'["PATH={bin_dir}:$PATH; export PATH"]',
    }
    other_host = ssh_env.server.alias(USERS[1])  # no nvidia-smi there
    sweeps: dict[str, Path] = {}
    for name, jobs, fail_on, extra in (
        ("top-a", "+x=0,1,2", "[2]", gpus),
        ("top-b", "+x=3,4", "[]", gpus),
        ("top-c", "+x=5", "[]", {"hosts": f"[{other_host}]"}),
    ):
        args = (jobs, f"+fail_on={fail_on}", f"+release={release}")
        # top-a and top-b share a remote dir: its slots and GPU locks
        remote = "top-c" if name == "top-c" else "top-ab"
        proc, sweep_dir = launch(ssh_env, proj, name, *args, remote=remote, wait="false", **extra)
        assert proc.returncode == 0, proc.stderr
        sweeps[name] = sweep_dir
    ids = {name: _sweep_id(d) for name, d in sweeps.items()}
    host = ssh_env.server.alias()
    try:
        before = _logins(ssh_env.server)
        with Overview() as overview:
            first = overview.refresh()
            assert first.commands[f"ssh {host}"] == 1 and first.commands[f"ssh {other_host}"] == 1
            assert first.commands[f"ssh login {host}"] == 1 and first.commands[f"ssh login {other_host}"] == 1
            assert _logins(ssh_env.server) == before + 2
            wanted = {ids["top-a"]: 2, ids["top-b"]: 2, ids["top-c"]: 1}
            snapshot = _refresh_until(overview, "every job running", lambda seen: _settled(seen, wanted))
            for _ in range(3):
                again = overview.refresh()
                ssh = {k: n for k, n in again.commands.items() if k.startswith("ssh ")}
                assert ssh == {
                    f"ssh {host}": 1,
                    f"ssh {other_host}": 1,
                    f"ssh login {host}": 0,
                    f"ssh login {other_host}": 0,
                }
        assert _logins(ssh_env.server) == before + 2  # several refreshes, no login beyond the first

        a, b, c = (snapshot.sweep(ids[n]) for n in ("top-a", "top-b", "top-c"))
        assert (a.counts["running"], a.counts["failed"], a.total) == (2, 1, 3)
        assert (b.counts["running"], b.total, c.counts["running"], c.total) == (2, 2, 1, 1)
        assert a.failed[0].idx == 2 and a.failed[0].reason
        assert {j.last_line for j in [*a.running, *b.running, *c.running]} == {
            f"epoch 3/3 x={x}" for x in (0, 1, 3, 4, 5)
        }
        gpu_host = snapshot.host(host)
        assert gpu_host.running == 4 and gpu_host.load1 is not None and gpu_host.cpus
        assert [(g.index, g.utilization_pct, g.memory_used_mib) for g in gpu_host.gpus] == [
            ("0", 10.0, 100.0),
            ("1", 20.0, 200.0),
            ("2", 30.0, 300.0),
            ("3", 40.0, 400.0),
        ]
        holders = [g.holders for g in gpu_host.gpus]
        assert all(len(h) == 1 for h in holders)  # four jobs of one GPU each: one job per GPU
        expected = {f"{ids['top-a']}#0", f"{ids['top-a']}#1", f"{ids['top-b']}#0", f"{ids['top-b']}#1"}
        assert {h[0] for h in holders} == expected
        plain_host = snapshot.host(other_host)
        assert plain_host.running == 1 and plain_host.gpus == []

        text = _top_once(None)
        assert f"sweep {ids['top-a']} (remote_ssh)  pending 0  submitted 0  running 2  completed 0  failed 1" in text
        assert f"running #0 on {host}" in text and "epoch 3/3 x=0" in text
        assert f"  {other_host}  running 1" in text
    finally:
        release.touch()


# --- slurm on the test cluster ----------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_slurm_sweeps_cost_one_sacct_per_refresh(slurm_cluster: SlurmCluster, tmp_path: Path, home: Path) -> None:
    from tests.slurm_cluster import launch_sweep

    release = tmp_path / "release"

    def task(cfg):
        import os
        import time

        for epoch in range(1, 4):
            print(f"epoch {epoch}/3 x={cfg.x}", flush=True)
        deadline = time.time() + 120
        while not os.path.exists(cfg.release) and time.time() < deadline:
            time.sleep(0.1)
        return cfg.x

    sweeps = [tmp_path / "sweep-a", tmp_path / "sweep-b"]
    try:
        for n, sweep in enumerate(sweeps):
            jobs = [[f"+x={10 * n + i}", f"+release={release}"] for i in range(2)]
            overrides = [f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=5", "hydra.launcher.wait=false"]
            launch_sweep(task, jobs, overrides)
        ids = [_sweep_id(s) for s in sweeps]
        with Overview() as overview:
            _refresh_until(overview, "4 jobs running", lambda seen: _settled(seen, dict.fromkeys(ids, 2)))
            snapshot = overview.refresh()
        shown = render_text(snapshot)
        # sacct's own lag may add a squeue (SACCT_LAG_S): never a second sacct or sinfo
        assert snapshot.commands["sacct"] == 1 and snapshot.commands["sinfo"] == 1, shown
        assert snapshot.commands["sbatch"] == 0 and snapshot.commands["scancel"] == 0, shown
        for n, sweep_id in enumerate(ids):
            view = snapshot.sweep(sweep_id)
            assert view.backend == "slurm" and (view.counts["running"], view.total) == (2, 2), shown
            assert sorted(j.last_line or "" for j in view.running) == [f"epoch 3/3 x={10 * n + i}" for i in range(2)]
        nodes = {j.host for s in snapshot.sweeps for j in s.running}
        assert len(nodes) == 1 and None not in nodes, shown
        node = snapshot.host(str(nodes.pop()))
        # the tasks hold no GPU: the node is not probed (no step), it shows no GPU rows
        assert node.running == 4 and node.cpus and node.gpus == [], shown
        assert snapshot.commands["srun"] == 0 and snapshot.commands["scontrol"] == 2, shown
        text = _top_once(None)
        assert f"sweep {ids[0]} (slurm)  pending 0  submitted 0  running 2" in text, text
        assert "epoch 3/3 x=11" in text, text
    finally:
        release.touch()


@pytest.mark.slurm
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_slurm_node_shows_its_gpus_and_the_task_holding_each(
    slurm_cluster: SlurmCluster, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two one-GPU jobs on the test node (its 4 GPUs are Slurm gres; the stand-in nvidia-smi is on
    the jobs' PATH only): one step in one of the tasks reads the node's GPUs, and each job is named
    on the GPU Slurm gave it, as the job itself reads it from ``scontrol``. Then the node's
    nvidia-smi hangs: the step times out and the node shows its load, no GPUs and why."""
    from launcher_core.backends.slurm import nodes
    from tests.slurm_cluster import launch_sweep

    release = tmp_path / "release"
    bin_dir = tmp_path / "bin"
    _standin(bin_dir, util=[11, 22, 33, 44], mem=[100, 200, 300, 400])

    def task(cfg):
        import os
        import re
        import subprocess
        import time

        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        shown = subprocess.run(["scontrol", "-d", "show", "job", job], capture_output=True, text=True, timeout=30)
        print(f"x={cfg.x} gpu={','.join(re.findall(r'[(]IDX:([0-9,-]+)[)]', shown.stdout))}", flush=True)
        deadline = time.time() + 120
        while not os.path.exists(cfg.release) and time.time() < deadline:
            time.sleep(0.1)
        return cfg.x

    sweep = tmp_path / "sweep"
    overrides = [
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.wait=false",
        "hydra.launcher.gpus_per_node=1",
        f"hydra.launcher.setup_commands=['export PATH={bin_dir}:$PATH']",
    ]
    try:
        launch_sweep(task, [[f"+x={i}", f"+release={release}"] for i in range(2)], overrides)
        sweep_id = _sweep_id(sweep)

        def both_on_gpus(snapshot: Snapshot) -> bool:
            running = snapshot.sweep(sweep_id).running if snapshot.sweeps else []
            hosts = [h for h in snapshot.hosts if h.name == (running[0].host if running else None)]
            return len(running) == 2 and all("gpu=" in (j.last_line or "") for j in running) and bool(hosts[0].gpus)

        with Overview() as overview:
            _refresh_until(overview, "2 jobs running on their GPUs", both_on_gpus)
            snapshot = overview.refresh()
        shown = render_text(snapshot)
        # per refresh: sacct, sinfo, one scontrol for the one array, one step on the one node
        assert snapshot.commands["sacct"] == 1 and snapshot.commands["sinfo"] == 1, shown
        assert snapshot.commands["scontrol"] == 1 and snapshot.commands["srun"] == 1, shown
        view = snapshot.sweep(sweep_id)
        gpu_of = {j.idx: (j.last_line or "").split("gpu=")[1] for j in view.running}  # the job's own word
        assert sorted(gpu_of) == [0, 1] and len(set(gpu_of.values())) == 2, shown
        assert all(g in ("0", "1", "2", "3") for g in gpu_of.values()), shown
        node = snapshot.host(str(view.running[0].host))
        assert node.running == 2 and node.cpus and node.load1 is not None and node.note is None, shown
        assert [(g.index, g.utilization_pct, g.memory_used_mib) for g in node.gpus] == [
            ("0", 11.0, 100.0),
            ("1", 22.0, 200.0),
            ("2", 33.0, 300.0),
            ("3", 44.0, 400.0),
        ], shown
        holders = {g.index: g.holders for g in node.gpus}
        assert holders == {
            str(i): tuple(f"{sweep_id}#{idx}" for idx, gpu in gpu_of.items() if gpu == str(i)) for i in range(4)
        }, shown

        text = _top_once(None)  # as a user runs it; its own PATH has no nvidia-smi
        for idx, gpu in gpu_of.items():
            util, mem = 11 * (int(gpu) + 1), 100 * (int(gpu) + 1)
            assert f"    GPU {gpu}  util {util}%  memory {mem}/81559 MiB  {sweep_id}#{idx}" in text, text
        assert text.count("MiB  free") == 2, text

        # nvidia-smi hangs on the node: the step is given up, the rest of the refresh stands
        hung = bin_dir / ".hung"
        hung.write_text("#!/bin/sh\nexec sleep 60\n")
        hung.chmod(0o755)
        os.replace(hung, bin_dir / "nvidia-smi")
        monkeypatch.setattr(nodes, "PROBE_TIMEOUT_S", 2.0)
        with Overview() as overview:
            tic = time.monotonic()
            stuck = overview.refresh()
            took = time.monotonic() - tic
        shown = render_text(stuck)
        node = stuck.host(node.name)
        assert node.gpus == [] and node.running == 2 and node.cpus and node.load1 is not None, shown
        assert (node.note or "").startswith("GPUs not read: no answer within 2 s (a step in task "), shown
        assert f"  {node.name}  running 2  load " in shown and f"\n    {node.note}\n" in shown, shown
        assert stuck.sweep(sweep_id).counts["running"] == 2 and took < 30, shown
    finally:
        release.touch()


def test_slurm_gpu_ids_and_probe_answers_are_read_as_slurm_and_the_step_print_them() -> None:
    """``scontrol -o -d show job`` lines as Slurm 22.05 prints them (typed GPUs, several nodes, a
    pending task), and the probe's answers: constrained devices, a refused step, no nvidia-smi."""
    from launcher_core.backends.slurm.nodes import TaskGpus, parse_probes, parse_task_gpus, read_node_gpus
    from launcher_core.errors import BackendError

    lines = [
        "JobId=4 ArrayJobId=2 ArrayTaskId=0 JobName=wrap JobState=RUNNING Reason=None NumNodes=1 "
        "NodeList=vm JOB_GRES=gpu:2   Nodes=vm CPU_IDs=2 Mem=100 GRES=gpu:2(IDX:2-3) MinCPUsNode=1",
        "JobId=5 ArrayJobId=2 ArrayTaskId=1 JOB_GRES=gpu:a100:3   Nodes=n[1-2] CPU_IDs=0 Mem=1 "
        "GRES=gpu:a100:1(IDX:0),gpu:a100:2(IDX:2,5) Nodes=n3 CPU_IDs=1 Mem=1 GRES=gpu:a100:1(IDX:1)",
        "JobId=2 ArrayJobId=2 ArrayTaskId=2-9 JobState=PENDING Reason=Resources NumNodes=1",
        "JobId=6 ArrayJobId=2 ArrayTaskId=3 JobState=COMPLETING NumNodes=1 Nodes=vm GRES=gpu:1(IDX:0)",
    ]
    found = parse_task_gpus(lines)
    assert found.job_ids == {"2_0": "4", "2_1": "5"}
    assert found.gpus == {("vm", "2_0"): ("2", "3"), ("n[1-2]", "2_1"): ("0", "2", "5"), ("n3", "2_1"): ("1",)}
    assert found.on("vm", "2_0") == ("2", "3") and found.on("n1", "2_1") == ()

    probes = [("a", "2_0"), ("b", "2_1"), ("c", "3_0")]
    answer = "\n".join(
        [
            "HRL-PROBED 0 0",
            "HRL-OUT 0 HRL-STEP gpus=4,6 cuda=0,1",  # devices constrained: the step sees its task's GPUs
            "HRL-OUT 0 HRL-GPU 0, GPU-a, 90, 1000, 81559",
            "HRL-OUT 0 HRL-GPU 1, GPU-b, 80, 2000, 81559",
            "HRL-PROBED 1 1",
            "HRL-ERR 1 srun: error: Unable to create step for job 5: Job/step already completing or completed",
            "HRL-PROBED 2 0",
            "HRL-OUT 2 HRL-STEP gpus= cuda=",  # no nvidia-smi there: no rows, no note
        ]
    )
    read = parse_probes(answer, probes)
    assert [g.index for g in read.gpus["a"]] == ["0", "1"] and read.held == {("a", "2_0"): ("0", "1")}
    assert read.notes == {
        "b": "GPUs not read: a step in task 2_1 failed (exit 1): srun: error: Unable to create step for job 5: "
        "Job/step already completing or completed"
    }
    assert read.gpus["c"] == [] and "c" not in read.notes and read.commands == {"srun": 3}

    class Unreachable:
        def shell(self, text: str, *, what: str, timeout_s: float | None = None) -> str:
            raise BackendError("reading the nodes' GPUs on host login failed: connection refused")

    allocated = TaskGpus({"2_0": "4"}, {("vm", "2_0"): ("0",)})
    cut = read_node_gpus(Unreachable(), {"vm": ["2_0"], "cpu-node": ["7_0"]}, allocated)
    assert cut.notes == {"vm": "GPUs not read: reading the nodes' GPUs on host login failed: connection refused"}
    assert read_node_gpus(Unreachable(), {"cpu-node": ["7_0"]}, allocated).commands == {}  # no GPU of ours: no step


# --- the host probe, run by sh here against real processes -------------------------------------
def test_probe_reads_gpus_from_environment_or_held_locks_and_last_lines(tmp_path: Path) -> None:
    """What one host command answers, run here with ``sh`` as sshd would: a job whose environment
    names its GPU, a job holding GPU lock files open, the stand-in on a job's PATH only, and
    logs ending in a progress bar (``\\r``) or without a final newline."""
    from launcher_core.machines import parse_probe, poll_answer, probe_script
    from launcher_core.remote.scripts import poll_script
    from launcher_core.runtime.procs import process_start_time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _standin(bin_dir, util=[5, 6, 7, 8])
    locks = tmp_path / "slots"
    locks.mkdir()
    for i in range(4):
        (locks / f"gpu-{i}").touch()
    path = f"PATH={bin_dir}:/usr/bin:/bin"
    holder = "exec 3<$0/gpu-1 4<$0/gpu-3; exec sleep 60"
    procs = {
        "env": subprocess.Popen(["env", "-i", path, "CUDA_VISIBLE_DEVICES=2", "sleep", "60"]),
        "locks": subprocess.Popen(["env", "-i", path, "sh", "-c", holder, str(locks)]),
    }
    logs = {"env": "step 1\nstep 2\n", "locks": "epoch 1\r 10%|#\r 55%|#####"}
    jobs = []
    try:
        for key, proc in procs.items():
            d = tmp_path / key / ".launcher"
            d.mkdir(parents=True)
            (d / "stdout.log").write_text(logs[key])
            _wait("started", lambda p=proc: process_start_time(p.pid) is not None and _exec_done(p.pid))
            (d / "pid").write_text(f"{proc.pid} {process_start_time(proc.pid)}\n")
            jobs.append((key, str(d)))
        script = poll_script([(k, d, "/nonexistent") for k, d in jobs], 1) + probe_script(jobs, "pid")
        answer = subprocess.run(
            ["env", "-i", "PATH=/usr/bin:/bin", "sh", "-s"], input=script, capture_output=True, text=True, timeout=30
        )
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert poll_answer(answer.stdout).split("\n") == ["env running", "locks running"]
    host, readings = parse_probe(answer.stdout)
    assert host.load1 is not None and host.cpus == os.cpu_count()
    assert [(g.index, g.utilization_pct) for g in host.gpus] == [("0", 5.0), ("1", 6.0), ("2", 7.0), ("3", 8.0)]
    assert readings["env"].visible_gpus == ("2",) and readings["env"].last_line == "step 2"
    assert readings["locks"].visible_gpus == ("1", "3") and readings["locks"].last_line == "55%|#####"
    assert readings["env"].pid == procs["env"].pid


def _exec_done(pid: int) -> bool:
    """The process runs its final program (``sleep``), its environment and files in place."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
    except OSError:
        return False


@pytest.mark.skipif(
    shutil.which("nvidia-smi") is None,
    reason="no nvidia-smi here (no GPU driver): the stand-in tests cover its formats; this one checks a real one",
)
def test_a_real_nvidia_smi_answers_what_top_reads() -> None:
    from launcher_core.machines import parse_probe, probe_script, read_this_machine

    here = read_this_machine()
    assert here.gpus and all(g.uuid.startswith("GPU-") and g.memory_total_mib for g in here.gpus)
    answer = subprocess.run(["sh", "-s"], input=probe_script([], "pid"), capture_output=True, text=True, timeout=60)
    host, _jobs = parse_probe(answer.stdout)
    assert [(g.index, g.uuid) for g in host.gpus] == [(g.index, g.uuid) for g in here.gpus]


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_slurm_login_host_the_nodes_and_logs_ride_with_the_sacct_session(
    slurm_cluster: SlurmCluster, ssh_env: SSHTestEnv, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``login_host`` every Slurm command is a session on the login node: a refresh is the
    sacct session (with sinfo, scontrol and the log tails in it), then one session for the steps
    reading the nodes' GPUs, on the master kept from the first one."""
    from tests.slurm_cluster import launch_sweep
    from tests.sshd import shared_dir

    shared = shared_dir("hrl-top-login")
    release = shared / "release"
    bin_dir = shared / "bin"
    bin_dir.mkdir(mode=0o755)
    _standin(bin_dir, util=[5, 6, 7, 8])
    project = tmp_path / "proj"
    project.mkdir()
    monkeypatch.chdir(project)

    def task(cfg):
        import os
        import time

        for epoch in range(1, 4):
            print(f"epoch {epoch}/3 x={cfg.x}", flush=True)
        deadline = time.time() + 120
        while not os.path.exists(cfg.release) and time.time() < deadline:
            time.sleep(0.1)
        return cfg.x

    sweep = project / "multirun" / "top-login"
    overrides = [
        f"hydra.sweep.dir={sweep}",
        f"hydra.launcher.login_host={ssh_env.server.alias()}",
        f"hydra.launcher.ssh_config={ssh_env.server.ssh_config}",
        f"hydra.launcher.remote_dir={ssh_env.remote_dir('top-login')}",
        f"hydra.launcher.python={ssh_env.python}",
        f"hydra.launcher.login_setup=['export SLURM_CONF={slurm_cluster.conf}']",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.wait=false",
        "hydra.launcher.gpus_per_node=1",
        f"hydra.launcher.setup_commands=['export PATH={bin_dir}:$PATH']",
    ]
    host = ssh_env.server.alias()
    try:
        launch_sweep(task, [[f"+x={i}", f"+release={release}"] for i in range(2)], overrides)
        sweep_id = _sweep_id(sweep)
        before = _logins(ssh_env.server)
        with Overview() as overview:
            _refresh_until(overview, "2 jobs running", lambda seen: _settled(seen, {sweep_id: 2}))
            snapshot = overview.refresh()
        shown = render_text(snapshot)
        assert snapshot.commands["sacct"] == 1 and snapshot.commands["sinfo"] == 1, shown
        assert snapshot.commands["scontrol"] == 1 and snapshot.commands["srun"] == 1, shown
        assert snapshot.commands[f"ssh {host}"] == 2 and snapshot.commands[f"ssh login {host}"] == 0, shown
        assert _logins(ssh_env.server) == before + 1  # the first refresh's only
        view = snapshot.sweep(sweep_id)
        assert sorted(j.last_line or "" for j in view.running) == ["epoch 3/3 x=0", "epoch 3/3 x=1"], shown
        node = snapshot.host(str(view.running[0].host))
        assert node.running == 2 and node.cpus and node.note is None, shown
        assert [(g.index, g.utilization_pct) for g in node.gpus] == [("0", 5.0), ("1", 6.0), ("2", 7.0), ("3", 8.0)]
        held = sorted(h for g in node.gpus for h in g.holders)  # one GPU each (Slurm's gres)
        assert held == [f"{sweep_id}#0", f"{sweep_id}#1"] and all(len(g.holders) <= 1 for g in node.gpus), shown
    finally:
        release.touch()
