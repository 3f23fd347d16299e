"""The pipeline scheduler, called directly on in-memory job states: which jobs are ready, waiting
or blocked, what a stage launches (retry_failed, resuming an interrupted launch, chained stages),
the jobs file a launch reads, and planning and matching at 10,000 jobs a stage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from launcher_core.errors import ConfigError, LauncherError
from launcher_core.jobs import JobState
from launcher_core.pipeline.launch import NUMBERED_SUBDIR, launch_argv, listed_jobs
from launcher_core.pipeline.model import Pipeline
from launcher_core.pipeline.placement import Placement
from launcher_core.pipeline.schedule import MAX_ATTEMPTS, next_launch, ready_jobs
from launcher_core.pipeline.spec import load_pipeline
from launcher_core.pipeline.state import PipelineState, StageRows, StageView, build_views
from launcher_core.state import JobRow

HERE_PLACE = Placement("local_pool", {}, shares_local_files=True)  # local processes: blocking launches
CLUSTER = Placement("slurm", {}, detached=True, shares_local_files=True, chain="c1")


def _pipeline(tmp_path: Path, stages: dict[str, Any]) -> Pipeline:
    (tmp_path / "app.py").touch()
    file = tmp_path / "pipeline.yaml"
    file.write_text(json.dumps({"dir": "runs", "stages": stages}))
    return load_pipeline(file)


def _three_stages(tmp_path: Path) -> Pipeline:
    """pretrain x=0,1,2 -> finetune x=0,1,2 (matched on x) -> report (reads all of finetune)."""
    return _pipeline(
        tmp_path,
        {
            "pretrain": {"app": "app.py", "overrides": ["x=0,1,2"]},
            "finetune": {
                "app": "app.py",
                "needs": ["pretrain"],
                "overrides": ["x=0,1,2", "up=${stage:pretrain,output_dir}"],
            },
            "report": {"app": "app.py", "needs": ["finetune"], "overrides": ["runs=${stage:finetune,sweep_dir}"]},
        },
    )


def _row(pipeline: Pipeline, stage: str, num: int, state: JobState, **kw: Any) -> JobRow:
    """A state store row as a launch that ended normally leaves it (``collected_at`` set)."""
    values: dict[str, Any] = {
        "job_id": f"{stage}-{num}",
        "idx": num,
        "overrides": [],
        "output_dir": pipeline.stage_dir(stage) / str(num),
        "state": state,
        "handle": None,
        "host": None,
        "exit_reason": None,
        "outcome": None,
        "pull_mode": None,
        "created_at": 1.0,
        "submitted_at": None if state is JobState.PENDING else 2.0,
        "started_at": None,
        "finished_at": None,
        "pulled_at": None,
        "collected_at": 3.0,
    }
    values.update(kw)
    return JobRow(**values)


def _views(pipeline: Pipeline, **states: dict[int, Any]) -> dict[str, StageView]:
    """Views from ``stage={num: JobState or (JobState, {row fields})}`` (other jobs: no row)."""
    rows: dict[str, StageRows] = {}
    for stage, jobs in states.items():
        by_num = {}
        for num, spec in jobs.items():
            state, kw = spec if isinstance(spec, tuple) else (spec, {})
            by_num[num] = _row(pipeline, stage, num, state, **kw)
        rows[stage] = (by_num, None)
    return build_views(pipeline, rows)


def _places(pipeline: Pipeline, place: Placement = HERE_PLACE) -> dict[str, Placement]:
    return dict.fromkeys(pipeline.stages, place)


def _state(tmp_path: Path, **launches: list[dict[str, Any]]) -> PipelineState:
    return PipelineState(tmp_path / "state.json", launches=dict(launches))


def _next(pipeline: Pipeline, views: dict[str, StageView], stage: str, state: PipelineState, **kw: Any) -> Any:
    places = kw.pop("places", _places(pipeline))
    return next_launch(pipeline, views, pipeline.stages[stage], state, places, kw.pop("retry_failed", False))


FAILED = (JobState.FAILED, {"exit_reason": "ValueError: bad"})
DONE = (JobState.PULLED, {"outcome": JobState.COMPLETED})


def test_a_first_stage_launches_every_job_and_downstream_waits(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    views = _views(pipeline)
    plan = _next(pipeline, views, "pretrain", _state(tmp_path))
    assert plan.nums == [0, 1, 2] and not plan.resume and plan.values == {0: {}, 1: {}, 2: {}}
    assert ready_jobs(pipeline, views, pipeline.stages["finetune"], _places(pipeline)) == ([], [0, 1, 2])
    assert _next(pipeline, views, "finetune", _state(tmp_path)) is None


def test_a_stage_waits_while_any_job_waits_and_blocks_what_a_failure_blocks(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    views = _views(pipeline, pretrain={0: DONE, 1: FAILED, 2: JobState.RUNNING})
    assert views["pretrain"].status == {0: "done", 1: "failed", 2: "running"}
    assert views["finetune"].blocked == {1: "needs pretrain #1 (failed: ValueError: bad)"}
    assert views["report"].blocked == {0: "needs finetune #1 (blocked)"}  # transitive, whole stage
    assert ready_jobs(pipeline, views, pipeline.stages["finetune"], _places(pipeline)) == ([0], [2])
    assert _next(pipeline, views, "finetune", _state(tmp_path)) is None  # #2 still waits for pretrain #2


def test_once_upstream_settles_the_ready_jobs_launch_without_the_blocked_one(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    views = _views(pipeline, pretrain={0: DONE, 1: FAILED, 2: DONE})
    plan = _next(pipeline, views, "finetune", _state(tmp_path))
    assert plan.nums == [0, 2]
    runs = pipeline.dir / "pretrain"
    assert plan.values == {0: {"up": str(runs / "0")}, 2: {"up": str(runs / "2")}}
    assert views["finetune"].counts() == {"not started": 2, "blocked": 1}


def test_retry_failed_launches_failed_jobs_again_and_then_what_they_blocked(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    views = _views(pipeline, pretrain={0: DONE, 1: FAILED, 2: DONE})
    state = _state(tmp_path, pretrain=[{"jobs": [0, 1, 2], "attempts": 1}])
    assert _next(pipeline, views, "pretrain", state) is None
    assert _next(pipeline, views, "pretrain", state, retry_failed=True).nums == [1]
    views = _views(pipeline, pretrain={0: DONE, 1: DONE, 2: DONE}, finetune={0: DONE, 2: DONE})
    assert _next(pipeline, views, "finetune", state).nums == [1]  # unblocked: launched alone, its own number


def test_an_interrupted_launch_is_resumed_with_the_same_jobs_until_the_attempts_run_out(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    never_collected = (JobState.RUNNING, {"collected_at": None})  # handed over by a launch that was killed
    views = _views(pipeline, pretrain={0: JobState.COMPLETED, 1: never_collected})  # #2 never handed over
    state = _state(tmp_path, pretrain=[{"jobs": [0, 1, 2], "attempts": 1}])
    plan = _next(pipeline, views, "pretrain", state)
    assert plan.resume and plan.nums == [0, 1, 2]
    views = _views(pipeline, pretrain={n: JobState.PENDING for n in range(3)})
    assert _next(pipeline, views, "pretrain", state).resume
    state.launches["pretrain"][-1]["attempts"] = MAX_ATTEMPTS
    with pytest.raises(LauncherError, match=f"launched {MAX_ATTEMPTS} times"):
        _next(pipeline, views, "pretrain", state)


def test_a_stage_with_jobs_queued_or_running_is_not_launched_again(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    views = _views(pipeline, pretrain={0: JobState.SUBMITTED})  # a launch of #0 ended; #1, #2 never launched
    state = _state(tmp_path, pretrain=[{"jobs": [0], "attempts": 1}])
    assert _next(pipeline, views, "pretrain", state) is None
    views = _views(pipeline, pretrain={0: JobState.CANCELLED})
    assert _next(pipeline, views, "pretrain", state).nums == [0, 1, 2]  # cancelled jobs launch again


def test_chained_stages_are_submitted_at_once_with_dependencies_on_the_upstream_tasks(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    task = {  # a slurm handle as the state store keeps it
        "slurm_job_id": "41_0",
        "array_job_id": "41",
        "array_index": 0,
        "chunk_offset": 0,
        "launcher_dir": "/sweep/pretrain/0/.launcher",
        "submitted_at": 0.0,
        "timeout_min": 60,
    }
    queued = (JobState.SUBMITTED, {"handle": task})
    views = _views(pipeline, pretrain={0: queued, 1: (JobState.RUNNING, {"handle": {**task, "array_index": 1}})})
    places = _places(pipeline, CLUSTER)
    assert ready_jobs(pipeline, views, pipeline.stages["finetune"], places) == ([0, 1], [2])
    views = _views(
        pipeline, pretrain={n: (JobState.SUBMITTED, {"handle": {**task, "array_index": n}}) for n in range(3)}
    )
    plan = _next(pipeline, views, "finetune", _state(tmp_path), places=places)
    assert plan.nums == [0, 1, 2] and plan.dependencies == {0: ["41_0"], 1: ["41_1"], 2: ["41_2"]}
    unchained = {**places, "finetune": Placement("slurm", {}, detached=True, shares_local_files=True, chain="c2")}
    assert _next(pipeline, views, "finetune", _state(tmp_path), places=unchained) is None


def test_upstream_dirs_where_the_jobs_ran_come_from_the_handles(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    remote = Placement("remote_ssh", {}, detached=True, remote_place="host-a")
    there = (JobState.PULLED, {"outcome": JobState.COMPLETED, "handle": {"remote_job_dir": "/far/pretrain/0"}})
    views = _views(pipeline, pretrain={0: there, 1: (JobState.PULLED, {"outcome": JobState.COMPLETED}), 2: FAILED})
    places = _places(pipeline, remote)
    with pytest.raises(LauncherError, match=r"finetune job #1: where upstream outputs are for \['up'\] is not known"):
        _next(pipeline, views, "finetune", _state(tmp_path), places=places)
    views["pretrain"].rows[1].handle = {"remote_job_dir": "/far/pretrain/1"}
    assert _next(pipeline, views, "finetune", _state(tmp_path), places=places).values == {
        0: {"up": "/far/pretrain/0"},
        1: {"up": "/far/pretrain/1"},
    }
    elsewhere = {
        **places,
        "finetune": Placement("remote_ssh", {}, detached=True, remote_place="host-b", remote_hint="one host"),
    }
    with pytest.raises(ConfigError, match="run both on one host, or set 'paths: local'"):
        _next(pipeline, views, "finetune", _state(tmp_path), places=elsewhere)


def test_the_jobs_file_lists_each_job_with_its_number_and_literal_paths(tmp_path: Path) -> None:
    pipeline = _three_stages(tmp_path)
    views = _views(pipeline, pretrain={0: DONE, 1: FAILED, 2: DONE})
    plan = _next(pipeline, views, "finetune", _state(tmp_path))
    runs = pipeline.dir / "pretrain"
    assert listed_jobs(plan) == [
        {"num": 0, "overrides": ["x=0", f"up={runs / '0'}"]},
        {"num": 2, "overrides": ["x=2", f"up={runs / '2'}"]},
    ]
    argv = launch_argv(pipeline, plan, HERE_PLACE, tmp_path / "jobs.json", None)
    assert NUMBERED_SUBDIR in argv and f"hydra.sweeper.jobs_file={tmp_path / 'jobs.json'}" in argv
    assert not any(a.startswith(("hydra.job.num", "hydra.launcher.wait", "hydra.sweeper.paired=[{")) for a in argv)
    plan.values[0]["up"] = "/a dir/it's"  # quoted for Hydra, and checked to read back unchanged
    assert listed_jobs(plan)[0]["overrides"][1] == "up='/a dir/it\\'s'"


def test_ten_thousand_jobs_a_stage_plan_match_and_schedule_in_linear_time(tmp_path: Path) -> None:
    """Matching was a scan of the upstream stage per job (10^8 comparisons here); planning parsed
    every value with Hydra's parser."""
    started = time.perf_counter()
    pipeline = _pipeline(
        tmp_path,
        {
            "a": {"app": "app.py", "overrides": ["seed=range(10000)", "lr=0.1"]},
            "b": {"app": "app.py", "needs": ["a"], "overrides": ["seed=range(10000)", "up=${stage:a,output_dir}"]},
            "c": {"app": "app.py", "needs": ["b"]},  # needs all of b
        },
    )
    views = _views(pipeline, a={n: DONE for n in range(10_000)})
    plan = _next(pipeline, views, "b", _state(tmp_path))
    assert len(plan.nums) == 10_000 and plan.values[9_999] == {"up": str(pipeline.dir / "a" / "9999")}
    assert len(listed_jobs(plan)) == 10_000
    assert time.perf_counter() - started < 30  # ~3 s here; quadratic matching took minutes
