"""Matching downstream jobs with upstream jobs: which upstream jobs each job needs.

A downstream job is matched with the one upstream job that has the same values of the keys both
stages sweep (or the stage's ``match`` keys), or needs the whole upstream stage when they share
none. Lookups go through an index per (upstream stage, keys), so matching a 10,000-job stage
against a 10,000-job stage is linear, not quadratic.
"""

from __future__ import annotations

import json

from launcher_core.errors import ConfigError
from launcher_core.pipeline.model import STAGE_REF, JobPlan, Pipeline, Stage
from launcher_core.sweep import bare_key


def check_matches(pipeline: Pipeline) -> None:
    """Match every job of every stage now: a missing or ambiguous match is a ``ConfigError``."""
    for stage in pipeline.stages.values():
        for job in stage.jobs:
            job_needs(pipeline, stage, job)


def shared_keys(stage: Stage, upstream: Stage) -> list[str]:
    """The keys a job of ``stage`` is matched on with the jobs of ``upstream``."""
    if stage.match is not None:
        keys = [bare_key(k) for k in stage.match]
        for key in keys:
            if key not in stage.swept or key not in upstream.swept:
                raise ConfigError(
                    f"stage {stage.name}: match key {key!r} must be swept by both {stage.name} "
                    f"and {upstream.name} (swept: {stage.swept} and {upstream.swept})"
                )
        return keys
    return [k for k in stage.swept if k in upstream.swept]


def job_needs(pipeline: Pipeline, stage: Stage, job: JobPlan) -> dict[str, list[int]]:
    """Upstream stage -> the numbers of its jobs this job needs (all of them when no key is
    shared or the stage is only named in ``needs``)."""
    cached = pipeline.needs_cache.get((stage.name, job.num))
    if cached is not None:
        return cached
    per_ref = _ref_targets(pipeline, stage, job)
    needs: dict[str, list[int]] = {}
    for name in stage.needs:
        needs[name] = per_ref.get(name) or all_jobs(pipeline, name)
    pipeline.needs_cache[(stage.name, job.num)] = needs
    return needs


def all_jobs(pipeline: Pipeline, name: str) -> list[int]:
    """Every job number of stage ``name`` (one shared list: a job needing a whole stage costs no copy)."""
    key = (f"*{name}", -1)  # not a stage name: stage names start with a letter
    cached = pipeline.needs_cache.get(key)
    if cached is None:
        cached = pipeline.needs_cache[key] = {name: [j.num for j in pipeline.stages[name].jobs]}
    return cached[name]


def needs_whole_stage(pipeline: Pipeline, name: str, nums: list[int]) -> bool:
    return nums is all_jobs(pipeline, name)


def _ref_targets(pipeline: Pipeline, stage: Stage, job: JobPlan) -> dict[str, list[int]]:
    """Upstream stage -> the jobs this job's references name; a stage whose sweep dir (or whole
    sweep, when no key is shared) is referenced is left out: the job needs all of it."""
    targets: dict[str, list[int]] = {}
    whole: set[str] = set()
    for template in stage.refs.values():
        for name, key in STAGE_REF.findall(template):
            match = None if key == "sweep_dir" else matched_job(pipeline, stage, job, pipeline.stages[name])
            if match is None:
                whole.add(name)
            elif match.num not in targets.setdefault(name, []):
                targets[name].append(match.num)
    return {name: nums for name, nums in targets.items() if name not in whole}


def matched_job(pipeline: Pipeline, stage: Stage, job: JobPlan, upstream: Stage) -> JobPlan | None:
    """The one upstream job with this job's values of the shared keys; None when no key is
    shared (the job reads the whole upstream sweep dir). Refuses no match and several matches."""
    keys = shared_keys(stage, upstream)
    if not keys:
        return None
    wanted = tuple(job.values[k] for k in keys)
    found = _index(pipeline, upstream, tuple(keys)).get(wanted, [])
    shown = " ".join(f"{k}={json.loads(v)}" for k, v in zip(keys, wanted))
    if not found:
        raise ConfigError(
            f"stage {stage.name} job #{job.num} ({shown}): no job of stage {upstream.name} has "
            f"{shown} (matched on keys {', '.join(keys)})"
        )
    if len(found) > 1 and all(u.overrides == found[0].overrides for u in found):
        nums = ", ".join(f"#{u.num}" for u in found[:5])
        raise ConfigError(
            f"stage {stage.name} job #{job.num} ({shown}) matches {len(found)} jobs of stage {upstream.name} "
            f"that have the same values ({nums}: {' '.join(found[0].overrides)}): repeated runs of one config "
            f"cannot be told apart. Sweep a key that differs between them (a seed, say) in both stages"
        )
    if len(found) > 1:
        nums = ", ".join(f"#{u.num} ({' '.join(u.overrides)})" for u in found[:5])
        raise ConfigError(
            f"stage {stage.name} job #{job.num} ({shown}) matches {len(found)} jobs of stage "
            f"{upstream.name} on keys {', '.join(keys)}: {nums}. Sweep the keys that tell them apart "
            f"in {stage.name} too, or name the keys with 'match'"
        )
    return found[0]


def _index(pipeline: Pipeline, upstream: Stage, keys: tuple[str, ...]) -> dict[tuple[str, ...], list[JobPlan]]:
    """The upstream stage's jobs by their values of ``keys`` (built once per stage and keys)."""
    index = pipeline.match_index.get((upstream.name, keys))
    if index is None:
        index = {}
        for candidate in upstream.jobs:
            values = tuple(candidate.values.get(k) for k in keys)
            if None not in values:
                index.setdefault(values, []).append(candidate)  # type: ignore[arg-type]
        pipeline.match_index[(upstream.name, keys)] = index
    return index
