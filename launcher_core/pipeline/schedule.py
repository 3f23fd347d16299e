"""Deciding what to launch: which jobs of a stage are ready, waiting or blocked, and the launch plan.

Pure decisions on :class:`~launcher_core.pipeline.state.StageView` (job states) and placements:
nothing here reads a file or starts a process, so the rules are tested directly
(``tests/test_pipeline_units.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from launcher_core.errors import LauncherError
from launcher_core.jobs import JobState
from launcher_core.pipeline.matching import job_needs, matched_job
from launcher_core.pipeline.model import STAGE_REF, JobPlan, Pipeline, Stage
from launcher_core.pipeline.placement import Placement, chained, dependency_task, path_mode, remote_job_dir
from launcher_core.pipeline.state import ACTIVE, CANCELLED, DONE, FAILED, NOT_STARTED, PipelineState, StageView

MAX_ATTEMPTS = 4  # launches of the same jobs (the first and resumes) before the runner gives up
UNKNOWN_REMOTE = "<on the host"  # how a remote upstream dir not known yet is shown


@dataclass
class LaunchPlan:
    """The jobs of a stage to launch now, their resolved references and cluster dependencies."""

    stage: Stage
    nums: list[int]
    values: dict[int, dict[str, str]]  # job -> ref key -> resolved value
    dependencies: dict[int, list[str]]  # job -> upstream cluster tasks it waits for
    resume: bool = False


def ready_jobs(
    pipeline: Pipeline, views: Mapping[str, StageView], stage: Stage, places: Mapping[str, Placement]
) -> tuple[list[int], list[int]]:
    """(jobs whose upstream jobs are all home — or, chained on one cluster, submitted —, jobs
    still waiting); blocked jobs are in neither."""
    ready, waiting = [], []
    mine = places[stage.name]
    for job in stage.jobs:
        if job.num in views[stage.name].blocked:
            continue
        ok = True
        for name, nums in job_needs(pipeline, stage, job).items():
            via_chain = chained(mine, places[name])
            status = views[name].status
            if not all(status[n] == DONE or (via_chain and status[n] in ACTIVE) for n in nums):
                ok = False
                break
        (ready if ok else waiting).append(job.num)
    return ready, waiting


def next_launch(
    pipeline: Pipeline,
    views: Mapping[str, StageView],
    stage: Stage,
    state: PipelineState,
    places: Mapping[str, Placement],
    retry_failed: bool,
) -> LaunchPlan | None:
    """What to launch of this stage now, or None.

    An interrupted launch (some of its jobs never handed to the backend, or handed over by a
    launch that did not end) is launched again with the same jobs: the launch loop resumes it.
    Otherwise a stage launches once none of its jobs waits for upstream jobs and none is
    queued or running, with every ready job that never started, was cancelled (or failed, with
    ``retry_failed``); blocked jobs are left out.
    """
    view = views[stage.name]
    launches = state.launches.get(stage.name, [])
    if launches and interrupted(view, launches[-1]["jobs"]):
        if launches[-1].get("attempts", 1) >= MAX_ATTEMPTS:
            raise LauncherError(
                f"stage {stage.name}: launched {MAX_ATTEMPTS} times and some of its jobs still did not start; "
                f"see {pipeline.log_path(stage.name)}"
            )
        nums = [n for n in launches[-1]["jobs"] if n < len(stage.jobs)]
        return resolved_plan(pipeline, views, stage, nums, places, resume=True)
    if any(s in ACTIVE for s in view.status.values()):
        return None
    ready, waiting = ready_jobs(pipeline, views, stage, places)
    if waiting:
        return None
    wanted = (NOT_STARTED, CANCELLED, FAILED) if retry_failed else (NOT_STARTED, CANCELLED)
    nums = [n for n in ready if view.status[n] in wanted]
    if not nums:
        return None
    return resolved_plan(pipeline, views, stage, nums, places)


def interrupted(view: StageView, nums: Sequence[int]) -> bool:
    """Some of these jobs were never handed to the backend, or by a launch that did not end."""
    for num in nums:
        row = view.rows.get(num)
        if row is None or row.state is JobState.PENDING or row.interrupted:
            return True
    return False


def resolved_plan(
    pipeline: Pipeline,
    views: Mapping[str, StageView],
    stage: Stage,
    nums: list[int],
    places: Mapping[str, Placement],
    resume: bool = False,
) -> LaunchPlan:
    """The launch of these jobs: each job's references resolved, and the upstream tasks it
    waits for when its stage is chained to theirs on one cluster."""
    plan = LaunchPlan(stage, nums, {}, {}, resume)
    for num in nums:
        job = stage.jobs[num]
        plan.values[num] = resolve_refs(pipeline, stage, job, places, views)
        unknown = [k for k, v in plan.values[num].items() if UNKNOWN_REMOTE in v]
        if unknown:
            raise LauncherError(
                f"stage {stage.name} job #{num}: where upstream outputs are for {unknown} is not known yet"
            )
        deps = []
        for name, needed in job_needs(pipeline, stage, job).items():
            if not chained(places[stage.name], places[name]):
                continue
            for unum in needed:
                row = views[name].rows.get(unum)
                task = dependency_task(places[name], row.handle) if row is not None and row.handle else None
                if task is not None and views[name].status[unum] != DONE:
                    deps.append(task)
        if deps:
            plan.dependencies[num] = deps
    return plan


def resolve_refs(
    pipeline: Pipeline,
    stage: Stage,
    job: JobPlan,
    places: Mapping[str, Placement],
    views: Mapping[str, StageView] | None = None,
) -> dict[str, str]:
    """Each reference override of the job with its upstream paths filled in (where the job runs)."""
    out = {}
    for key, template in stage.refs.items():

        def fill(m: re.Match[str]) -> str:
            upstream = pipeline.stages[m.group(1)]
            if m.group(2) == "sweep_dir":
                return str(pipeline.stage_dir(upstream.name))
            target = matched_job(pipeline, stage, job, upstream)
            mode = path_mode(stage, upstream, places[stage.name], places[upstream.name])
            if target is None:
                return str(pipeline.stage_dir(upstream.name))
            return _job_path(pipeline, upstream, target.num, mode, views, places[upstream.name])

        out[key] = STAGE_REF.sub(fill, template)
    return out


def _job_path(
    pipeline: Pipeline,
    upstream: Stage,
    num: int,
    mode: str,
    views: Mapping[str, StageView] | None,
    place: Placement,
) -> str:
    local = str(pipeline.stage_dir(upstream.name) / str(num))
    if mode == "local":
        return local
    row = views[upstream.name].rows.get(num) if views else None
    remote = remote_job_dir(place, row.handle) if row is not None else None
    return remote or f"{UNKNOWN_REMOTE}: {upstream.name}'s remote sweep dir>/{num}"
