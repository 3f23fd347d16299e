"""The runner: launches what is ready, pulls detached stages home, and (``wait``) repeats until done.

Each cycle reads every stage's job states (:func:`~launcher_core.pipeline.state.read_views`), asks
the scheduler (:mod:`launcher_core.pipeline.schedule`) what to launch, and starts those launches
(:mod:`launcher_core.pipeline.launch`). The launched jobs are recorded in the pipeline state before
a launch starts, so a runner killed at any point is resumed by the next ``pipeline run``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass, field

from launcher_core.errors import ConfigError, LauncherError
from launcher_core.pipeline.launch import launch_argv, live_launches, write_launch_files
from launcher_core.pipeline.model import Pipeline, Stage
from launcher_core.pipeline.placement import Placement, placement
from launcher_core.pipeline.schedule import LaunchPlan, next_launch, ready_jobs, resolve_refs
from launcher_core.pipeline.state import ACTIVE, DONE, PipelineState, read_views
from launcher_core.state import StateStore

log = logging.getLogger("launcher_core.pipeline")


@dataclass
class RunOptions:
    stages: list[str] = field(default_factory=list)  # only these (and what they need); empty: all
    wait: bool = False  # until every selected stage is done (pulling and launching as jobs come home)
    retry_failed: bool = False
    interval_s: float = 2.0
    timeout_s: float = 7 * 24 * 3600.0
    blocking: bool = True  # may start launches that block until their jobs end (not detached)
    launch_timeout_s: float = 3600.0  # a detached launch (wait=false) must return within this


@dataclass
class Runner:
    """Launches what is ready, pulls detached stages home, and (``wait``) repeats until done."""

    pipeline: Pipeline
    options: RunOptions
    state: PipelineState
    places: dict[str, Placement] = field(default_factory=dict)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def selected(self) -> list[Stage]:
        names = set(self.options.stages or self.pipeline.stages)
        for name in list(names):
            if name not in self.pipeline.stages:
                raise ConfigError(
                    f"no stage {name!r} in {self.pipeline.file}; stages: {', '.join(self.pipeline.stages)}"
                )
        grow = True
        while grow:  # every stage a selected stage needs, transitively
            more = {n for s in names for n in self.pipeline.stages[s].needs} - names
            names |= more
            grow = bool(more)
        return [s for s in self.pipeline.stages.values() if s.name in names]

    def place(self) -> None:
        """Compose every selected stage's launcher (where it runs; cached in the state)."""
        for stage in self.selected():
            self.places[stage.name] = placement(self.pipeline, stage, self.state.placements)

    def prepare(self) -> None:
        """Compose every selected stage's launcher and resolve every job's references now, so a
        problem stops the run before anything is launched."""
        self.place()
        for stage in self.selected():
            for job in stage.jobs:
                resolve_refs(self.pipeline, stage, job, self.places)
        self.state.save()

    def cycle(self) -> bool:
        """One pass: reap launches, pull detached stages, launch what is ready. True if anything changed."""
        changed = self._reap()
        self._pull()
        views = read_views(self.pipeline)
        for stage in self.selected():
            if stage.name in self.children or live_launches(self.pipeline, stage):
                continue
            plan = next_launch(self.pipeline, views, stage, self.state, self.places, self.options.retry_failed)
            if plan is None:
                continue
            place = self.places[stage.name]
            if not place.detached and not self.options.blocking:
                continue
            self._launch(plan, place)
            changed = True
            views = read_views(self.pipeline)
        return changed

    def _launch(self, plan: LaunchPlan, place: Placement) -> None:
        stage = plan.stage
        argv = launch_argv(self.pipeline, plan, place, *write_launch_files(self.pipeline, plan))
        launches = self.state.launches.setdefault(stage.name, [])
        if plan.resume:
            launches[-1]["attempts"] = launches[-1].get("attempts", 1) + 1
        else:
            launches.append({"jobs": plan.nums, "at": time.time(), "attempts": 1})
        self.state.save()  # before the launch starts: a rerun resumes exactly this launch
        log_path = self.pipeline.log_path(stage.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        what = "resuming" if plan.resume else "launching"
        log.info("%s stage %s: %d jobs on %s (log: %s)", what, stage.name, len(plan.nums), place.backend, log_path)
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        with open(log_path, "ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} {what} {len(plan.nums)} jobs\n".encode())
            out.flush()
            child = subprocess.Popen(argv, cwd=stage.cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.children[stage.name] = child
        if place.detached:  # returns once submitted: wait, so that downstream sees the handles
            try:
                child.wait(self.options.launch_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "stage %s: its launch is still running after %g s", stage.name, self.options.launch_timeout_s
                )
            self._reap()

    def _reap(self) -> bool:
        done = [name for name, child in self.children.items() if child.poll() is not None]
        for name in done:
            code = self.children.pop(name).returncode
            if code != 0:
                log.warning(
                    "stage %s: its launch exited with %d (failed jobs, or see %s)",
                    name,
                    code,
                    self.pipeline.log_path(name),
                )
        return bool(done)

    def _pull(self) -> None:
        """Bring finished jobs of detached stages home (one pull cycle each; skipped while another
        pull process holds a sweep) and refresh cluster states."""
        from launcher_core.collect.pull import PullOptions, pull_sweep_once

        for stage in self.selected():
            if self.places.get(stage.name) is None or not self.places[stage.name].detached:
                continue
            sweep_dir = self.pipeline.stage_dir(stage.name)
            if stage.name in self.children or not StateStore.exists_in(sweep_dir):
                continue
            try:
                pull_sweep_once(sweep_dir, PullOptions(once=True))
            except LauncherError as exc:
                log.warning("stage %s: pull failed: %s (will retry)", stage.name, exc)

    def unfinished(self) -> list[str]:
        """Selected stages where something may still happen: a launch running, jobs queued,
        running or not home, jobs waiting for upstream jobs, or jobs to launch."""
        views = read_views(self.pipeline)
        out = []
        for stage in self.selected():
            view = views[stage.name]
            active = any(s in ACTIVE for s in view.status.values())
            _ready, waiting = ready_jobs(self.pipeline, views, stage, self.places)
            busy = stage.name in self.children or bool(live_launches(self.pipeline, stage))
            launchable = next_launch(self.pipeline, views, stage, self.state, self.places, self.options.retry_failed)
            if busy or active or waiting or launchable is not None:
                out.append(stage.name)
        return out

    def run(self) -> int:
        """Cycle until nothing selected is unfinished (``wait``), or once; bounded by ``timeout_s``."""
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            self.cycle()
            left = self.unfinished()
            if not self.options.wait or not left:
                break
            if time.monotonic() > deadline:
                raise LauncherError(f"pipeline {self.pipeline.name}: stages {left} unfinished after the timeout")
            time.sleep(self.options.interval_s)
        for child in self.children.values():
            child.wait(self.options.launch_timeout_s)
        return self.exit_code()

    def exit_code(self) -> int:
        views = read_views(self.pipeline)
        return 0 if all(views[s.name].counts().get(DONE, 0) == len(s.jobs) for s in self.selected()) else 1
