"""Phase timers for the benchmark, installed by ``app.py`` when ``BENCH_TIMINGS_FILE`` is set.

Wraps (without changing behaviour) the controller-side steps of a Hydra multirun:

* ``sweep``: the sweeper's ``sweep()`` (everything after the master config is composed),
* ``validate``: the sweeper's ``validate_batch_is_legal`` (Hydra composes every job there),
* ``launch``: the launcher's ``launch()``,
* for ``launcher_core``: ``build_job_specs`` (compose), ``plan``/``submit``/``watch`` of the
  controller, ``collect_returns``, ``_summarise`` and the time of the last fork.

Each entry records wall seconds, controller CPU seconds (``time.process_time``: this process
only, not the jobs it forks) and calls. The JSON is written when ``sweep()`` returns.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

_stats: dict[str, dict[str, float]] = {}
_marks: dict[str, float] = {}


def _add(name: str, wall: float, cpu: float) -> None:
    entry = _stats.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0})
    entry["wall_s"] += wall
    entry["cpu_s"] += cpu
    entry["calls"] += 1


def _timed(name: str, fn: Any, on_exit: Any = None) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - wall0, time.process_time() - cpu0)
            if on_exit is not None:
                on_exit()

    wrapper.__bench_timed__ = True  # type: ignore[attr-defined]
    return wrapper


def _patch(owner: Any, attr: str, name: str, on_exit: Any = None) -> None:
    fn = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
    if fn is None or getattr(fn, "__bench_timed__", False):
        return
    setattr(owner, attr, _timed(name, fn, on_exit))


def install(path: str) -> None:
    """Patch once Hydra has scanned its plugins: the scan re-executes every plugin module
    (``hydra_plugins.*``, ``hydra._internal.core_plugins.*``), which would drop earlier patches."""
    from hydra.core.plugins import Plugins

    instantiate_sweeper = Plugins.instantiate_sweeper

    @functools.wraps(instantiate_sweeper)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        _install_patches(path)
        return instantiate_sweeper(self, *args, **kwargs)

    Plugins.instantiate_sweeper = wrapper  # type: ignore[method-assign]


def _install_patches(path: str) -> None:
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.plugins.sweeper import Sweeper

    def write() -> None:
        _marks["sweep_end_epoch"] = time.time()
        with open(path, "w") as f:
            json.dump({"pid": os.getpid(), "marks": _marks, "stats": _stats}, f, indent=1)

    def sweep_start_mark(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _marks.setdefault("sweep_start_epoch", time.time())
            _marks.setdefault("sweep_start_perf", time.perf_counter())
            return fn(*args, **kwargs)

        wrapper.__bench_timed__ = True  # type: ignore[attr-defined]
        return wrapper

    if getattr(BasicSweeper.sweep, "__bench_timed__", False):
        return
    BasicSweeper.sweep = sweep_start_mark(_timed("sweep", BasicSweeper.sweep, write))
    _patch(Sweeper, "validate_batch_is_legal", "validate")
    _patch(BasicLauncher, "launch", "launch")
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

        _patch(JoblibLauncher, "launch", "launch")
    except ImportError:
        pass
    try:
        from hydra_plugins.remote_launcher.launchers import BackendLauncher
        from hydra_plugins.remote_launcher.sweeper import PairedSweeper
    except ImportError:
        return
    PairedSweeper.sweep = sweep_start_mark(_timed("sweep", PairedSweeper.sweep, write))
    _patch(PairedSweeper, "validate_batch_is_legal", "validate")
    _patch(BackendLauncher, "launch", "launch")

    from launcher_core import controller
    from launcher_core.backends.local_pool import LocalPoolBackend

    def mark_submitted() -> None:
        _marks["submitted_perf"] = time.perf_counter()

    _patch(controller, "build_job_specs", "compose")
    _patch(controller.SweepController, "plan", "plan")
    _patch(controller.SweepController, "submit", "submit", mark_submitted)
    _patch(controller.SweepController, "watch", "watch")
    _patch(controller, "collect_returns", "collect")
    _patch(controller, "_summarise", "summary")

    fork = LocalPoolBackend._fork_job

    @functools.wraps(fork)
    def fork_job(self: Any, spec: Any, *args: Any) -> int:
        pid = fork(self, spec, *args)
        _marks["last_fork_perf"] = time.perf_counter()
        return pid

    LocalPoolBackend._fork_job = fork_job  # type: ignore[method-assign]
