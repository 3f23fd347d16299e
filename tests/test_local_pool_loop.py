"""local_pool's launch loop in-process: lazy job configs, cheap polls, waking on job exit,
and the garbage collector kept off the controller's heap during a launch."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig

from launcher_core.backends.local_pool import LocalPoolBackend
from launcher_core.controller import LaunchOptions, build_job_specs, launch_batch
from launcher_core.jobs import JobSpec, JobState, SweepInfo
from launcher_core.runtime.compose import composer_for, job_output_dir
from tests.conftest import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "tests" / "apps" / "conf_grid"
DEADLINE_S = 60.0  # bound for every wait below; a healthy run needs well under a second


def sleep_a_tenths(cfg: DictConfig) -> int:
    time.sleep(cfg.a / 10)
    return int(cfg.a)


def report_gc_freeze(cfg: DictConfig) -> int:
    return gc.get_freeze_count()


@pytest.fixture
def app(tmp_path: Path, hydra_restore_singletons: None) -> Iterator[tuple[DictConfig, HydraContext]]:
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name="grid_app", config_search_path=create_config_search_path(str(CONFIG_DIR))
    )
    overrides = ["hydra.job.chdir=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    master = hydra.compose_config("config", overrides=overrides, run_mode=RunMode.MULTIRUN)
    yield master, HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))
    GlobalHydra.instance().clear()


def _specs(app: tuple[DictConfig, HydraContext], values: list[int]) -> list[JobSpec]:
    master, ctx = app
    overrides = [[f"a={v}"] for v in values]
    composer = composer_for(ctx, master)
    return build_job_specs(composer=composer, sweep_id="t", job_overrides=overrides, initial_job_idx=0)


def _backend(app: tuple[DictConfig, HydraContext], task: Callable[[DictConfig], Any], n_jobs: int) -> LocalPoolBackend:
    backend = LocalPoolBackend(
        n_jobs=n_jobs, timeout_s=None, kill_grace_s=1.0, task_function=task, hydra_context=app[1]
    )
    backend.prepare(SweepInfo("t", Path("."), Path("."), "grid_app"))
    return backend


def _poll_until_done(backend: LocalPoolBackend, handles: dict[str, dict[str, Any]]) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    deadline = time.monotonic() + DEADLINE_S
    while len(states) < len(handles) and time.monotonic() < deadline:
        for job_id, status in backend.poll(handles).items():
            if status.state.is_terminal:
                states[job_id] = status.state
        backend.wait(0.5)
    return states


def test_specs_compose_their_config_on_use_and_the_controller_keeps_none(app: Any) -> None:
    specs = _specs(app, [3, 4])
    assert [s._config for s in specs] == [None, None]  # composed for the output dir, then dropped
    cfg = specs[1].config
    assert cfg.a == 4 and cfg.hydra.job.num == 1 and cfg.hydra.job.id == "grid_app_1"
    assert list(cfg.hydra.overrides.task) == ["a=4"]
    assert Path(job_output_dir(cfg)) == specs[1].output_dir == Path(app[0].hydra.sweep.dir) / "1"
    assert specs[1].config is cfg  # composed once per use site, then kept by that spec
    specs[1].release_config()
    assert specs[1]._config is None and specs[1].config.a == 4


def test_poll_leaves_out_jobs_still_queued_in_the_pool(app: Any) -> None:
    specs = _specs(app, [5, 1, 1])  # the first job runs 0.5 s while the others wait for the one slot
    backend = _backend(app, sleep_a_tenths, n_jobs=1)
    try:
        handles = dict(backend.submit(specs))
        first = backend.poll(handles)
        assert set(first) == {specs[0].job_id} and first[specs[0].job_id].state is JobState.RUNNING
        states = _poll_until_done(backend, handles)
    finally:
        backend.close()
    assert states == {s.job_id: JobState.COMPLETED for s in specs}


def test_wait_returns_when_a_job_exits_not_at_its_timeout(app: Any) -> None:
    (spec,) = _specs(app, [2])  # a 0.2 s job
    backend = _backend(app, sleep_a_tenths, n_jobs=1)
    try:
        handles = dict(backend.submit([spec]))
        started = time.monotonic()
        backend.wait(DEADLINE_S)
        woke_after = time.monotonic() - started
        status = backend.poll(handles)[spec.job_id]
    finally:
        backend.close()
    assert woke_after < DEADLINE_S / 2  # woken by the exit, long before the timeout
    assert status.state is JobState.COMPLETED


def test_launch_freezes_the_heap_for_forked_jobs_and_hands_it_back(app: Any, tmp_path: Path) -> None:
    master, ctx = app
    assert gc.get_freeze_count() == 0
    returns = launch_batch(
        backend_factory=lambda: LocalPoolBackend(
            n_jobs=2, timeout_s=None, kill_grace_s=1.0, task_function=report_gc_freeze, hydra_context=ctx
        ),
        options=LaunchOptions(),
        hydra_context=ctx,
        config=master,
        task_function=report_gc_freeze,
        job_overrides=[["a=1"], ["a=2"]],
        initial_job_idx=0,
        code_dir=tmp_path,
    )
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    # each job inherited a frozen heap: its collector never walks (and so never copies) the controller's objects
    assert all(r.return_value > 1000 for r in returns)
    assert gc.get_freeze_count() == 0  # the controller's objects are collectable again


def test_a_zombie_job_process_counts_as_gone() -> None:
    """A job whose process ended but was not reaped (its parent, a subreaper such as a pytest
    process that ran local_pool, is not waiting) must not look alive to a resumed launch."""
    import subprocess
    import time

    from launcher_core.runtime.procs import process_start_time

    child = subprocess.Popen(["sleep", "0.2"])
    assert isinstance(process_start_time(child.pid), int)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.05)
    try:
        assert process_start_time(child.pid) is None  # ended, not yet reaped
    finally:
        child.wait(5)
