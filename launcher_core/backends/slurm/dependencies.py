"""Slurm dependencies of a launch's arrays: ``hydra.launcher.dependency`` (one ``--dependency``
for every array) and ``hydra.launcher.dependency_file`` (the upstream Slurm tasks each job waits
for, written by ``launcher-core pipeline run``).

An array is one ``sbatch``, so its dependency is shared by its tasks. When array task ``i`` of a
chunk needs exactly task ``i`` of one upstream array (the pipeline's usual shape: the same seeds
in the same order), the chunk gets ``aftercorr:<upstream array>`` and each task waits for its own
upstream task only; otherwise ``afterok`` on every upstream task any of its jobs needs. Either
way ``sbatch`` gets ``--kill-on-invalid-dep=yes``: a task whose upstream failed is cancelled by
Slurm (``DependencyNeverSatisfied``) instead of pending forever.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError

_TASK = r"\d+(?:_\d+)?(?:\+\d+)?"
_CONDITION = rf"(?:after|afterany|afterok|afternotok|aftercorr|afterburstbuffer):{_TASK}(?::{_TASK})*|singleton"
_DEPENDENCY = re.compile(rf"(?:{_CONDITION})(?:[,?](?:{_CONDITION}))*")
_UPSTREAM_TASK = re.compile(r"(\d+)_(\d+)")


def check_dependency_settings(options: Any, prefix: str) -> None:
    """Refuse a malformed ``dependency`` or an unreadable ``dependency_file`` before any sbatch."""
    if options.dependency is not None:
        text = str(options.dependency).strip()
        if not _DEPENDENCY.fullmatch(text):
            raise ConfigError(
                f"{prefix}.dependency must be a Slurm dependency such as afterok:1234 or "
                f"aftercorr:1234,afterany:1200_3, got {options.dependency!r}"
            )
        options.dependency = text
    if options.dependency_file is not None:
        load_job_dependencies(str(options.dependency_file), f"{prefix}.dependency_file")


def load_job_dependencies(path: str, key: str = "hydra.launcher.dependency_file") -> dict[str, list[str]]:
    """``{job output dir: ["<array id>_<index>", ...]}`` from the file, checked."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path!r} must hold a JSON object {{job output dir: [array_index, ...]}}")
    out: dict[str, list[str]] = {}
    for job_dir, tasks in data.items():
        if not isinstance(tasks, list) or not all(isinstance(t, str) and _UPSTREAM_TASK.fullmatch(t) for t in tasks):
            raise ConfigError(f"{key}: the tasks of {job_dir!r} must be a list like ['1234_0'], got {tasks!r}")
        out[str(job_dir)] = list(tasks)
    return out


def chunk_dependency(options: Any, chunk: Any) -> str | None:
    """The ``--dependency`` conditions of one chunk (joined with ``,``), or None."""
    parts = [options.dependency] if options.dependency else []
    if options.dependency_file:
        per_job = load_job_dependencies(str(options.dependency_file))
        needs = [per_job.get(str(spec.output_dir), []) for spec in chunk.specs]
        own = _per_job_condition(needs, chunk)
        if own:
            parts.append(own)
    return ",".join(parts) or None


def _per_job_condition(needs: list[list[str]], chunk: Any) -> str | None:
    if not any(needs):
        return None
    arrays = {m.group(1) for tasks in needs for m in map(_UPSTREAM_TASK.fullmatch, tasks) if m}
    aligned = (
        chunk.jobs_per_task == 1
        and len(arrays) == 1
        and all(len(tasks) == 1 and tasks[0].split("_")[1] == str(chunk.task_of(i)) for i, tasks in enumerate(needs))
    )
    if aligned:
        return f"aftercorr:{arrays.pop()}"
    tasks = sorted({t for ts in needs for t in ts}, key=lambda t: tuple(int(x) for x in t.split("_")))
    return "afterok:" + ":".join(tasks)
