"""Pipelines on local_pool: a 3-stage pipeline with a paired stage and a failing upstream job,
the runner killed (-9) between stages and run again; bad pipeline files refused before anything
is launched; the dry run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher_core.pipeline.cli import main as pipeline_main
from tests.pipeline_project import EXPECTED_RUNS, check_outputs, make_pipeline_project, pipeline_yaml, runs

LAUNCHER_CORE = [sys.executable, "-m", "launcher_core"]


def _pipeline(cmd: str, file: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [*LAUNCHER_CORE, "pipeline", cmd, str(file), *args],
        cwd=file.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _project(tmp_path: Path, **kw: object) -> tuple[Path, Path]:
    proj = make_pipeline_project(tmp_path / "proj")
    record = tmp_path / "record.txt"
    file = proj / "pipeline.yaml"
    file.write_text(pipeline_yaml(record, ["hydra.launcher.n_jobs=3"], cluster="local", **kw))  # type: ignore[arg-type]
    return file, record


def _kill_between_stages(file: Path, record: Path, stage: str, timeout_s: float = 120) -> None:
    """Start ``pipeline run --wait``; SIGKILL it and its stage launch once ``stage`` has started."""
    proc = subprocess.Popen(
        [*LAUNCHER_CORE, "pipeline", "run", str(file), "--wait"],
        cwd=file.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if any(s == stage for s, _x in runs(record)):
                os.killpg(proc.pid, signal.SIGKILL)  # the runner and the stage's launching process
                proc.wait(10)
                return
            assert proc.poll() is None, "the runner ended before the kill point"
            time.sleep(0.02)
        pytest.fail(f"stage {stage} did not start in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow
def test_local_pool_pipeline_killed_between_stages_resumes_exactly_once(tmp_path: Path) -> None:
    file, record = _project(tmp_path)
    _kill_between_stages(file, record, "finetune")
    assert runs(record).get(("evaluate", 0)) is None
    proc = _pipeline("run", file, "--wait")
    assert proc.returncode == 1, proc.stderr[-3000:]  # finetune #1 and pretrain #1 are not done
    assert "resuming stage finetune" in proc.stderr
    assert runs(record) == EXPECTED_RUNS  # no job ran twice, the blocked one never
    check_outputs(file.parent / "runs" / "pl")

    status = _pipeline("status", file)
    assert status.returncode == 0, status.stderr
    assert "blocked: finetune #1 (x=1 tag=b): needs pretrain #1 (failed: ValueError: bad x=1)" in status.stdout
    assert "evaluate" in status.stdout and "done" in status.stdout

    again = _pipeline("run", file, "--wait")  # all settled: nothing is launched again
    assert again.returncode == 1 and "launching" not in again.stderr
    assert runs(record) == EXPECTED_RUNS


@pytest.mark.slow
def test_run_without_wait_leaves_a_driver_that_finishes_the_pipeline(tmp_path: Path) -> None:
    file, record = _project(tmp_path, sleep=0)
    proc = _pipeline("run", file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "go on in the background: driver pid" in proc.stdout
    pid = int(proc.stdout.split("driver pid ")[1].split(",")[0])
    deadline = time.monotonic() + 120
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the driver did not end"
    assert runs(record) == EXPECTED_RUNS
    check_outputs(file.parent / "runs" / "pl")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_dry_run_prints_graph_jobs_and_resolved_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file, record = _project(tmp_path)
    assert pipeline_main(["run", str(file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    pdir = file.parent / "runs" / "pl"
    assert "finetune  <- pretrain" in out
    assert f"#1 x=1 tag=b upstream={pdir / 'pretrain' / '1'}   [needs pretrain #1]" in out
    assert f"#1 x=2 upstream={pdir / 'finetune' / '2'}   [needs finetune #2]" in out
    assert not pdir.exists() and not record.exists()  # nothing launched, nothing written


BAD = [
    ("needs: [nope]", "stage finetune needs stage 'nope', which the file does not define"),
    ("cycle", "stages depend on each other in a cycle: pretrain -> finetune -> pretrain"),
    ("missing", "stage finetune job #1 (x=7): no job of stage pretrain has x=7 (matched on keys x)"),
    ("ambiguous", "stage finetune job #0 (x=0) matches 2 jobs of stage pretrain on keys x"),
    (
        "repeated",
        "stage finetune job #0 (x=0) matches 2 jobs of stage pretrain that have the same values (#0, #1: x=0)",
    ),
    ("not-needed", "stage finetune: upstream refers to stage 'pretrain', which is not in its needs"),
    ("bad-key", "stage finetune: upstream asks for 'nope' of stage pretrain; known: output_dir, sweep_dir"),
    ("reserved", "stage pretrain: override 'hydra.sweep.dir=/x' is set by the pipeline"),
    ("bad-override", "stage pretrain: override 'x=[1'"),
    ("app", "stage pretrain: its app refuses the stage's overrides"),
]


def _bad_file(case: str, proj: Path) -> str:
    pre = {"app": "app.py", "overrides": ["x=0,1"]}
    fin = {"app": "app.py", "needs": ["pretrain"], "overrides": ["x=0,1", "upstream=${stage:pretrain,output_dir}"]}
    if case.startswith("needs"):
        fin["needs"] = ["nope"]
    elif case == "cycle":
        pre["needs"] = ["finetune"]
    elif case == "missing":
        fin["overrides"][0] = "x=0,7"
    elif case == "ambiguous":
        pre["overrides"] = ["x=0,1", "tag=a,b"]
    elif case == "repeated":  # two runs of one config upstream: separate jobs, which no key tells apart
        pre["overrides"] = ["x=0,0"]
        fin["overrides"][0] = "x=0,0"
    elif case == "not-needed":
        fin["needs"] = []
    elif case == "bad-key":
        fin["overrides"][1] = "upstream=${stage:pretrain,nope}"
    elif case == "reserved":
        pre["overrides"].append("hydra.sweep.dir=/x")
    elif case == "bad-override":
        pre["overrides"] = ["x=[1"]
    elif case == "app":
        pre["overrides"].append("no_such_key=1")
    import json

    return json.dumps({"cluster": "local", "dir": "runs/bad", "stages": {"pretrain": pre, "finetune": fin}})


@pytest.mark.parametrize(("case", "message"), BAD, ids=[c for c, _m in BAD])
def test_bad_pipelines_are_refused_before_anything_is_launched(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = make_pipeline_project(tmp_path / "proj")
    file = proj / "pipeline.yaml"
    file.write_text(_bad_file(case, proj))
    assert pipeline_main(["run", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (proj / "runs" / "bad" / "pretrain").exists()


@pytest.mark.slow
def test_cancel_stops_the_driver_and_the_running_stage(tmp_path: Path) -> None:
    """``pipeline cancel`` while pretrain's jobs run: the background driver ends, pretrain's jobs
    end cancelled (not completed), and no later stage starts."""
    from launcher_core.jobs import JobState
    from launcher_core.state import StateStore

    file, record = _project(tmp_path, sleep=60)
    proc = _pipeline("run", file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    driver = int(proc.stdout.split("driver pid ")[1].split(",")[0])
    deadline = time.monotonic() + 120
    while len([s for s, _x in runs(record) if s == "pretrain"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(runs(record)) == 3, runs(record)  # the three pretrain jobs are running

    cancel = _pipeline("cancel", file)
    assert cancel.returncode == 0, cancel.stderr[-3000:]
    assert "goes on from here" in cancel.stdout
    deadline = time.monotonic() + 60
    while _alive(driver) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(driver), "the driver did not end"
    sweep = file.parent / "runs" / "pl" / "pretrain"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with StateStore.for_sweep_dir(sweep, readonly=True) as store:
            states = {r.idx: r.state for r in store.jobs()}
        if all(s.is_terminal for s in states.values()):
            break
        time.sleep(0.2)
    assert states == dict.fromkeys(range(3), JobState.CANCELLED)
    time.sleep(2)
    assert {s for s, _x in runs(record)} == {"pretrain"}  # finetune and evaluate never started


def test_launching_processes_are_found_without_proc_too(tmp_path: Path) -> None:
    """``live_launches`` reads /proc on Linux and ``ps`` elsewhere (macOS): both see a launch."""
    from launcher_core.pipeline.launch import command_lines, ps_command_lines

    token = f"hydra.sweep.dir={tmp_path / 'stage'}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", token])
    try:
        deadline = time.monotonic() + 10  # a loaded machine: the child's argv may show late in ps
        while True:
            from_proc = {pid for pid, argv in command_lines() if token in argv}
            from_ps = {pid for pid, argv in ps_command_lines() if token in argv}
            if from_proc == from_ps == {proc.pid} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert from_proc == from_ps == {proc.pid}
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_a_retried_job_keeps_its_number_dir_and_id(tmp_path: Path) -> None:
    """pretrain #1 fails, then runs alone with --retry-failed (and finetune #1, blocked by it, alone
    after it): each keeps its number in the stage's plan, so every stage's state store holds one
    row per job dir, the retried one completed."""
    from launcher_core.jobs import JobState
    from launcher_core.state import StateStore

    file, record = _project(tmp_path, sleep=0)
    app = file.parent / "app.py"
    fixed = tmp_path / "fixed"  # the failure goes away once this file exists
    app.write_text(
        app.read_text().replace(
            "if cfg.x in cfg.raise_on:", f"if cfg.x in cfg.raise_on and not os.path.exists({str(fixed)!r}):"
        )
    )
    first = _pipeline("run", file, "--wait")
    assert first.returncode == 1, first.stderr[-3000:]
    pretrain = file.parent / "runs" / "pl" / "pretrain"
    with StateStore.for_sweep_dir(pretrain, readonly=True) as store:
        ids = {r.idx: r.job_id for r in store.jobs()}
    fixed.touch()
    again = _pipeline("run", file, "--wait", "--retry-failed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert runs(record)[("pretrain", 1)] == 2 and runs(record)[("finetune", 1)] == 1
    for stage, n in (("pretrain", 3), ("finetune", 3), ("evaluate", 2)):
        with StateStore.for_sweep_dir(pretrain.parent / stage, readonly=True) as store:
            rows = store.jobs()
        assert [r.idx for r in rows] == list(range(n)), stage
        assert [r.output_dir.name for r in rows] == [str(i) for i in range(n)], stage
        assert {r.outcome for r in rows} == {JobState.COMPLETED}, stage
    with StateStore.for_sweep_dir(pretrain, readonly=True) as store:
        assert {r.idx: r.job_id for r in store.jobs()} == ids  # the retried job is the same job
