"""A stage launch: the multirun command line, the files it reads, and finding launches alive.

A stage launch is a real multirun of the stage's app in a subprocess (``python APP -m ...
hydra.sweep.dir=<pipeline dir>/<stage>``), so every backend and the exactly-once rules of the
launch loop apply unchanged. Its jobs reach it as a file, ``<pipeline dir>/.pipeline/<stage>.jobs.json``
(``hydra.sweeper.jobs_file``, read by the paired sweeper): each job's swept overrides and resolved
references, and its number in the stage's full plan, which the launcher gives the job as its
number (so ``hydra.sweep.subdir=${hydra.job.num}`` is its dir) without composing it as an
override. A job thus keeps its number, dir and id whichever jobs are launched with it, a stage
of any size fits, and its jobs share one composed config template (no structural override per job).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.pipeline.model import Pipeline, Stage
from launcher_core.pipeline.placement import Placement, cluster_overrides
from launcher_core.pipeline.schedule import LaunchPlan
from launcher_core.pipeline.spec import override_parser, parse_override
from launcher_core.sweep import render_value

NUMBERED_SUBDIR = "hydra.sweep.subdir=${hydra.job.num}"  # a job's dir is <stage>/<its number>


def launch_argv(
    pipeline: Pipeline, plan: LaunchPlan, place: Placement, jobs_file: Path, deps_file: Path | None
) -> list[str]:
    """The stage launch's command line (its jobs are in ``jobs_file``, see :func:`write_launch_files`)."""
    stage = plan.stage
    argv = [
        stage.python,
        str(stage.app),
        "-m",
        *stage.constants,
        *cluster_overrides(stage),
        "hydra/sweeper=paired",
        "hydra.sweeper.params=null",
        "hydra.sweeper.paired=[]",
        f"hydra.sweep.dir={render_value(str(pipeline.stage_dir(stage.name)))}",
        NUMBERED_SUBDIR,
        f"hydra.sweeper.jobs_file={render_value(str(jobs_file))}",
        "hydra.launcher.skip_completed=true",
    ]
    if place.detached:
        argv.append("hydra.launcher.wait=false")
    if deps_file is not None:
        argv.append(f"hydra.launcher.dependency_file={render_value(str(deps_file))}")
    return argv


def write_launch_files(pipeline: Pipeline, plan: LaunchPlan) -> tuple[Path, Path | None]:
    """Write the launch's jobs file (and its cluster dependencies, if any), atomically; their paths."""
    from launcher_core.runtime.worker import atomic_write_bytes

    name = plan.stage.name
    jobs_file = pipeline.state_dir / f"{name}.jobs.json"
    atomic_write_bytes(jobs_file, json.dumps(listed_jobs(plan), separators=(",", ":")).encode())
    if not plan.dependencies:
        return jobs_file, None
    deps_file = pipeline.state_dir / f"{name}.dependencies.json"
    data = {str(pipeline.stage_dir(name) / str(n)): deps for n, deps in plan.dependencies.items()}
    atomic_write_bytes(deps_file, json.dumps(data, indent=1).encode())
    return jobs_file, deps_file


def listed_jobs(plan: LaunchPlan) -> list[dict[str, Any]]:
    """The jobs as ``hydra.sweeper.jobs_file`` lists them: ``{"num": N, "overrides": [...]}``
    (the swept overrides as planned, then each resolved reference as a literal value)."""
    stage = plan.stage
    checked: dict[str, str] = {}
    out = []
    for num in plan.nums:
        refs = []
        for key, value in plan.values[num].items():
            rendered = render_value(value)
            if rendered != value:
                _check_literal(stage, key, value, rendered, checked)
            refs.append(f"{key}={rendered}")
        out.append({"num": num, "overrides": [*stage.jobs[num].overrides, *refs]})
    return out


def _check_literal(stage: Stage, key: str, value: str, rendered: str, checked: dict[str, str]) -> None:
    """A quoted value must read back as exactly ``value`` (else it is refused before anything is
    launched); each distinct value is parsed once."""
    if rendered in checked:
        return
    read = parse_override(override_parser(), f"{key}={rendered}", f"stage {stage.name}").value()
    if read != value:
        raise ConfigError(f"stage {stage.name}: {key}={value!r} cannot be passed to Hydra unchanged (reads {read!r})")
    checked[rendered] = value


# --- launches alive --------------------------------------------------------------------------------
def live_launches(pipeline: Pipeline, stage: Stage) -> list[int]:
    """PIDs of processes launching this stage (their argv names its sweep dir; a local launch's
    forked jobs count too): a stage being launched is not launched again."""
    token = f"hydra.sweep.dir={render_value(str(pipeline.stage_dir(stage.name)))}"
    return [pid for pid, argv in command_lines() if pid != os.getpid() and token in argv]


def command_lines() -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of this user's visible processes: from ``/proc`` on Linux, else from
    ``ps`` (macOS), whose command line is split at spaces (a token without spaces still matches)."""
    if not Path("/proc/self/cmdline").exists():
        return ps_command_lines()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.append((int(entry.name), [a.decode(errors="replace") for a in argv]))
    return found


def ps_command_lines() -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` from ``ps`` (see :func:`command_lines`)."""
    try:
        out = subprocess.run(["ps", "-axww", "-o", "pid=,command="], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.stdout.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit():
            found.append((int(pid), command.split()))
    return found
