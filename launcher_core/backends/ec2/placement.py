"""Which jobs go to which instance, and each job's config as its instance must see it."""

from __future__ import annotations

import copy
import math
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

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


_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


def _omega_literal(text: str) -> str:
    """A string OmegaConf keeps verbatim (no ``${...}`` interpolation).

    OmegaConf reads ``\\${`` as an escaped ``${`` and, right before ``${`` only, ``\\\\`` as one
    backslash: so a run of backslashes there is doubled, then the ``${`` escaped. Elsewhere
    backslashes are literal and stay as they are.
    """
    return _INTERPOLATION_START.sub(lambda m: m.group(1) * 2 + "\\${", text)


def instance_config(config: Any, *, sweep_dir: str, subdir: str, code_dir: str) -> Any:
    """The job config as the instance must see it: sweep dir, subdir and cwd of the instance.

    The local sweep dir often interpolates ``${now:...}``; resolving that on the instance would
    give another dir, so the instance-side values are written as literals.
    """
    from omegaconf import open_dict, read_write

    cfg = copy.deepcopy(config)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.sweep.dir = _omega_literal(sweep_dir)
        cfg.hydra.sweep.subdir = _omega_literal(subdir)
        cfg.hydra.runtime.cwd = _omega_literal(code_dir)
    return cfg


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
