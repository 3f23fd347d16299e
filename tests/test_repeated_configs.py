"""Jobs with the same overrides are separate jobs, on every backend (issue 23).

A job is its position in the sweep (``hydra.job.num``), not its set of overrides: ``t=0.5,0.5,0.5,0.5``
(repeated runs of one config, or an optimizing sweeper proposing the same values twice) runs four
jobs, never more at once than the launcher's limit, each returning its own value; the state store,
``status`` and ``results`` list four jobs; a kill -9 and a relaunch run each job once; and
``skip_completed`` reuses all four. Every backend runs on its real test service on loopback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from launcher_core import results as res
from launcher_core.jobs import JobState
from launcher_core.results.browse import link_sweep
from launcher_core.runtime.worker import load_job_return
from launcher_core.state import StateStore
from tests.sshd import SSHTestEnv, shared_file
from tests.test_exactly_once import launch_and_kill

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

N_JOBS = 4
LIMIT = 2  # jobs at once, on every backend
SLEEP_S = 1.0

APP = '''\
"""Records which job ran when, and returns the job's own number."""
import os
import time

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    num = HydraConfig.get().job.num
    started = time.time()
    time.sleep(cfg.t)
    with open(cfg.record, "a") as f:
        f.write(f"{num} {started} {time.time()} {os.getpid()}\\n")
    return {"num": num, "t": cfg.t}


if __name__ == "__main__":
    main()
'''
CONFIG = "t: 0\nrecord: ''\nhydra:\n  job:\n    chdir: false\n"


def _project(root: Path) -> Path:
    (root / "conf").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    return root


def _launcher(request: pytest.FixtureRequest, backend: str, name: str, proj: Path) -> list[str]:
    """The ``hydra/launcher`` overrides of ``backend``, running at most :data:`LIMIT` jobs at once."""
    if backend == "local_pool":
        return ["hydra/launcher=local_pool", f"hydra.launcher.n_jobs={LIMIT}"]
    if backend == "remote_ssh":
        env: SSHTestEnv = request.getfixturevalue("ssh_env")
        return ["hydra/launcher=remote_ssh", *env.overrides(name, max_parallel=LIMIT)]
    if backend.startswith("slurm"):
        request.getfixturevalue("slurm_cluster")
        return [
            "hydra/launcher=slurm",
            "hydra.launcher.poll_interval_s=0.3",
            "hydra.launcher.timeout_min=5",
            f"hydra.launcher.array_parallelism={LIMIT}",
            f"hydra.launcher.jobs_per_task={2 if backend == 'slurm_packed' else 1}",
        ]
    from tests.test_ec2_hydra import launcher_overrides

    aws = request.getfixturevalue("aws")
    settings = aws.launcher_settings(jobs_per_instance=LIMIT, max_instances=1, code_dir=str(proj))
    return ["hydra/launcher=ec2", *launcher_overrides(settings)]


BACKENDS = [
    "local_pool",
    pytest.param("remote_ssh", marks=pytest.mark.ssh),
    pytest.param("slurm", marks=pytest.mark.slurm),
    pytest.param("slurm_packed", marks=pytest.mark.slurm),  # jobs_per_task=2: two jobs per array task
    pytest.param("ec2", marks=pytest.mark.ec2),
]


def _record(backend: str, tmp_path: Path) -> Path:
    """Where the jobs write their lines: a file every test user may append to on remote_ssh."""
    return shared_file("hrl-repeat") if backend == "remote_ssh" else tmp_path / "record.txt"


def _runs(record: Path) -> list[tuple[int, float, float]]:
    if not record.exists():
        return []
    return [(int(n), float(a), float(b)) for n, a, b, _pid in (ln.split() for ln in record.read_text().splitlines())]


def _most_at_once(runs: list[tuple[int, float, float]]) -> int:
    """The largest number of jobs whose run intervals overlap at one moment."""
    events = sorted([(a, 1) for _n, a, _b in runs] + [(b, -1) for _n, _a, b in runs], key=lambda e: (e[0], e[1]))
    most = current = 0
    for _t, step in events:
        current += step
        most = max(most, current)
    return most


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _argv(proj: Path, sweep_dir: Path, record: Path, launcher: list[str], *extra: str) -> list[str]:
    values = ",".join([str(SLEEP_S)] * N_JOBS)
    return [
        str(proj / "app.py"),
        "-m",
        *launcher,
        f"hydra.sweep.dir={sweep_dir}",
        f"t={values}",
        f"record={record}",
        *extra,
    ]


def _check_four_jobs(sweep_dir: Path, record: Path) -> None:
    """Every position ran once, with its own result, and the store and the readers list four jobs."""
    runs = _runs(record)
    assert Counter(n for n, _a, _b in runs) == dict.fromkeys(range(N_JOBS), 1), runs
    assert _most_at_once(runs) <= LIMIT, runs
    for n in range(N_JOBS):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        assert ret.return_value == {"num": n, "t": SLEEP_S}
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        rows = store.jobs()
    assert [r.idx for r in rows] == list(range(N_JOBS))
    assert len({r.job_id for r in rows}) == N_JOBS
    assert {r.state for r in rows} == {JobState.PULLED}
    table = res.load(sweep_dir)
    assert [row.num for row in table] == list(range(N_JOBS))
    assert [(row.values.get("num"), row.values.get("t")) for row in table] == [(n, SLEEP_S) for n in range(N_JOBS)]
    status = subprocess.run(
        [sys.executable, "-m", "launcher_core.cli", "status", str(sweep_dir), "--all"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    listed = [int(m.group(1)) for m in re.finditer(r"^\W (\d+) \W [0-9a-f]{10} ", status.stdout, re.M)]
    assert listed == list(range(N_JOBS)), status.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_overrides_run_as_separate_jobs(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    proj = _project(tmp_path / "proj")
    record = _record(backend, tmp_path)
    sweep_dir = proj / "multirun" / "s"
    launcher = _launcher(request, backend, f"repeat-{backend}", proj)
    proc = _run(_argv(proj, sweep_dir, record, launcher), proj)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _check_four_jobs(sweep_dir, record)
    report = link_sweep(sweep_dir, tmp_path / "by-value", by=["t"])  # the same values: a name each
    assert report.created == N_JOBS
    links = sorted(p.name for p in (tmp_path / "by-value").iterdir())
    assert links == [f"t=1,#{n}" for n in range(N_JOBS)]
    assert [(tmp_path / "by-value" / name).resolve() for name in links] == [sweep_dir / str(n) for n in range(N_JOBS)]

    again = _run(_argv(proj, sweep_dir, record, launcher, "hydra.launcher.skip_completed=true"), proj)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"{N_JOBS} jobs already completed or running: not launched again" in again.stdout + again.stderr
    _check_four_jobs(sweep_dir, record)  # nothing ran a second time


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_overrides_run_once_across_a_kill(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Killed -9 once the first job finished (others running or queued), then launched again."""
    proj = _project(tmp_path / "proj")
    record = _record(backend, tmp_path)
    sweep_dir = proj / "multirun" / "s"
    argv = _argv(proj, sweep_dir, record, _launcher(request, backend, f"repeat-kill-{backend}", proj))
    launch_and_kill(argv, proj, lambda: len(_runs(record)) >= 1, timeout_s=150)
    proc = _run(argv, proj)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _check_four_jobs(sweep_dir, record)


def test_a_store_of_an_earlier_version_resumes_with_its_ids(tmp_path: Path) -> None:
    """A sweep dir whose store keys jobs by their overrides alone (as versions before position
    ids did) keeps those ids on a relaunch: its completed jobs are reused with skip_completed,
    and only the position the old store had merged away runs."""
    from launcher_core.jobs import legacy_job_id_for

    proj = _project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    launcher = ["hydra/launcher=local_pool", f"hydra.launcher.n_jobs={LIMIT}"]
    first = _run(
        [str(proj / "app.py"), "-m", *launcher, f"hydra.sweep.dir={sweep_dir}", "t=0.1,0.2", f"record={record}"], proj
    )
    assert first.returncode == 0, first.stderr[-3000:]
    # rewrite the store as an earlier version left it: overrides-only ids, no id scheme in meta
    with StateStore.for_sweep_dir(sweep_dir) as store:
        meta = store.meta()
        sweep_id = meta["sweep_id"]
        conn = store._conn
        conn.execute("DELETE FROM meta WHERE key='job_ids'")
        for row in store.jobs():
            conn.execute(
                "UPDATE jobs SET job_id=? WHERE job_id=?", (legacy_job_id_for(sweep_id, row.overrides), row.job_id)
            )
        legacy_ids = {r.idx: r.job_id for r in store.jobs()}
    assert len(legacy_ids) == 2
    # the relaunch adds a repeat of t=0.2 at position 2: it must run; 0 and 1 are reused
    again = _run(
        [
            str(proj / "app.py"),
            "-m",
            *launcher,
            f"hydra.sweep.dir={sweep_dir}",
            "t=0.1,0.2,0.2",
            f"record={record}",
            "hydra.launcher.skip_completed=true",
        ],
        proj,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert Counter(n for n, _a, _b in _runs(record)) == {0: 1, 1: 1, 2: 1}
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        rows = {r.idx: r for r in store.jobs()}
    assert {i: rows[i].job_id for i in (0, 1)} == legacy_ids
    assert rows[2].job_id not in legacy_ids.values() and rows[2].state is JobState.PULLED
    assert json.loads(json.dumps(load_job_return(sweep_dir / "2" / ".launcher" / "result.pkl").return_value)) == {
        "num": 2,
        "t": 0.2,
    }
