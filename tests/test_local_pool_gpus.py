"""GPUs on the machine the sweep runs on (``hydra/launcher=local_pool`` with ``gpus``), end to end.

Real Hydra apps in subprocesses, as a user runs them. There is no GPU here, so the one stand-in
is ``nvidia-smi`` (``tests/gpu_standin.py``, 4 GPUs), first on the PATH: it stands in for the
GPU driver. Everything else is real: the locks are real ``flock``s on real files, the jobs real
processes. Each job appends its ``CUDA_VISIBLE_DEVICES`` and its start and end times to one
record file outside the job dirs, and the tests check those intervals: no GPU is ever held by two
jobs running at the same time. Where a real ``nvidia-smi`` answers on this machine, the
``real`` variants run the same checks against it (skipped otherwise, saying why).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_app
from tests.gpu_standin import install_nvidia_smi

APP = """\
import json
import os
import time

import hydra
from hydra.core.hydra_config import HydraConfig


def record(cfg, **values):
    line = json.dumps({"sweep": cfg.tag, "job": HydraConfig.get().job.num, **values}) + "\\n"
    fd = os.open(cfg.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    started = time.time()
    record(cfg, event="start", at=started, cuda=os.environ.get("CUDA_VISIBLE_DEVICES"))
    if cfg.crash:
        os.kill(os.getpid(), 9)  # dies holding its GPU: no clean-up code runs
    time.sleep(cfg.sleep)
    record(
        cfg,
        event="end",
        started=started,
        ended=time.time(),
        cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
        nvidia=os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        gpus=cfg.trainer.gpus,
    )


if __name__ == "__main__":
    main()
"""

GPUS = {"one": 1, "two": 2, "cpu": 0, "huge": 8}


def project(root: Path) -> Path:
    (root / "conf" / "model").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(
        "defaults:\n  - model: one\n  - _self_\nseed: 0\nsleep: 1.0\ntag: a\nrecord: ???\ncrash: false\n"
        "hydra:\n  job:\n    chdir: false\n"
    )
    for name, gpus in GPUS.items():
        (root / "conf" / "model" / f"{name}.yaml").write_text(
            f"# @package _global_\nmodel:\n  name: {name}\ntrainer:\n  gpus: {gpus}\n"
        )
    return root


def records(path: Path, event: str = "end") -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


def gpu_ids(rec: dict) -> set[int]:
    return {int(i) for i in rec["cuda"].split(",")} if rec["cuda"] else set()


def assert_never_shared(recs: list[dict]) -> int:
    """No GPU in two overlapping jobs; returns how many pairs of jobs did overlap in time."""
    overlapping = 0
    for a, x in enumerate(recs):
        for y in recs[a + 1 :]:
            if x["started"] < y["ended"] and y["started"] < x["ended"]:
                overlapping += 1
                assert not (gpu_ids(x) & gpu_ids(y)), (x, y)
    return overlapping


def peak_per_gpu(recs: list[dict]) -> dict[int, int]:
    """The most jobs that held each GPU at one time."""
    peaks: dict[int, int] = {}
    for x in recs:
        for gpu in gpu_ids(x):
            at_start = sum(1 for y in recs if gpu in gpu_ids(y) and y["started"] <= x["started"] < y["ended"])
            peaks[gpu] = max(peaks.get(gpu, 0), at_start)
    return peaks


class Machine:
    """What a test needs of the machine's GPUs: a PATH with ``nvidia-smi`` and the GPU count."""

    def __init__(self, path: str, n_gpus: int, lock_dir: Path) -> None:
        self.path = path
        self.n_gpus = n_gpus
        self.lock_dir = lock_dir

    def env(self) -> dict[str, str]:
        return {"PATH": self.path}

    def overrides(self, **settings: object) -> list[str]:
        values = {"gpus": "auto", "gpu_lock_dir": str(self.lock_dir), **settings}
        return ["hydra/launcher=local_pool", *(f"hydra.launcher.{k}={v}" for k, v in values.items())]


def _real_nvidia_smi() -> tuple[str | None, str]:
    found = shutil.which("nvidia-smi")
    if found is None:
        return None, "no real GPU here: nvidia-smi is not on the PATH"
    proc = subprocess.run([found, "-L"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.startswith("GPU "):
        return None, f"nvidia-smi is there but lists no GPU ({(proc.stdout + proc.stderr).strip()[:200]})"
    return found, ""


@pytest.fixture(params=["stand-in", "real"])
def machine(request: pytest.FixtureRequest, tmp_path: Path) -> Machine:
    lock_dir = tmp_path / "gpu-locks"  # its own: other test runs on this machine use other GPU locks
    if request.param == "real":
        found, why = _real_nvidia_smi()
        if found is None:
            pytest.skip(why)
        from launcher_core.runtime.gpus import list_gpus

        return Machine(os.environ["PATH"], len(list_gpus(found)), lock_dir)
    bin_dir = tmp_path / "bin"
    install_nvidia_smi(bin_dir, 4)
    return Machine(f"{bin_dir}{os.pathsep}{os.environ['PATH']}", 4, lock_dir)


@pytest.mark.timeout(300)
def test_one_gpu_jobs_never_overlap(machine: Machine, tmp_path: Path) -> None:
    """12 jobs of one GPU on 4 GPUs (3 per GPU on a real machine): each sees exactly one GPU,
    for CUDA and containers alike, and no GPU is held by two running jobs."""
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    n_jobs = 3 * machine.n_gpus
    seeds = ",".join(map(str, range(n_jobs)))
    proc = run_app(
        proj / "app.py",
        ["-m", *machine.overrides(), f"seed={seeds}", f"record={record}", "sleep=1.5"],
        proj,
        240,
        machine.env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(record)
    assert sorted(r["job"] for r in recs) == list(range(n_jobs))
    for r in recs:
        assert len(gpu_ids(r)) == 1 and gpu_ids(r) <= set(range(machine.n_gpus)), r
        assert r["nvidia"] == r["cuda"], r
    assert assert_never_shared(recs) >= machine.n_gpus  # jobs did run side by side
    assert set().union(*map(gpu_ids, recs)) == set(range(machine.n_gpus))  # one job per GPU by default
    assert max(peak_per_gpu(recs).values()) == 1


@pytest.mark.timeout(300)
def test_two_sweeps_at_once_on_one_machine_never_share_a_gpu(machine: Machine, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    seeds = ",".join(map(str, range(2 * machine.n_gpus)))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(proj / "app.py"),
                "-m",
                *machine.overrides(),
                f"seed={seeds}",
                f"record={record}",
                f"tag={tag}",
                "sleep=1.5",
                f"hydra.sweep.dir={tmp_path / tag}",
            ],
            cwd=proj,
            env={**os.environ, **machine.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _out, err in outs]
    recs = records(record)
    assert sorted((r["sweep"], r["job"]) for r in recs) == sorted(
        (tag, i) for tag in ("a", "b") for i in range(2 * machine.n_gpus)
    )
    assert_never_shared(recs)
    across = sum(
        1
        for x in recs
        for y in recs
        if x["sweep"] == "a" and y["sweep"] == "b" and x["started"] < y["ended"] and y["started"] < x["ended"]
    )
    assert across > 0  # the sweeps did run at the same time, each on GPUs the other did not hold


@pytest.mark.timeout(300)
def test_jobs_per_gpu_two_puts_exactly_two_jobs_on_each_gpu(machine: Machine, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    gpus = min(2, machine.n_gpus)
    seeds = ",".join(map(str, range(4 * gpus)))
    proc = run_app(
        proj / "app.py",
        ["-m", *machine.overrides(gpus=gpus, jobs_per_gpu=2), f"seed={seeds}", f"record={record}", "sleep=2"],
        proj,
        240,
        machine.env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(record)
    assert len(recs) == 4 * gpus
    assert all(len(gpu_ids(r)) == 1 and gpu_ids(r) <= set(range(gpus)) for r in recs)
    assert peak_per_gpu(recs) == {g: 2 for g in range(gpus)}  # two at a time on each, never three


@pytest.mark.timeout(300)
def test_jobs_take_their_gpu_count_from_their_config(machine: Machine, tmp_path: Path) -> None:
    """``resources_from``: jobs of 2, 1 and 0 GPUs side by side; first fit, none shared, a CPU job
    sees no GPU at all."""
    if machine.n_gpus < 2:
        pytest.skip(f"needs 2 GPUs, this machine has {machine.n_gpus}")
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    proc = run_app(
        proj / "app.py",
        [
            "-m",
            *machine.overrides(),
            "+hydra.launcher.resources_from={gpus_per_job:trainer.gpus}",
            "seed=0,1",
            "model=two,one,cpu",
            f"record={record}",
            "sleep=1.5",
        ],
        proj,
        240,
        machine.env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(record)
    assert len(recs) == 6
    for r in recs:
        assert len(gpu_ids(r)) == r["gpus"], r
        if r["gpus"] == 0:
            assert r["cuda"] == "" and r["nvidia"] == "none", r
    assert assert_never_shared(recs) > 0


@pytest.mark.timeout(180)
def test_a_job_asking_more_gpus_than_exist_is_refused_with_nothing_started(machine: Machine, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    sweep = tmp_path / "sweep"
    huge = "huge" if machine.n_gpus < 8 else None
    if huge is None:
        pytest.skip("this machine has 8 GPUs or more: a job of 8 fits")
    proc = run_app(
        proj / "app.py",
        [
            "-m",
            *machine.overrides(),
            "+hydra.launcher.resources_from={gpus_per_job:trainer.gpus}",
            "model=one,huge",
            f"record={record}",
            f"hydra.sweep.dir={sweep}",
        ],
        proj,
        120,
        machine.env(),
    )
    assert proc.returncode != 0
    assert "job #1 (model=huge " in proc.stderr, proc.stderr[-2000:]
    assert "hydra.launcher.resources_from.gpus_per_job: trainer.gpus asks for 8 GPUs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not record.exists()  # no job ran
    assert not (sweep / "0").exists()


@pytest.mark.timeout(180)
def test_gpus_on_a_machine_without_nvidia_smi_is_refused(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("this machine has nvidia-smi on its PATH")
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    bare = Machine(os.environ["PATH"], 0, tmp_path / "locks")
    proc = run_app(proj / "app.py", ["-m", *bare.overrides(), "seed=0,1", f"record={record}"], proj, 120)
    assert proc.returncode != 0
    assert "hydra.launcher.gpus=auto: nvidia-smi is not on this machine's PATH" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not record.exists()


def test_bad_gpu_settings_are_refused_naming_the_key() -> None:
    from launcher_core.backends.local_pool import local_pool_settings
    from launcher_core.errors import ConfigError

    for settings, message in [
        ({"gpus": 0}, "hydra.launcher.gpus must be auto, a count >= 1"),
        ({"gpus": [0, 0]}, "hydra.launcher.gpus must list distinct GPU ids"),
        ({"gpus": "all"}, "hydra.launcher.gpus must be auto, a count or a list"),
        ({"gpus": 2, "jobs_per_gpu": 0}, "hydra.launcher.jobs_per_gpu must be an integer >= 1"),
        ({"resources_from": {"gpus_per_job": "trainer.gpus"}}, "resources_from.gpus_per_job needs hydra.launcher.gpus"),
        ({"gpus": 2, "gpu_lock_dir": "locks"}, "hydra.launcher.gpu_lock_dir must be an absolute path"),
    ]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
            local_pool_settings(settings)


@pytest.mark.timeout(300)
def test_kill_9_of_the_launcher_and_a_relaunch_never_double_book(machine: Machine, tmp_path: Path) -> None:
    """The launcher dies (SIGKILL) with 4 jobs running; their processes run on, holding their
    GPUs. The relaunch re-attaches them and starts the rest only on GPUs they do not hold."""
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    sweep = tmp_path / "sweep"
    n = 2 * machine.n_gpus
    argv = [
        sys.executable,
        str(proj / "app.py"),
        "-m",
        *machine.overrides(),
        f"seed={','.join(map(str, range(n)))}",
        f"record={record}",
        "sleep=4",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, **machine.env()}
    first = subprocess.Popen(argv, cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(records(record, "start")) < machine.n_gpus and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(records(record, "start")) == machine.n_gpus
    os.kill(first.pid, signal.SIGKILL)  # the launcher only: the jobs lead their own sessions
    first.wait(30)
    again = subprocess.run(argv, cwd=proj, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    recs = records(record)
    assert sorted(r["job"] for r in recs) == list(range(n))  # every job ran exactly once
    assert len(records(record, "start")) == n
    assert_never_shared(recs)
    survivors = [r for r in recs if r["started"] < min(x["started"] for x in recs) + 2]
    assert len(survivors) == machine.n_gpus  # the first four ran on across the relaunch


@pytest.mark.timeout(300)
def test_the_local_gpus_preset_runs_one_job_per_gpu(machine: Machine, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    n = 2 * machine.n_gpus
    proc = run_app(
        proj / "app.py",
        [
            "-m",
            "+cluster=local_gpus",
            f"hydra.launcher.gpu_lock_dir={machine.lock_dir}",
            f"seed={','.join(map(str, range(n)))}",
            f"record={record}",
            "sleep=1.5",
        ],
        proj,
        240,
        {**machine.env(), "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(record)
    assert len(recs) == n and all(len(gpu_ids(r)) == 1 for r in recs)
    assert assert_never_shared(recs) > 0
    assert max(peak_per_gpu(recs).values()) == 1


@pytest.mark.timeout(180)
def test_a_crashed_jobs_gpu_is_freed(machine: Machine, tmp_path: Path) -> None:
    """One GPU: the first job is killed (SIGKILL) while it holds it; the next job gets it."""
    proj = project(tmp_path / "proj")
    record = tmp_path / "record.jsonl"
    proc = run_app(
        proj / "app.py",
        ["-m", *machine.overrides(gpus=1), "crash=true,false", f"record={record}", "sleep=0.5"],
        proj,
        120,
        machine.env(),
    )
    assert "killed by SIGKILL" in proc.stderr + proc.stdout, proc.stderr[-3000:]
    starts = records(record, "start")
    assert [(r["job"], r["cuda"]) for r in starts] == [(0, "0"), (1, "0")]
    (done,) = records(record)
    assert done["job"] == 1 and done["cuda"] == "0"
