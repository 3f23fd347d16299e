"""slurm backend pieces that need no cluster: option checks, array chunks, script text, sacct parsing."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.remote_launcher.config import SlurmLauncherConf
from launcher_core.backends.slurm import (
    SlurmOptions,
    expand_job_ids,
    job_argv,
    parse_sacct,
    parse_squeue,
    plan_chunks,
    render_script,
)
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobSpec
from tests.conftest import REPO_ROOT


def _specs(n: int, root: Path = Path("/sweep")) -> list[JobSpec]:
    return [JobSpec(job_id=f"j{i}", idx=i, overrides=[f"x={i}"], output_dir=root / str(i)) for i in range(n)]


@pytest.mark.parametrize("n, max_size", [(1000, 5), (1000, 1001), (1000, 1000), (1001, 1000), (7, 3), (1, 1)])
def test_chunks_cost_ceil_n_over_max_array_size(n: int, max_size: int) -> None:
    chunks = plan_chunks(_specs(n), max_size)
    assert len(chunks) == math.ceil(n / max_size)
    assert all(len(c.specs) <= max_size for c in chunks)
    assert [s.idx for c in chunks for s in c.specs] == list(range(n))
    assert [c.offset for c in chunks] == list(range(0, n, max_size))


def test_expand_job_ids() -> None:
    assert expand_job_ids("12_[0-3%4]") == ["12_0", "12_1", "12_2", "12_3"]
    assert expand_job_ids("12_[1,5-6]") == ["12_1", "12_5", "12_6"]
    assert expand_job_ids("12_7") == ["12_7"]
    assert expand_job_ids("12") == ["12"]


def test_parse_sacct_states_exit_codes_and_requeue_hold() -> None:
    text = "\n".join(
        [
            "5_0|COMPLETED|0:0|vm|2026-01-01T10:00:00|2026-01-01T10:00:00",
            "5_1|FAILED|1:0|vm|2026-01-01T10:00:00|2026-01-01T10:00:00",
            "5_2|CANCELLED by 0|0:15|vm|2026-01-01T10:00:00|2026-01-01T10:00:00",
            "5_3|PENDING|0:0|None assigned|2026-01-01T10:05:00|2026-01-01T10:07:00",
            "5_[4-6%2]|PENDING|0:0|None assigned|2026-01-01T10:00:00|Unknown",
        ]
    )
    records = parse_sacct(text)
    assert records["5_0"].state == "COMPLETED" and records["5_0"].nodes == "vm"
    assert (records["5_1"].state, records["5_1"].exit_code) == ("FAILED", 1)
    assert (records["5_2"].state, records["5_2"].signal) == ("CANCELLED", 15)
    assert records["5_3"].held_by_requeue and records["5_3"].nodes is None
    assert not records["5_4"].held_by_requeue and set(records) >= {"5_4", "5_5", "5_6"}


def test_parse_squeue() -> None:
    records = parse_squeue("7_0|RUNNING|vm|None\n7_1|PENDING||BeginTime\n7_[2-3]|PENDING||Priority\n")
    assert records["7_0"].state == "RUNNING"
    assert records["7_1"].held_by_requeue
    assert not records["7_3"].held_by_requeue


def _script(options: SlurmOptions, root: Path) -> str:
    specs = _specs(3, root)
    chunk = plan_chunks(specs, 5)[0]
    argv = job_argv(options, str(root / ".launcher" / "slurm" / "sweep.pkl"), [str(root)], "/venv/bin/python")
    return render_script(
        options=options,
        chunk=chunk,
        sweep_id="s1",
        code_dir="/code dir",
        log_dir=str(root / "logs"),
        launcher_dirs=[str(s.launcher_dir) for s in specs],
        argv=argv,
    )


def test_script_quotes_every_path_and_keeps_overrides_out(tmp_path: Path) -> None:
    root = tmp_path / "it's a $(dangerous) dir"
    options = SlurmOptions.from_params(
        {
            "partition": "gpu a",
            "timeout_min": 5,
            "signal_delay_s": 30,
            "max_num_timeout": 2,
            "env": {"MSG": "hello $USER; rm -rf /"},
            "additional_parameters": {"mail_type": "END", "exclusive": True},
            "modules": ["cuda/12.1"],
            "array_parallelism": 2,
        }
    )
    text = _script(options, root)
    assert "x=0" not in text and "x=1" not in text  # overrides live in the pickled payloads only
    assert f"  {shlex.quote(str(root / '0' / '.launcher'))}" in text
    assert "#SBATCH --partition='gpu a'" in text
    assert "#SBATCH --array=0-2%2" in text
    assert "#SBATCH --signal=B:USR2@30" in text
    assert "#SBATCH --chdir='/code dir'" in text
    assert "#SBATCH --mail-type=END" in text and "#SBATCH --exclusive\n" in text
    assert "export MSG='hello $USER; rm -rf /'" in text
    assert "module load cuda/12.1" in text
    assert 'if [ "$n" -ge 2 ]' in text and "-ge 270 ]" in text  # 5 min - 30 s: a timeout signal
    assert "$((SECONDS + 35))" in text
    assert '"$LAUNCHER_DIR"/job.pkl &' in text


def test_script_with_container_wraps_the_worker(tmp_path: Path) -> None:
    options = SlurmOptions.from_params(
        {"container": {"image": "/img.sif", "binds": ["/data"]}, "gpus_per_node": 1, "srun_args": ["--mpi=none"]}
    )
    text = _script(options, tmp_path)
    sweep_pkl = shlex.quote(str(tmp_path / ".launcher" / "slurm" / "sweep.pkl"))
    expected = (
        f"srun --unbuffered --mpi=none singularity exec --nv --bind {shlex.quote(str(tmp_path))} --bind /data "
        f'/img.sif python -m launcher_core.worker {sweep_pkl} "$LAUNCHER_DIR"/job.pkl &'
    )
    assert expected in text


@pytest.mark.parametrize(
    "params, message",
    [
        ({"timeout_min": 0}, "hydra.launcher.timeout_min must be > 0"),
        ({"cpus_per_task": 1.5}, "hydra.launcher.cpus_per_task must be an integer"),
        ({"max_num_timeout": -1}, "hydra.launcher.max_num_timeout must be >= 0"),
        ({"array_parallelism": 0}, "hydra.launcher.array_parallelism must be > 0"),
        ({"partition": "a\n#SBATCH --x"}, "hydra.launcher.partition must be a non-empty single line"),
        ({"additional_parameters": {"bad name": 1}}, "not an sbatch option name"),
        ({"additional_parameters": {"array": "0-3"}}, "set by the launcher"),
        ({"env": {"A-B": "x"}}, "not a valid environment variable name"),
        ({"setup": "echo hi"}, "hydra.launcher.setup must be a list"),
        ({"container": {"image": "/i.sif", "runtime": "docker"}}, "hydra.launcher.container.runtime"),
        ({"login_host": "-oProxyCommand=x"}, "hydra.launcher.login_host"),
        ({"signal_delay_s": 70000}, "65535"),
    ],
)
def test_bad_options_name_the_key(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SlurmOptions.from_params(params)


def test_sbatch_options_follow_submitit_names() -> None:
    opts = SlurmOptions.from_params(
        {"mem_gb": 1.5, "gpus_per_node": 2, "cpus_per_task": 4, "tasks_per_node": 2, "qos": "high", "name": "exp"}
    ).sbatch_options()
    assert opts["mem"] == "1536MB"
    assert (opts["gpus-per-node"], opts["cpus-per-task"], opts["ntasks-per-node"]) == (2, 4, 2)
    assert (opts["qos"], opts["job-name"], opts["time"]) == ("high", "exp", 60)
    assert SlurmOptions.from_params({"mem_gb": 8}).sbatch_options()["mem"] == "8GB"


@pytest.mark.parametrize("preset", sorted((REPO_ROOT / "conf" / "cluster").glob("slurm_*.yaml")), ids=lambda p: p.stem)
def test_cluster_presets_are_valid_settings(preset: Path) -> None:
    cfg = OmegaConf.load(preset)
    assert list(cfg.defaults) == [{"override /hydra/launcher": "slurm"}]
    schema = OmegaConf.structured(SlurmLauncherConf)
    merged = OmegaConf.merge(schema, cfg.hydra.launcher)  # unknown keys or wrong types fail here
    SlurmOptions.from_params(OmegaConf.to_container(merged, resolve=False))


def test_dry_run_with_login_host_never_connects(tmp_path: Path) -> None:
    """A dry run writes scripts for a login_host setup without any ssh (the host does not exist)."""
    from launcher_core.backends.slurm import SlurmBackend
    from launcher_core.jobs import SweepInfo

    options = SlurmOptions.from_params({"login_host": "no-such-host.invalid", "dry_run": True})
    backend = SlurmBackend(options, task_function=len, hydra_context=None)
    specs = _specs(3, tmp_path / "sweep")
    for spec in specs:
        spec.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep"), "subdir": str(spec.idx)}}})
    backend.prepare(SweepInfo("s1", tmp_path / "sweep", tmp_path, "app"))
    try:
        chunks = backend.write_scripts(specs)
    finally:
        backend.close()
    assert [c.script_name for c, _path in chunks] == ["jobs0-2.sbatch"]
    assert backend.calls == {}
