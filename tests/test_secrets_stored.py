"""A secret given to the jobs (the job environment, and a set-up line that exports one) reaches the
job and is never stored by the launcher: not in the sweep's state store (``state.sqlite`` and its
``-wal``/``-shm``), not in the sweep index, not in any file under the sweep's or a job's
``.launcher/`` (job tables, payloads, logs, pre-flight cache), not on the remote side (remote_ssh
host dirs, ec2's S3 objects).

Every backend runs a real sweep of the same app, as a user runs it (``python app.py -m ...``):
local_pool (its jobs inherit the launching process's environment), remote_ssh against the
loopback sshd, slurm against the test cluster, ec2 against moto. The only files that may hold a
secret are the ones that carry it to the job, named per backend below and checked private:
slurm's sbatch scripts (0600) and ec2's user-data (an instance attribute, never a file here).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from launcher_core.state import StateStore
from tests.conftest import run_app
from tests.ec2_fixtures import AwsWorld, wait_for
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHTestEnv

ENV_SECRET = "hrl-env-s3cr3t-" + os.urandom(6).hex()
SETUP_SECRET = "hrl-setup-s3cr3t-" + os.urandom(6).hex()
SETUP_LINE = f"export HRL_SETUP_SECRET={SETUP_SECRET}"
NAMES = ("HRL_ENV_SECRET", "HRL_SETUP_SECRET")

# The job returns (and writes) only digests of what it saw: the secrets themselves never travel back.
APP = """\
import hashlib
import json
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    names = ("HRL_ENV_SECRET", "HRL_SETUP_SECRET")
    seen = {n: hashlib.sha256(os.environ.get(n, "").encode()).hexdigest() for n in names}
    (Path(HydraConfig.get().runtime.output_dir) / "seen.json").write_text(json.dumps(seen))
    print(f"job x={cfg.x} ran", flush=True)
    return seen


if __name__ == "__main__":
    main()
"""


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def project(root: Path) -> Path:
    (root / "conf").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text("x: 0\nhydra:\n  job:\n    chdir: false\n")
    return root


def sweep(proj: Path, sweep_dir: Path, home: Path, *overrides: str, env: dict[str, str] | None = None) -> None:
    argv = ["-m", f"hydra.sweep.dir={sweep_dir}", "x=1,2", *overrides]
    proc = run_app(
        proj / "app.py", argv, cwd=proj, timeout=240, env={"HYDRA_REMOTE_LAUNCHER_HOME": str(home), **(env or {})}
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for secret in (ENV_SECRET, SETUP_SECRET):
        assert secret not in proc.stdout + proc.stderr


def assert_jobs_saw(sweep_dir: Path, expected: dict[str, str]) -> None:
    for n in (0, 1):
        seen = json.loads((sweep_dir / str(n) / "seen.json").read_text())
        assert seen == {name: digest(expected.get(name, "")) for name in NAMES}, f"job {n}"


def stored_files(sweep_dir: Path, home: Path) -> dict[str, bytes]:
    """The state store (with -wal/-shm), the sweep index and every file under a .launcher/ dir."""
    files = [p for p in sweep_dir.rglob("*") if p.is_file() and ".launcher" in p.relative_to(sweep_dir).parts]
    files += [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "state.sqlite" for p in files) and any(p.name.startswith("sweeps.sqlite") for p in files)
    return {str(p): p.read_bytes() for p in files}


def leaks(blobs: dict[str, bytes], secret: str) -> list[str]:
    return sorted(name for name, data in blobs.items() if secret.encode() in data)


def assert_state_store_clean(sweep_dir: Path, stored: dict[str, bytes]) -> None:
    """Neither secret in the state store (its files, meta, handles) nor in the sweep index."""
    stores = {p: data for p, data in stored.items() if Path(p).name.startswith(("state.sqlite", "sweeps.sqlite"))}
    assert leaks(stores, ENV_SECRET) == [] and leaks(stores, SETUP_SECRET) == []
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        text = json.dumps(store.meta()) + repr([(r.handle, r.overrides, r.exit_reason) for r in store.jobs()])
    assert ENV_SECRET not in text and SETUP_SECRET not in text


# Set-up lines are settings, recorded like any other (docs: secrets go in the job environment,
# never in set-up lines): in the config Hydra records and the jobs get (each job's hydra.yaml and
# result.pkl, the sweep payload's templates). Never in the state store, the index, job tables or logs.
KNOWN_SETUP_LINE_COPIES = ("result.pkl", "hydra.yaml", "sweep.pkl")


def check_setup_lines(blobs: dict[str, bytes]) -> None:
    """The set-up line is only where the launcher settings are recorded or shipped, nowhere else."""
    found = leaks(blobs, SETUP_SECRET)
    known = [p for p in found if p.endswith(KNOWN_SETUP_LINE_COPIES) or Path(p).name.startswith("sweep-")]
    assert sorted(set(found) - set(known)) == []


def test_local_pool(tmp_path: Path) -> None:
    proj, sweep_dir, home = project(tmp_path / "proj"), tmp_path / "sweep", tmp_path / "home"
    sweep(proj, sweep_dir, home, "hydra/launcher=local_pool", env={"HRL_ENV_SECRET": ENV_SECRET})
    assert_jobs_saw(sweep_dir, {"HRL_ENV_SECRET": ENV_SECRET})
    stored = stored_files(sweep_dir, home)
    assert leaks(stored, ENV_SECRET) == []
    assert_state_store_clean(sweep_dir, stored)


@pytest.mark.ssh
def test_remote_ssh(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj, sweep_dir, home = project(tmp_path / "proj"), tmp_path / "sweep", tmp_path / "home"
    name = f"secrets-{os.urandom(3).hex()}"
    settings = ssh_env.overrides(name, prepare_commands=f"['{SETUP_LINE}']", max_parallel=2)
    sweep(
        proj,
        sweep_dir,
        home,
        "hydra/launcher=remote_ssh",
        f"+hydra.launcher.env.vars.HRL_ENV_SECRET={ENV_SECRET}",
        *settings,
    )
    assert_jobs_saw(sweep_dir, {"HRL_ENV_SECRET": ENV_SECRET, "HRL_SETUP_SECRET": SETUP_SECRET})
    remote = ssh_env.remote_path(name)
    remote_files = {str(p): p.read_bytes() for p in remote.rglob("*") if p.is_file() and not p.is_symlink()}
    assert any(p.endswith(".json") and "/batches/" in p for p in remote_files)  # the job tables were scanned
    stored = stored_files(sweep_dir, home)
    assert leaks(stored, ENV_SECRET) == [] and leaks(remote_files, ENV_SECRET) == []
    assert_state_store_clean(sweep_dir, stored)
    check_setup_lines({**stored, **remote_files})


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    proj, sweep_dir, home = project(tmp_path / "proj"), tmp_path / "sweep", tmp_path / "home"
    overrides = [
        "hydra/launcher=slurm",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
        f"+hydra.launcher.env.HRL_ENV_SECRET={ENV_SECRET}",
        f"hydra.launcher.setup=['{SETUP_LINE}']",
    ]
    sweep(proj, sweep_dir, home, *overrides)
    assert_jobs_saw(sweep_dir, {"HRL_ENV_SECRET": ENV_SECRET, "HRL_SETUP_SECRET": SETUP_SECRET})
    stored = stored_files(sweep_dir, home)
    assert any(Path(p).name.startswith("jobs") and p.endswith(".json") for p in stored)  # job table scanned
    # the sbatch script carries both to the job (env as export lines, setup verbatim): owner-only
    scripts = [p for p in stored if p.endswith(".sbatch")]
    assert scripts and all(stat.S_IMODE(Path(p).stat().st_mode) == 0o600 for p in scripts)
    others = {p: data for p, data in stored.items() if p not in scripts}
    assert leaks(others, ENV_SECRET) == []
    assert_state_store_clean(sweep_dir, stored)
    check_setup_lines(others)


@pytest.mark.ec2
def test_ec2(aws: AwsWorld) -> None:
    proj, sweep_dir, home = project(aws.tmp / "proj"), aws.tmp / "sweep", aws.tmp / "home"
    settings = aws.launcher_settings(code_dir=str(proj), setup_commands=[SETUP_LINE])
    overrides = [f"hydra.launcher.{k}={_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    overrides += [f"+hydra.launcher.env.HRL_ENV_SECRET={ENV_SECRET}", "+hydra.launcher.tags.project=hrl-tests"]
    sweep(proj, sweep_dir, home, "hydra/launcher=ec2", *overrides)
    assert_jobs_saw(sweep_dir, {"HRL_ENV_SECRET": ENV_SECRET, "HRL_SETUP_SECRET": SETUP_SECRET})
    stored = stored_files(sweep_dir, home)
    s3 = {f"s3://{k}": v for k, v in aws.s3_objects().items()}
    assert any(key.endswith(".tar.gz") for key in s3) and any(key.endswith("plan.json") for key in s3)
    assert leaks(stored, ENV_SECRET) == [] and leaks(s3, ENV_SECRET) == []
    assert_state_store_clean(sweep_dir, stored)
    assert_rebuilt_backend_polls(sweep_dir)
    # the instances get both through their user-data (EC2 keeps it with the instance, not in a file)
    ec2 = aws.client("ec2")
    try:
        user_data = [
            base64.b64decode(ec2.describe_instance_attribute(InstanceId=i, Attribute="userData")["UserData"]["Value"])
            for i in aws.instances()
        ]
    finally:
        ec2.close()
    assert user_data and all(ENV_SECRET.encode() in u and SETUP_SECRET.encode() in u for u in user_data)
    wait_for(lambda: not aws.running_instances(), 30, "the instances to terminate")
    check_setup_lines({**stored, **s3})


def assert_rebuilt_backend_polls(sweep_dir: Path) -> None:
    """What the store keeps is enough for pull/status/cancel/clean: the backend they rebuild polls."""
    from launcher_core.backends import backend_for_meta
    from launcher_core.backends.ec2.settings import STORED_KEYS
    from launcher_core.jobs import JobState

    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        meta, handles = store.meta(), {r.job_id: r.handle for r in store.jobs()}
    assert sorted(meta["backend_config"]) == sorted(STORED_KEYS)
    backend = backend_for_meta(meta)
    try:
        assert {s.state for s in backend.poll(handles).values()} == {JobState.COMPLETED}
    finally:
        backend.close()


def _value(value: object) -> str:
    """A launcher setting in Hydra's override grammar (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
