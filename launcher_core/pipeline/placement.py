"""Where a stage runs: its launcher as its app composes it, and what that means for the pipeline
(whether its launch returns at submission, whether its jobs see this machine's files, which
stages' outputs it can read where they ran, which stages it can be chained to on the cluster).

What is particular to a backend is asked of the backend registry
(:mod:`launcher_core.backends.registry`) by the functions at the end: nothing here names a backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.pipeline.model import Pipeline, Stage
from launcher_core.sweep import render_value


@dataclass
class Placement:
    """The launcher of a stage, as its app composes it, and the facts the pipeline uses."""

    backend: str
    launcher: dict[str, Any]
    detached: bool = False  # its launch returns once the jobs are submitted (hydra.launcher.wait=false)
    shares_local_files: bool = False  # its jobs see this machine's paths
    remote_place: str | None = None  # stages with the same place read each other's job dirs where they ran
    chain: str | None = None  # stages with the same chain are submitted at once, with dependencies
    remote_hint: str = "a backend that sees them"  # how two stages come to share a remote place


def placement(pipeline: Pipeline, stage: Stage, cache: dict[str, dict[str, Any]]) -> Placement:
    """Compose the stage's ``hydra.launcher`` with its app (``--cfg hydra``): checks the app takes
    its overrides, and tells where the jobs run. Cached in ``cache`` (the pipeline state's
    placements) per command line and app file."""
    argv = [stage.python, str(stage.app), *stage.constants, *cluster_overrides(stage)]
    if stage.jobs:
        argv += [o for o in stage.jobs[0].overrides]
    argv += [f"{k}={render_value(str(pipeline.stage_dir(stage.name)))}" for k in stage.refs]
    argv += ["--cfg", "hydra", "--package", "hydra.launcher"]
    digest = hashlib.sha256(json.dumps([argv, _mtime(stage.app)]).encode()).hexdigest()[:16]
    cached = cache.get(stage.name)
    launcher = cached["launcher"] if cached and cached.get("digest") == digest else _compose_launcher(stage, argv)
    try:
        place = placement_facts(launcher)
    except ConfigError as exc:
        raise ConfigError(f"stage {stage.name}: {exc}") from exc
    cache[stage.name] = {"digest": digest, "backend": place.backend, "launcher": launcher}
    return place


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _compose_launcher(stage: Stage, argv: list[str]) -> dict[str, Any]:
    import yaml

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    try:
        proc = subprocess.run(argv, cwd=stage.cwd, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"stage {stage.name}: cannot run its app {stage.app}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("Set the environment")]
        raise ConfigError(f"stage {stage.name}: its app refuses the stage's overrides: {' '.join(lines[-3:])}")
    text = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("# @package"))
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"stage {stage.name}: unexpected hydra.launcher config from its app: {text[:200]!r}")
    return data


def cluster_overrides(stage: Stage) -> list[str]:
    return [f"+cluster={stage.cluster}"] if stage.cluster else []


def path_mode(stage: Stage, upstream: Stage, mine: Placement, theirs: Placement) -> str:
    """``local``: the upstream job's dir here; ``remote``: its dir where it ran (the same host)."""
    if stage.paths == "local" or mine.shares_local_files:
        return "local"
    if mine.remote_place is not None and mine.remote_place == theirs.remote_place:
        return "remote"
    raise ConfigError(
        f"stage {stage.name} runs on {mine.backend}, where the outputs of stage {upstream.name} "
        f"({theirs.backend}) cannot be read: run both on {mine.remote_hint}, or set 'paths: local' on stage "
        f"{stage.name} if its machines share this machine's file system"
    )


def chained(mine: Placement, theirs: Placement) -> bool:
    """Both on the same cluster: the downstream stage is submitted at once with a dependency."""
    return mine.chain is not None and mine.chain == theirs.chain


# --- what the pipeline asks the backend registry ------------------------------------------------------
def placement_facts(launcher: Mapping[str, Any]) -> Placement:
    """The :class:`Placement` of a composed ``hydra.launcher`` config, from the backend its
    launcher class belongs to; a ``ConfigError`` when it belongs to none."""
    from launcher_core.backends.registry import descriptors, for_launcher_target

    target = str(launcher.get("_target_", ""))
    backend = for_launcher_target(target) if target else None
    if backend is None:
        names = sorted(descriptors())
        raise ConfigError(
            f"its launcher {target or '(Hydra basic)'} is not one of ours; pipeline stages "
            f"run on {', '.join(names[:-1])} or {names[-1]} (e.g. cluster: local)"
        )
    capabilities = backend.capabilities(launcher)
    return Placement(
        backend=backend.name,
        launcher=dict(launcher),
        # its launch can return once the jobs are submitted (hydra.launcher.wait=false)
        detached=capabilities.detached and "wait" in launcher,
        shares_local_files=capabilities.results_local,
        remote_place=backend.remote_location(launcher),
        chain=backend.dependency_chain(launcher),
        remote_hint=backend.remote_hint,
    )


def dependency_task(place: Placement, handle: Mapping[str, Any]) -> str | None:
    """The cluster task a job handle of a stage placed there names, as a chained stage's
    dependency lists it."""
    from launcher_core.backends.registry import descriptor

    return descriptor(place.backend).dependency_task(handle)


def remote_job_dir(place: Placement, handle: Mapping[str, Any] | None) -> str | None:
    """The job's dir where it ran, from its handle (None when the handle has none)."""
    from launcher_core.backends.registry import descriptor

    return descriptor(place.backend).job_dir_where_it_ran(handle or {})
