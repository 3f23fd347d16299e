"""Which jobs go to which instance, and each job's config as its instance must see it."""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from launcher_core.jobs import JobSpec
from launcher_core.remote.workspace import remote_job_config


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


@contextmanager
def instance_job_config(config: Any, *, sweep_dir: str, subdir: str, code_dir: str) -> Iterator[Any]:
    """The job config as its instance must see it, for the time of the ``with``: relocated like
    every remote job's (:func:`launcher_core.remote.workspace.remote_job_config`: the instance's
    sweep dir, same subdir, changed in place and restored), and with the instance's code dir as
    ``hydra.runtime.cwd`` (the jobs run there; Hydra reports it as the original cwd).

    Unlike the shared relocation, the three values are written as OmegaConf literals: the
    instance resolves its config again, and a ``${`` or a backslash before one in these strings
    must come out as written there. The settings checks (no ``$`` in ``remote_dir``, plain sweep
    ids) and Hydra (no ``${`` in a job's output dir) keep them out today; the escaping keeps that
    true whatever reaches these strings later.
    """
    from omegaconf import open_dict, read_write

    with remote_job_config(config, _omega_literal(sweep_dir), _omega_literal(subdir)) as cfg:
        runtime = cfg.hydra.runtime
        with read_write(runtime), open_dict(runtime):
            node = runtime._get_node("cwd")
            old_cwd = node._value() if node is not None else None
            runtime.cwd = _omega_literal(code_dir)
        try:
            yield cfg
        finally:
            with read_write(runtime), open_dict(runtime):
                runtime.cwd = old_cwd


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
