"""The job-side worker run from cloudpickle payloads, as remote backends use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig

from launcher_core.compose import SweepComposer
from launcher_core.worker import (
    RemoteJobError,
    atomic_write_bytes,
    job_payload_bytes,
    load_job_return,
    sweep_payload_bytes,
)
from tests.conftest import REPO_ROOT


class Unpicklable(Exception):
    def __reduce__(self):  # type: ignore[override]
        raise TypeError("cannot pickle this exception")


def task_ok(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    return {"a": cfg.a, "num": HydraConfig.get().job.num, "id": HydraConfig.get().job.id}


def task_raises(cfg: DictConfig) -> None:
    raise KeyError(f"missing thing for a={cfg.a}")


def task_unpicklable(cfg: DictConfig) -> None:
    raise Unpicklable("odd failure")


@pytest.fixture
def run_worker(tmp_path: Path, hydra_restore_singletons: None):
    GlobalHydra.instance().clear()
    config_dir = REPO_ROOT / "tests" / "apps" / "conf_grid"
    hydra = Hydra.create_main_hydra2(
        task_name="grid_app", config_search_path=create_config_search_path(str(config_dir))
    )
    overrides = ["hydra.job.chdir=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    master = hydra.compose_config("config", overrides=overrides, run_mode=RunMode.MULTIRUN)
    ctx = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))

    def run(task, overrides: list[str], idx: int):
        cfg = SweepComposer(ctx, master).compose(overrides)
        sweep_payload = tmp_path / "sweep.pkl"
        job_payload = tmp_path / f"job{idx}.pkl"
        result = tmp_path / f"result{idx}.pkl"
        atomic_write_bytes(sweep_payload, sweep_payload_bytes(task, ctx))
        atomic_write_bytes(job_payload, job_payload_bytes(cfg, idx, str(result)))
        proc = subprocess.run(
            [sys.executable, "-m", "launcher_core.worker", str(sweep_payload), str(job_payload)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        return proc, load_job_return(result)

    yield run
    GlobalHydra.instance().clear()


def test_worker_runs_job_and_returns_value(run_worker, tmp_path: Path) -> None:
    proc, ret = run_worker(task_ok, ["a=5"], 3)
    assert proc.returncode == 0, proc.stderr
    assert ret.status == JobStatus.COMPLETED
    assert ret.return_value == {"a": 5, "num": 3, "id": "grid_app_3"}
    assert ret.overrides == ["a=5"]
    assert (tmp_path / "sweep" / "3" / ".hydra" / "config.yaml").exists()


def test_worker_reports_task_exception_as_failed(run_worker) -> None:
    proc, ret = run_worker(task_raises, ["a=6"], 0)
    assert proc.returncode == 1
    assert ret.status == JobStatus.FAILED
    assert isinstance(ret._return_value, KeyError)
    assert "missing thing for a=6" in str(ret._return_value)
    assert "KeyError" in proc.stderr and "task_raises" in proc.stderr  # traceback in the job's stderr
    with pytest.raises(KeyError):
        _ = ret.return_value


def test_unpicklable_exception_comes_back_as_text(run_worker) -> None:
    proc, ret = run_worker(task_unpicklable, ["a=1"], 0)
    assert proc.returncode == 1
    assert ret.status == JobStatus.FAILED
    assert isinstance(ret._return_value, RemoteJobError)
    assert "Unpicklable: odd failure" in str(ret._return_value)
    assert "task_unpicklable" in str(ret._return_value)  # the traceback text travels too
