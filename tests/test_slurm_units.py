"""slurm backend pieces that need no cluster: option checks, array chunks, script text, sacct parsing."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.remote_launcher.config import SlurmArrayLauncherConf
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
from launcher_core.settings import setting_names
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
    slurm_dir = root / ".launcher" / "slurm"
    table = str(slurm_dir / "jobs0-2.json")
    argv = job_argv(options, str(slurm_dir / "sweep.pkl"), table, [str(root)], "/venv/bin/python")
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
    assert "x=0" not in text and "x=1" not in text  # overrides live in the job table only
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
    assert f"{shlex.quote(str(root / '.launcher' / 'slurm' / 'jobs0-2.json'))} \"$_hrl_first\" &" in text
    assert "_hrl_first=$((0 + SLURM_ARRAY_TASK_ID * 1))" in text


def test_script_with_container_wraps_the_worker(tmp_path: Path) -> None:
    options = SlurmOptions.from_params(
        {"container": {"image": "/img.sif", "binds": ["/data"]}, "gpus_per_node": 1, "srun_args": ["--mpi=none"]}
    )
    text = _script(options, tmp_path)
    sweep_pkl = shlex.quote(str(tmp_path / ".launcher" / "slurm" / "sweep.pkl"))
    table = shlex.quote(str(tmp_path / ".launcher" / "slurm" / "jobs0-2.json"))
    expected = (
        f"srun --unbuffered --kill-on-bad-exit=1 --mpi=none singularity exec --nv --bind {shlex.quote(str(tmp_path))} "
        "--bind /data "
        f'/img.sif python -m launcher_core.runtime.worker {sweep_pkl} {table} "$_hrl_first" &'
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
        ({"jobs_per_task": 0}, "hydra.launcher.jobs_per_task must be > 0"),
        ({"jobs_per_task": "many"}, "hydra.launcher.jobs_per_task must be a positive integer or auto, got 'many'"),
        ({"jobs_per_task": "auto"}, r"jobs_per_task=auto needs hydra.launcher.expected_job_s"),
        ({"jobs_per_task": 2, "tasks_per_node": 2}, "jobs_per_task packs single-task jobs"),
        ({"expected_job_s": -1}, "hydra.launcher.expected_job_s must be > 0"),
        (
            {"additional_parameters": {"signal": "B:USR1@60"}},
            r"additional_parameters.signal: the launcher sets the signal",
        ),
        ({"additional_parameters": {"sig": "USR1@60"}}, r"additional_parameters.sig: the launcher sets the signal"),
        ({"additional_parameters": {"out": "/x.log"}}, r"additional_parameters.out is set by the launcher"),
        (
            {"srun_args": ["--mpi=none", "--signal=USR1@60"]},
            r"srun_args\[1\] \('--signal=USR1@60'\): the launcher sets",
        ),
        ({"srun_args": ["--sig=TERM@30"]}, r"srun_args\[0\] .*signal_delay_s instead"),
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
    assert list(cfg.defaults) == [{"override /hydra/launcher": "slurm"}, {"override /hydra/sweeper": "paired"}]
    schema = OmegaConf.structured(SlurmArrayLauncherConf)
    merged = OmegaConf.merge(schema, cfg.hydra.launcher)  # unknown keys or wrong types fail here
    SlurmOptions.from_params(OmegaConf.to_container(merged, resolve=False))


def test_settings_are_the_schemas_keys_and_an_unknown_key_is_refused_by_name() -> None:
    """One settings source: SlurmOptions takes its keys and defaults from SlurmArrayLauncherConf."""
    assert setting_names(SlurmOptions) == setting_names(SlurmArrayLauncherConf)
    defaults = SlurmOptions.from_params({})
    assert (defaults.timeout_min, defaults.array_parallelism, defaults.container) == (60, 256, None)
    assert defaults.name == "hydra"  # the schema's ${hydra.job.name}, unresolved outside Hydra
    with pytest.raises(ConfigError, match=r"^hydra.launcher.partitionz is not a setting of the slurm launcher"):
        SlurmOptions.from_params({"partitionz": "gpu"})


def test_stored_config_holds_known_secret_free_keys_and_rebuilds_the_backend() -> None:
    from launcher_core.backends.slurm import SlurmBackend, from_config

    options = SlurmOptions.from_params({"timeout_min": 7, "env": {"TOKEN": "secret"}, "login_setup": ["module load x"]})
    stored = SlurmBackend(options).stored_config()
    assert set(stored) <= set(setting_names(SlurmArrayLauncherConf)) and "env" not in stored
    assert from_config(stored).stored_config() == stored
    with pytest.raises(ConfigError, match=r"^hydra.launcher.bogus is not a setting of the slurm launcher"):
        from_config({**stored, "bogus": 1})


def _login_dry_run(code_dir: Path, sweep_dir: Path, **params: object) -> tuple[str, dict, list[str]]:
    """A login_host dry run of 3 jobs: (script text, first job table entry, names of the Slurm commands run)."""
    import json

    from launcher_core.backends.slurm import SlurmBackend
    from launcher_core.jobs import SweepInfo

    options = SlurmOptions.from_params({"login_host": "no-such-host.invalid", "dry_run": True, **params})
    backend = SlurmBackend(options, task_function=len, hydra_context=None)
    specs = _specs(3, sweep_dir)
    backend.prepare(SweepInfo("s1", sweep_dir, code_dir, "app"))
    try:
        chunks = backend.write_scripts(specs)
    finally:
        backend.close()
    assert [c.script_name for c, _path in chunks] == ["jobs0-2.sbatch"]
    assert not (sweep_dir / "0").exists()  # nothing per job before submission
    entry = json.loads((sweep_dir / ".launcher" / "slurm" / "jobs0-2.json").read_text())["jobs"][0]
    return chunks[0][1].read_text(), entry, list(backend.calls)


def test_dry_run_with_login_host_shows_the_cluster_paths_without_connecting(tmp_path: Path) -> None:
    """The scripts are the ones the login node would get: its snapshot, sweep dir, worker and Python
    (the host does not exist: any ssh would fail)."""
    import re

    code = tmp_path / "proj"
    text, payload, calls = _login_dry_run(code, code / "multirun" / "x", remote_dir="/cluster/me/hrl")

    assert calls == [] and str(tmp_path) not in text
    remote_sweep = "/cluster/me/hrl/runs/multirun/x"
    snapshot = re.search(r"^#SBATCH --chdir=(/cluster/me/hrl/snapshots/s1/\d{8}-\d{6}-[0-9a-f]{6})$", text, re.M)
    assert snapshot, text
    assert f"#SBATCH --output={remote_sweep}/.launcher/slurm/logs/%A.log\n" in text
    assert "".join(f"  {remote_sweep}/{i}/.launcher\n" for i in range(3)) in text
    pythonpath = f"{remote_sweep}/.launcher/slurm/pylib:{snapshot.group(1)}"
    assert f'export PYTHONPATH={pythonpath}"${{PYTHONPATH:+:$PYTHONPATH}}"' in text
    worker = f"python3 -m launcher_core.runtime.remote_worker {remote_sweep}/.launcher/slurm/sweep-"
    table = f"{remote_sweep}/.launcher/slurm/jobs0-2.json"
    assert re.search(re.escape(worker) + r'[0-9a-f]{16}\.pkl ' + re.escape(table) + r' "\$_hrl_first" &', text), text
    # the job table entry has the cluster paths too: Hydra there writes into the remote sweep dir
    assert payload["result"] == f"{remote_sweep}/0/.launcher/result.pkl"
    assert (payload["sweep_dir"], payload["subdir"], payload["overrides"]) == (remote_sweep, "0", ["x=0"])


def test_dry_run_with_login_host_shows_the_remote_home_as_tilde(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Default remote_dir (in the home dir there) and a sweep dir outside the code dir (by-id layout)."""
    text, payload, calls = _login_dry_run(tmp_path / "proj", tmp_path / "elsewhere")

    assert calls == [] and str(tmp_path) not in text
    remote_sweep = "~/hydra-remote-launcher/proj/runs/by-id/s1"
    assert payload["result"] == f"{remote_sweep}/0/.launcher/result.pkl"
    assert f"#SBATCH --output='{remote_sweep}/.launcher/slurm/logs/%A.log'" in text
    assert "remote_dir '~/hydra-remote-launcher/proj' is in the home dir on no-such-host.invalid" in caplog.text


def _pick_result(launcher_dir: Path, files: dict[str, str]) -> dict[str, str]:
    """Run the batch script's ``_hrl_failed_rank`` in bash on a launcher dir holding ``files``;
    return the files afterwards (relative path -> content)."""
    import subprocess

    from launcher_core.backends.slurm import failed_rank_function as _failed_rank_function

    for name, content in files.items():
        (launcher_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (launcher_dir / name).write_text(content)
    script = "\n".join([*_failed_rank_function(), "_hrl_failed_rank"])
    env = {"LAUNCHER_DIR": str(launcher_dir), "PATH": "/usr/bin:/bin"}
    subprocess.run(["bash", "-c", script], env=env, check=True, timeout=30)
    return {str(p.relative_to(launcher_dir)): p.read_text() for p in launcher_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "files, expected",
    [
        # rank 0 completed, ranks 2 and 10 failed: the lowest failed rank's result is the job's
        (
            {"result.pkl": "rank0 ok", "ranks/failed.10.pkl": "rank10 err", "ranks/failed.2.pkl": "rank2 err"},
            {"result.pkl": "rank2 err", "ranks/failed.10.pkl": "rank10 err"},
        ),
        # rank 0 failed too: its own failure stays the job's
        (
            {"result.pkl": "rank0 err", "ranks/failed.0.pkl": "rank0 err", "ranks/failed.1.pkl": "rank1 err"},
            {"result.pkl": "rank0 err", "ranks/failed.1.pkl": "rank1 err"},
        ),
        # a rank was killed (no failure written): rank 0's COMPLETED result must not stand for the job
        ({"result.pkl": "rank0 ok"}, {"ranks/result.0.pkl": "rank0 ok"}),
        ({}, {}),
    ],
)
def test_failed_rank_picks_the_jobs_result(tmp_path: Path, files: dict[str, str], expected: dict[str, str]) -> None:
    assert _pick_result(tmp_path, files) == expected


def test_usr2_is_trapped_before_any_set_up_and_signal_delay_0_asks_for_no_signal(tmp_path: Path) -> None:
    """A notice that arrives while the script sets up (modules, setup lines) must not kill the batch
    shell (bash's default for SIGUSR2): the first command traps it."""
    options = SlurmOptions.from_params({"setup": ["sleep 1"], "modules": ["cuda"]})
    lines = _script(options, tmp_path).splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert lines[first_command].startswith("trap '_hrl_usr2=1' USR2")
    assert lines.index("trap _hrl_requeue USR2") > lines.index("sleep 1") > lines.index("module load cuda")
    assert "#SBATCH --signal=B:USR2@120" in lines
    assert "--signal" not in _script(SlurmOptions.from_params({"signal_delay_s": 0}), tmp_path)


def test_notice_during_set_up_requeues_before_the_task_starts(tmp_path: Path) -> None:
    """The batch script run by bash (no Slurm): a setup line sends the shell SIGUSR2 (as slurmctld may
    while modules load); the shell survives, requeues (stand-in scontrol) and never starts the task."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.log"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n')
    (bin_dir / "scontrol").chmod(0o755)
    options = SlurmOptions.from_params({"use_srun": False, "setup": ["kill -USR2 $$", "echo set-up done >&2"]})
    script = tmp_path / "job.sbatch"
    script.write_text(_script(options, tmp_path))
    ldir = tmp_path / "0" / ".launcher"
    ldir.mkdir(parents=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "0"}
    proc = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, timeout=60, check=False)

    assert proc.returncode == 0, (ldir / "stderr.log").read_text()
    assert calls.read_text() == "requeue 7_0\n"
    stderr = (ldir / "stderr.log").read_text()
    assert "set-up done" in stderr and "preemption: stopping the task and requeueing it" in stderr
    assert sorted(os.listdir(ldir)) == ["stderr.log", "stdout.log"]  # no task ran, no exit code written


@pytest.mark.parametrize(
    "n_jobs, expected_s, parallelism, per_task",
    [(1000, 1.0, 256, 4), (100_000, 1.0, 256, 391), (100_000, 120.0, 256, 5), (10, 1.0, 256, 1), (50, 3600.0, 4, 1)],
)
def test_auto_packing_fills_ten_minutes_without_costing_parallelism(
    n_jobs: int, expected_s: float, parallelism: int, per_task: int
) -> None:
    """auto: about 600 s of expected work per task, but never fewer tasks than array_parallelism."""
    from launcher_core.backends.slurm import SlurmBackend

    options = SlurmOptions.from_params(
        {"jobs_per_task": "auto", "expected_job_s": expected_s, "array_parallelism": parallelism}
    )
    assert SlurmBackend(options).jobs_per_task(n_jobs) == per_task


def test_packed_chunks_split_at_max_array_size_tasks() -> None:
    chunks = plan_chunks(_specs(23), 3, jobs_per_task=4)  # 3 tasks of 4 jobs per array
    assert [(c.offset, len(c.specs), c.tasks) for c in chunks] == [(0, 12, 3), (12, 11, 3)]
    assert [chunks[1].task_of(i) for i in range(11)] == [0] * 4 + [1] * 4 + [2] * 3


@pytest.mark.parametrize(
    ("words", "code", "node"),
    [(["0", "node7"], 0, "node7"), (["137"], 137, None), (["-"], None, None), ([], None, None), (["-1", "n"], -1, "n")],
)
def test_an_exit_file_gives_the_code_and_the_node(words: list[str], code: int | None, node: str | None) -> None:
    """``CODE NODE`` as the batch script writes it (an older file has the code alone); ``-`` is what
    the login node's reader prints for a job without one."""
    from launcher_core.backends.slurm.accounting import exit_info_of

    info = exit_info_of(words, has_result=True)
    assert (info.code, info.node, info.has_result) == (code, node, True)
