"""The job-side worker run from sweep payloads, as remote backends use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from launcher_core.runtime import payload
from launcher_core.runtime.compose import SweepComposer
from launcher_core.runtime.worker import (
    RemoteJobError,
    atomic_write_bytes,
    job_entry,
    job_table_bytes,
    load_job_return,
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


def task_returns_a_lock(cfg: DictConfig) -> object:
    import threading

    return threading.Lock()


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
        composer = SweepComposer(ctx, master)
        composer.check(overrides)  # as the controller does before launching
        sweep_payload = tmp_path / "sweep.pkl"
        table = tmp_path / "jobs.json"
        result = tmp_path / f"result{idx}.pkl"
        # the tasks live in this test module, outside the code dir (tmp_path): they travel by value
        data, needs = payload.build(task, composer.node_state(), None, tmp_path)
        assert not needs.portable
        atomic_write_bytes(sweep_payload, data)
        other = job_entry(idx + 1, ["a=0"], str(tmp_path / "other.pkl"))
        atomic_write_bytes(table, job_table_bytes([other, job_entry(idx, overrides, str(result))]))
        proc = subprocess.run(
            [sys.executable, "-m", "launcher_core.runtime.worker", str(sweep_payload), str(table), "1"],
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


def test_unpicklable_return_value_fails_the_job_and_its_exit_code(run_worker) -> None:
    """The job completed but its value cannot be shipped: FAILED in the result *and* exit code 1,
    so a scheduler that only sees exit codes (sacct) agrees with what Hydra gets."""
    proc, ret = run_worker(task_returns_a_lock, ["a=1"], 0)
    assert proc.returncode == 1, proc.stderr
    assert ret.status == JobStatus.FAILED
    assert isinstance(ret._return_value, RemoteJobError)
    assert "return value could not be pickled" in str(ret._return_value)


def test_result_configs_are_unpickled_only_when_read(run_worker) -> None:
    """result.pkl keeps cfg/hydra_cfg as bytes until used: loading 1000 results must not cost
    1000 DictConfig unpicklings, yet every field reads as Hydra's own JobReturn would."""
    proc, ret = run_worker(task_ok, ["a=7"], 2)
    assert proc.returncode == 0, proc.stderr
    assert isinstance(ret, JobReturn) and type(ret).__name__ == "StoredJobReturn"
    assert set(ret.__dict__["_blobs"]) == {"cfg", "hydra_cfg"}  # not unpickled yet
    assert ret.status == JobStatus.COMPLETED and ret.return_value == {"a": 7, "num": 2, "id": "grid_app_2"}
    assert "_values" not in ret.__dict__  # status and return value did not need the configs
    assert ret.cfg.a == 7 and "hydra" not in ret.cfg
    assert ret.hydra_cfg.hydra.job.num == 2
    assert ret.__dict__["_blobs"] == {}


def test_changed_result_configs_survive_a_second_pickling(run_worker, tmp_path: Path) -> None:
    """What localize_result does: load, change a config in place, pickle again."""
    _proc, ret = run_worker(task_ok, ["a=3"], 0)
    with read_write(ret.hydra_cfg.hydra.runtime):
        ret.hydra_cfg.hydra.runtime.output_dir = "/local/copy"
    path = tmp_path / "again.pkl"
    atomic_write_bytes(path, cloudpickle.dumps(ret))
    again = load_job_return(path)
    assert again.hydra_cfg.hydra.runtime.output_dir == "/local/copy"
    assert again.cfg.a == 3 and again.return_value == {"a": 3, "num": 0, "id": "grid_app_0"}
    assert again.overrides == ["a=3"] and again.task_name == ret.task_name


def test_results_written_as_plain_job_returns_still_load(tmp_path: Path) -> None:
    """result.pkl files of earlier versions hold Hydra's plain JobReturn."""
    old = JobReturn(overrides=["a=1"], cfg=OmegaConf.create({"a": 1}), working_dir="/w", task_name="t")
    old.status = JobStatus.COMPLETED
    old.return_value = 42
    path = tmp_path / "old.pkl"
    atomic_write_bytes(path, cloudpickle.dumps(old))
    ret = load_job_return(path)
    assert type(ret) is JobReturn and ret.return_value == 42 and ret.cfg.a == 1
