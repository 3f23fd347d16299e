"""Bad input across every launcher and the sweeper: a clear error naming the key or value, and
nothing launched — no job dir, no job in the state store, no remote dir, no sbatch, no API call.

Each case runs the test app as a user would (a subprocess, from a copy of the app so that it is
the project a remote launcher would ship). Guards that turn "something was attempted" into a
visible failure:
* slurm: fake ``sbatch``/``sacct``/``squeue``/``scontrol``/``srun``/``scancel`` first on PATH
  create a canary file when called (mock: stands in for a cluster that must not be contacted);
* ec2: ``endpoint_url`` points to a closed loopback port, so any AWS call would fail with a
  connection error instead of the expected message (and the credentials are fake);
* remote_ssh: hosts are on loopback, and the remote dir must not exist afterwards.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, run_app

SLURM_COMMANDS = ("sbatch", "sacct", "squeue", "scontrol", "srun", "scancel", "sinfo")
EC2 = [
    "hydra/launcher=ec2",
    "hydra.launcher.endpoint_url=http://127.0.0.1:9",
    "hydra.launcher.region=us-east-1",
]
EC2_OK = [*EC2, "hydra.launcher.ami=ami-12345678", "hydra.launcher.s3_bucket=hrl-bucket"]
SSH = ["hydra/launcher=remote_ssh", "hydra.launcher.hosts=[nobody@127.0.0.1:1]", "hydra.launcher.remote_dir=hrl/bad"]
SLURM = ["hydra/launcher=slurm"]
LOCAL = ["hydra/launcher=local_pool"]
PAIRED = ["hydra/sweeper=paired", *LOCAL]

CASES = [
    # --- local_pool ---------------------------------------------------------------------
    ("local-negative-n_jobs", [*LOCAL, "hydra.launcher.n_jobs=-2"], "hydra.launcher.n_jobs must be > 0, got -2"),
    ("local-zero-n_jobs", [*LOCAL, "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs must be > 0, got 0"),
    ("local-negative-timeout", [*LOCAL, "hydra.launcher.timeout_s=-1"], "hydra.launcher.timeout_s must be > 0"),
    ("local-negative-grace", [*LOCAL, "hydra.launcher.kill_grace_s=-3"], "hydra.launcher.kill_grace_s must be >= 0"),
    ("local-unknown-key", [*LOCAL, "hydra.launcher.n_job=2"], "Key 'n_job' not in 'LocalPoolLauncherConf'"),
    ("local-wrong-type", [*LOCAL, "hydra.launcher.n_jobs=many"], "Value 'many' of type 'str' could not be converted"),
    # --- sweeper ------------------------------------------------------------------------
    (
        "paired-length-mismatch",
        [*PAIRED, "hydra.sweeper.paired=[{seconds:[1,2],code:[1,2,3]}]"],
        "paired group 1 has keys with different numbers of values (seconds has 2, code has 3)",
    ),
    (
        "paired-key-in-two-groups",
        [*PAIRED, "hydra.sweeper.paired=[{code:[1,2]},{code:[3,4],seconds:[1,2]}]"],
        "key 'code' is in paired groups 1 and 2",
    ),
    (
        "paired-and-gridded",
        [*PAIRED, "hydra.sweeper.paired=[{x:[1,2],code:[1,2]}]", "x=5,6"],
        "key 'x' is both in paired group 1 and an ordinary override",
    ),
    (
        "paired-key-without-values",
        [*PAIRED, "hydra.sweeper.paired=[[x,code]]"],
        "paired group 1 names 'code' but no override gives its values",
    ),
    ("paired-empty-group", [*PAIRED, "hydra.sweeper.paired=[{}]"], "paired group 1 is empty"),
    ("empty-sweep", [*PAIRED, "hydra.sweeper.paired=[{code:[]}]"], "paired group 1 has no values"),
    ("batch-size-zero", [*PAIRED, "hydra.sweeper.max_batch_size=0"], "hydra.sweeper.max_batch_size must be >= 1"),
    ("sweeping-hydra-keys", [*LOCAL, "hydra.job.chdir=true,false"], "Sweeping over Hydra's configuration"),
    # --- remote_ssh ---------------------------------------------------------------------
    ("ssh-missing-hosts", ["hydra/launcher=remote_ssh"], "hydra.launcher.hosts is empty"),
    ("ssh-remote-dir-root", [*SSH, "hydra.launcher.remote_dir=/"], "hydra.launcher.remote_dir must not be the file"),
    (
        "ssh-remote-dir-empty",
        [*SSH, "hydra.launcher.remote_dir=''"],
        "hydra.launcher.remote_dir must be a non-empty single-line string, got ''",
    ),
    (
        "ssh-remote-dir-tilde",
        [*SSH, "hydra.launcher.remote_dir='~'"],
        "hydra.launcher.remote_dir may start with '~/' (your home on the host) but not '~user' or '~' alone",
    ),
    ("ssh-remote-dir-tilde-user", [*SSH, "hydra.launcher.remote_dir='~root/x'"], "but not '~user' or '~' alone"),
    ("ssh-remote-dir-system", [*SSH, "hydra.launcher.remote_dir=/etc/hrl"], "must not be the file system root"),
    ("ssh-remote-dir-dotdot", [*SSH, "hydra.launcher.remote_dir=a/../../b"], "must not contain '..'"),
    (
        "ssh-negative-slots",
        [*SSH, "hydra.launcher.max_parallel=-1"],
        "hydra.launcher.max_parallel must be an integer >= 1, got -1",
    ),
    (
        "ssh-excludes-entry-script",
        [*SSH, "hydra.launcher.rsync_exclude=[*.py]"],
        "hydra.launcher.rsync_exclude would leave tasks.py out of the code snapshot",
    ),
    (
        "ssh-bad-env-setup",
        [*SSH, "hydra.launcher.env.setup=pip"],
        "hydra.launcher.env.setup must be none | uv | conda, got 'pip'",
    ),
    ("ssh-unknown-key", [*SSH, "hydra.launcher.hostz=[a]"], "Key 'hostz' not in 'RemoteSSHLauncherConf'"),
    (
        "ssh-missing-code-dir",
        [*SSH, "hydra.launcher.code_dir=/nonexistent/project"],
        "hydra.launcher.code_dir: /nonexistent/project is not a directory",
    ),
    ("ssh-unreachable-host", SSH, "127.0.0.1"),
    # --- slurm --------------------------------------------------------------------------
    (
        "slurm-max-array-size-zero",
        [*SLURM, "hydra.launcher.max_array_size=0"],
        "hydra.launcher.max_array_size must be > 0, got 0",
    ),
    (
        "slurm-max-array-size-negative",
        [*SLURM, "hydra.launcher.max_array_size=-5"],
        "hydra.launcher.max_array_size must be > 0, got -5",
    ),
    (
        "slurm-missing-image",
        [*SLURM, "hydra.launcher.container.image=/nonexistent/train.sif"],
        "hydra.launcher.container.image: no image at '/nonexistent/train.sif'",
    ),
    (
        "slurm-bad-runtime",
        [*SLURM, "hydra.launcher.container.image=/tmp", "hydra.launcher.container.runtime=docker"],
        "hydra.launcher.container.runtime must be one of ['singularity', 'apptainer'], got 'docker'",
    ),
    ("slurm-zero-timeout", [*SLURM, "hydra.launcher.timeout_min=0"], "hydra.launcher.timeout_min must be > 0, got 0"),
    (
        "slurm-zero-give-up",
        [*SLURM, "hydra.launcher.wait=false", "hydra.launcher.auto_pull=true", "hydra.launcher.auto_pull_give_up_h=0"],
        "hydra.launcher.auto_pull_give_up_h must be a number of hours > 0, got 0",
    ),
    ("slurm-negative-cpus", [*SLURM, "hydra.launcher.cpus_per_task=-1"], "hydra.launcher.cpus_per_task must be > 0"),
    (
        "slurm-empty-partition",
        [*SLURM, "hydra.launcher.partition=''"],
        "hydra.launcher.partition must be a non-empty single line, got ''",
    ),
    (
        "slurm-unknown-key",
        [*SLURM, "hydra.launcher.partitionz=gpu"],
        "Key 'partitionz' not in 'SlurmArrayLauncherConf'",
    ),
    # --- ec2 ----------------------------------------------------------------------------
    ("ec2-missing-ami", EC2, "hydra.launcher.ami is required"),
    (
        "ec2-bad-ami",
        [*EC2, "hydra.launcher.ami=centos", "hydra.launcher.s3_bucket=hrl-bucket"],
        "hydra.launcher.ami is required: the id of a Linux AMI in your region (ami-...), got 'centos'",
    ),
    ("ec2-missing-bucket", [*EC2, "hydra.launcher.ami=ami-12345678"], "hydra.launcher.s3_bucket is required"),
    (
        "ec2-bad-bucket",
        [*EC2, "hydra.launcher.ami=ami-12345678", "hydra.launcher.s3_bucket=Bad_Bucket"],
        "got 'Bad_Bucket'",
    ),
    (
        "ec2-zero-jobs-per-instance",
        [*EC2_OK, "hydra.launcher.jobs_per_instance=0"],
        "hydra.launcher.jobs_per_instance must be > 0, got 0",
    ),
    (
        "ec2-negative-runtime",
        [*EC2_OK, "hydra.launcher.max_runtime_min=-1"],
        "hydra.launcher.max_runtime_min must be > 0",
    ),
]


@pytest.fixture(scope="module")
def guards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A PATH dir of fake Slurm commands that leave a canary when called."""
    root = tmp_path_factory.mktemp("guards")
    bin_dir, canary = root / "bin", root / "slurm-was-called"
    bin_dir.mkdir()
    for name in SLURM_COMMANDS:
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\necho "$0 $*" >> {canary}\nexit 1\n')
        script.chmod(0o755)
    return bin_dir, canary


@pytest.mark.parametrize("name, args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_is_launched(
    name: str, args: list[str], message: str, tmp_path: Path, guards: tuple[Path, Path]
) -> None:
    bin_dir, canary = guards
    app_dir = tmp_path / "project"
    app_dir.mkdir()
    for f in ("tasks.py", "tasks.yaml"):
        shutil.copy(REPO_ROOT / "tests" / "apps" / f, app_dir / f)
    sweep_dir = tmp_path / "sweep"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AWS_ACCESS_KEY_ID": "AKIAFAKEBADINPUT0000",
        "AWS_SECRET_ACCESS_KEY": "fake-secret-bad-input",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(REPO_ROOT),
    }
    proc = run_app(app_dir / "tasks.py", ["-m", f"hydra.sweep.dir={sweep_dir}", "x=1,2", *args], app_dir, 120, env)

    assert proc.returncode != 0, f"{name}: accepted\n{proc.stdout}\n{proc.stderr}"
    assert message in proc.stderr, f"{name}: expected {message!r} in:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{name}: a traceback for a bad setting:\n{proc.stderr[-3000:]}"
    assert not (sweep_dir / "0").exists() and not (sweep_dir / "1").exists(), f"{name}: a job dir was created"
    assert _jobs_in_store(sweep_dir) == 0, f"{name}: jobs were handed to a backend"
    assert not canary.exists(), f"{name}: a Slurm command was run: {canary.read_text() if canary.exists() else ''}"
    assert "ConnectionRefused" not in proc.stderr and "Could not connect to the endpoint" not in proc.stderr


def test_unreachable_host_names_it_and_starts_nothing(tmp_path: Path) -> None:
    """The one case above that gets as far as trying to connect: nothing may be marked started."""
    from launcher_core.jobs import JobState
    from launcher_core.state import StateStore

    sweep_dir = tmp_path / "sweep"
    proc = run_app(
        REPO_ROOT / "tests" / "apps" / "tasks.py", ["-m", f"hydra.sweep.dir={sweep_dir}", "x=1,2", *SSH], tmp_path, 120
    )
    assert proc.returncode != 0
    assert "nobody@127.0.0.1:1" in proc.stderr or "127.0.0.1 port 1" in proc.stderr
    assert "none of the 2 jobs was started" in proc.stderr
    if StateStore.exists_in(sweep_dir):
        with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
            assert {r.state for r in store.jobs()} <= {JobState.PENDING}


def _jobs_in_store(sweep_dir: Path) -> int:
    path = sweep_dir / ".launcher" / "state.sqlite"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM jobs WHERE state != 'pending'").fetchone()[0]
    finally:
        conn.close()


def test_bad_setting_is_one_short_message_and_the_traceback_is_there_on_request(tmp_path: Path) -> None:
    """Our errors print like Hydra's own config errors; HYDRA_FULL_ERROR=1 still shows everything."""
    args = [sys.executable, str(REPO_ROOT / "tests" / "apps" / "tasks.py"), "-m", f"hydra.sweep.dir={tmp_path / 's'}"]
    args += ["x=1,2", "hydra/launcher=local_pool", "hydra.launcher.n_jobs=0"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    short = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    full = subprocess.run(
        args, capture_output=True, text=True, timeout=120, env={**env, "HYDRA_FULL_ERROR": "1"}, cwd=tmp_path
    )
    assert short.returncode != 0 and full.returncode != 0
    assert "hydra.launcher.n_jobs must be > 0, got 0" in short.stderr
    assert "Traceback" not in short.stderr
    assert len(short.stderr.strip().splitlines()) <= 3, short.stderr
    assert "Traceback" in full.stderr and "ConfigError: hydra.launcher.n_jobs must be > 0, got 0" in full.stderr
