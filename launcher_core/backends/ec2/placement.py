"""Which jobs go to which instance, and each job's config as its instance must see it."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobSpec


def plan_groups(jobs: Sequence[JobSpec], jobs_per_instance: int, max_instances: int) -> list[list[JobSpec]]:
    """Split jobs over instances: ``ceil(N / jobs_per_instance)`` of them, at most ``max_instances``.

    When the cap bites, the jobs are spread evenly (contiguous, sizes differ by at most one) and
    each instance works through its longer queue ``jobs_per_instance`` at a time.
    """
    if not jobs:
        return []
    wanted = math.ceil(len(jobs) / jobs_per_instance)
    if wanted <= max_instances:
        return [list(jobs[i : i + jobs_per_instance]) for i in range(0, len(jobs), jobs_per_instance)]
    size, extra = divmod(len(jobs), max_instances)
    groups, start = [], 0
    for n in range(max_instances):
        end = start + size + (1 if n < extra else 0)
        groups.append(list(jobs[start:end]))
        start = end
    return groups


def plan_typed_groups(
    typed: Sequence[tuple[str, Sequence[JobSpec]]], jobs_per_instance: int, max_instances: int
) -> list[tuple[str, list[JobSpec]]]:
    """Instances for jobs of several instance types (``resources_from.instance_type``): each type
    gets its own instances, ``max_instances`` in all. When the cap bites, every type keeps at
    least one and the rest go, one at a time, to the type with the most jobs per instance."""
    wanted = [math.ceil(len(specs) / jobs_per_instance) for _type, specs in typed]
    caps = list(wanted)
    if sum(wanted) > max_instances:
        if len(typed) > max_instances:
            types = ", ".join(t for t, _specs in typed)
            raise ConfigError(
                f"hydra.launcher.resources_from.instance_type: the jobs need {len(typed)} instance types ({types}), "
                f"more than hydra.launcher.max_instances={max_instances} instances; raise max_instances"
            )
        caps = [1] * len(typed)
        for _ in range(max_instances - len(typed)):
            open_ = [i for i in range(len(typed)) if caps[i] < wanted[i]]
            best = max(open_, key=lambda i: len(typed[i][1]) / caps[i])
            caps[best] += 1
    return [(t, group) for (t, specs), cap in zip(typed, caps) for group in plan_groups(specs, jobs_per_instance, cap)]


def instance_type_of(spec: JobSpec, default: str) -> str:
    """The instance type a job runs on: its own (``resources_from.instance_type``) or ``default``."""
    return str(spec.resources.get("instance_type", default))


def instance_groups(
    jobs: Sequence[JobSpec], default_type: str, jobs_per_instance: int, max_instances: int
) -> list[tuple[str, list[JobSpec]]]:
    """(instance type, its jobs) per instance: jobs grouped by type, each type split as
    ``jobs_per_instance`` and ``max_instances`` (over all types) say."""
    from launcher_core.resources import resource_groups

    typed: list[tuple[str, Sequence[JobSpec]]] = [
        (instance_type_of(specs[0], default_type), specs) for _resources, specs in resource_groups(jobs)
    ]
    return plan_typed_groups(typed, jobs_per_instance, max_instances)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
