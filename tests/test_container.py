"""The container wrapper: exact argv and validation (no container runtime needed)."""

from __future__ import annotations

import pytest

from launcher_core.container import (
    Container,
    container_from_config,
    env_flag_value,
    job_binds,
    python_for,
    wrap_command,
)
from launcher_core.errors import ConfigError

WORKER = ["python", "-m", "launcher_core.runtime.worker", "/s/sweep.pkl", "/s/jobs0-9.json", "0"]


def test_wraps_argv_with_binds_env_and_extra_args() -> None:
    cfg = {
        "runtime": "apptainer",
        "image": "/images/train.sif",
        "binds": ["/data:/data:ro", "/scratch"],
        "env": {"OMP_NUM_THREADS": 4, "CUDA_VISIBLE_DEVICES": "0,1", "QUOTE": 'say "hi"'},
        "extra_args": ["--cleanenv"],
    }
    argv = wrap_command(WORKER, cfg, ["/code", "/sweeps/s1"])
    assert argv == [
        "apptainer",
        "exec",
        "--bind",
        "/code",
        "--bind",
        "/sweeps/s1",
        "--bind",
        "/data:/data:ro",
        "--bind",
        "/scratch",
        "--env",
        "OMP_NUM_THREADS=4",
        "--env",
        '"CUDA_VISIBLE_DEVICES=0,1"',
        "--env",
        '"QUOTE=say ""hi"""',
        "--cleanenv",
        "/images/train.sif",
        *WORKER,
    ]


@pytest.mark.parametrize(
    "nv, gpus, expected",
    [("auto", False, False), ("auto", True, True), ("true", False, True), (True, False, True), ("false", True, False)],
)
def test_nv_flag(nv: object, gpus: bool, expected: bool) -> None:
    argv = wrap_command(["python"], {"image": "/i.sif", "nv": nv}, [], gpus_requested=gpus)
    assert ("--nv" in argv) is expected
    assert argv[:2] == ["singularity", "exec"]


def test_no_image_means_no_container() -> None:
    assert wrap_command(WORKER, {"image": None, "runtime": "singularity"}, ["/code"]) == WORKER
    assert wrap_command(WORKER, None, ["/code"]) == WORKER
    assert python_for({"image": None}, "/venv/bin/python") == "/venv/bin/python"
    assert python_for({"image": "/i.sif", "python": "python3"}, "/venv/bin/python") == "python3"


def test_job_binds_drop_duplicates_and_nested_paths() -> None:
    binds = job_binds(["/work/proj/multirun/x", "/work/proj", "/work/proj/", "/tmp/s"], ["/data:/data:ro"])
    assert binds == ["/tmp/s", "/work/proj", "/data:/data:ro"]


def test_env_flag_value_quotes_like_csv() -> None:
    assert env_flag_value("A", "b") == "A=b"
    assert env_flag_value("A", "1,2") == '"A=1,2"'


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"image": "/i.sif", "runtime": "docker"}, "container.runtime must be one of"),
        ({"image": "/i.sif", "binds": ["relative/path"]}, "needs absolute paths"),
        ({"image": "/i.sif", "binds": ["/a,/b"]}, "no commas"),
        ({"image": "/i.sif", "binds": ["/a:/b:xx"]}, "must be ro or rw"),
        ({"image": "/i.sif", "binds": "/a"}, "container.binds must be a list"),
        ({"image": "/i.sif", "nv": "maybe"}, "container.nv must be auto, true or false"),
        ({"image": "/i.sif", "env": {"1BAD": "x"}}, "not a valid environment variable name"),
        ({"image": "/i.sif", "env": {"A": "x\0y"}}, "must be a plain value"),
        ({"image": "/i\nsif"}, "single-line"),
        ({"image": "/i.sif", "bogus": 1}, "unknown keys"),
    ],
)
def test_invalid_container_settings_name_the_key(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        container_from_config(cfg, "container")


def test_container_from_config_normalises() -> None:
    spec = container_from_config({"image": "/i.sif", "nv": "TRUE", "env": {"FLAG": True}})
    assert spec == Container(image="/i.sif", nv="true", env=(("FLAG", "true"),))
    assert container_from_config(spec) is spec
