"""Which jobs go to which instance, and each job's config as its instance must see it."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence

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


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
