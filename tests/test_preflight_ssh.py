"""Pre-flight of remote_ssh against the loopback sshd: each broken host is refused before any job
starts (the state store keeps every job pending, nothing is created in ``remote_dir``), and the
error names the host, what is wrong and the fix. A good host costs one round trip, once per sweep.

The only stand-in is ``nvidia-smi`` (no GPU here): a script on the test user's PATH that lists
one GPU, as the real one prints ``GPU 0: <name> (UUID: ...)``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher_core.jobs import JobState
from tests.sshd import REMOTE_SITE, USERS, SSHTestEnv, make_project, shared_dir
from tests.test_remote_ssh import launch, states

pytestmark = pytest.mark.ssh


def _refused(ssh_env: SSHTestEnv, proc: subprocess.CompletedProcess[str], sweep: Path, name: str) -> str:
    """The launch failed before anything started: every job pending, no remote dir created."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "pre-flight check failed" in proc.stderr, proc.stderr
    assert "none of the 2 jobs was started" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}
    assert not ssh_env.remote_path(name).exists()
    return proc.stderr


@pytest.fixture(scope="module", name="venv_without_cloudpickle")
def venv_without_cloudpickle_fixture() -> str:
    """A venv on the "host" with hydra-core and omegaconf but no cloudpickle."""
    root = shared_dir("hrl-nocp")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    site = root / "site"
    site.mkdir()
    for entry in REMOTE_SITE.iterdir():
        if not entry.name.startswith("cloudpickle"):
            (site / entry.name).symlink_to(entry)
    venv_site = next((root / "venv" / "lib").glob("python3*/site-packages"))
    (venv_site / "hrl-site.pth").write_text(f"{site}\n")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return str(root / "venv" / "bin" / "python")


@pytest.mark.timeout(120)
def test_a_venv_without_cloudpickle_is_refused(
    ssh_env: SSHTestEnv, venv_without_cloudpickle: str, tmp_path: Path
) -> None:
    name = "pf-nocp"
    proc, sweep = launch(ssh_env, make_project(tmp_path / "proj"), name, "x=1,2", python=venv_without_cloudpickle)
    err = _refused(ssh_env, proc, sweep, name)
    host = ssh_env.server.alias(USERS[0])
    assert f"{host}: cloudpickle: not importable by {venv_without_cloudpickle}" in err
    assert "ModuleNotFoundError" in err
    import cloudpickle

    pin = f"cloudpickle=={cloudpickle.__version__}"
    assert f"fix: install it there: `{venv_without_cloudpickle} -m pip install '{pin}'`" in err
    assert "hydra-core:" not in err  # the packages that are there are not reported as failures


@pytest.mark.timeout(120)
def test_a_python_that_is_not_python_is_refused(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    name = "pf-notpython"
    proc, sweep = launch(ssh_env, make_project(tmp_path / "proj"), name, "x=1,2", python="/bin/echo")
    err = _refused(ssh_env, proc, sweep, name)
    host = ssh_env.server.alias(USERS[0])
    assert f"{host}: python: '/bin/echo' is not a working Python on {host}" in err
    assert "fix: set hydra.launcher.python to the command of a Python >= 3.10 there" in err


@contextlib.contextmanager
def _small_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` writable by the test users; skips where mounting is not allowed."""
    mount_point = shared_dir("hrl-fulldisk") / "mnt"
    mount_point.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


@pytest.mark.timeout(120)
def test_a_full_disk_is_refused(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    name = "pf-fulldisk"
    with _small_filesystem("5m") as disk:
        remote_dir = disk / "hrl"
        proc, sweep = launch(
            ssh_env, make_project(tmp_path / "proj"), name, "x=1,2", remote_dir=str(remote_dir), min_free_gb=0.5
        )
        assert not remote_dir.exists()  # nothing created there
    err = _refused(ssh_env, proc, sweep, name)
    host = ssh_env.server.alias(USERS[0])
    assert f"{host}: free disk: 0.0 GB free in {disk}" in err
    assert "less than min_free_gb=0.5" in err
    assert "fix: free space there, point hydra.launcher.remote_dir at a bigger disk" in err


@pytest.mark.timeout(120)
def test_too_few_gpus_are_refused(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    bin_dir = shared_dir("hrl-gpu") / "bin"
    bin_dir.mkdir(mode=0o755)
    fake = bin_dir / "nvidia-smi"  # the stand-in: one GPU, in nvidia-smi -L's format
    fake.write_text("#!/bin/sh\necho 'GPU 0: Stand-in GPU (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    fake.chmod(0o755)
    name = "pf-gpus"
    proc, sweep = launch(
        ssh_env,
        make_project(tmp_path / "proj"),
        name,
        "x=1,2",
        gpus_per_job=1,
        max_parallel=2,
        prepare_commands=f'["PATH={bin_dir}:$PATH; export PATH"]',
    )
    err = _refused(ssh_env, proc, sweep, name)
    host = ssh_env.server.alias(USERS[0])
    assert f"{host}: gpus: nvidia-smi -L lists 1 GPUs; max_parallel=2 x gpus_per_job=1 needs 2" in err
    assert f"fix: lower max_parallel of {host} to 1" in err


@pytest.mark.timeout(120)
def test_missing_rsync_and_an_unreachable_host_are_refused(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = "pf-rsync"
    down = f"{USERS[0]}@127.0.0.1:{port}"
    proc, sweep = launch(
        ssh_env,
        make_project(tmp_path / "proj"),
        name,
        "x=1,2",
        hosts=f"[{ssh_env.server.alias()},'{down}']",
        rsync_path="/nonexistent/rsync",
    )
    err = _refused(ssh_env, proc, sweep, name)
    assert f"{ssh_env.server.alias()}: rsync: '/nonexistent/rsync' is not on the PATH" in err
    assert f"{down}: reachable:" in err and "Connection refused" in err
    assert f"fix: check that `ssh {down}` works from here" in err


@pytest.mark.timeout(180)
def test_a_good_host_is_checked_once_per_sweep(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    name = "pf-good"
    proc, sweep = launch(ssh_env, proj, name, "x=1,2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    host = ssh_env.server.alias(USERS[0])
    lines = [line for line in out.splitlines() if f"pre-flight {host}: ok (" in line]
    assert len(lines) == 1, out
    assert "cloudpickle" in lines[0] and "GB free in" in lines[0], lines[0]
    assert (sweep / ".launcher" / "preflight.json").exists()
    # the relaunch (skip_completed: it runs nothing again) asks nobody: the host passed lately
    (proj / "helper.py").write_text('VERSION = "v2"\n')
    again, _ = launch(ssh_env, proj, name, "x=1,2,3")
    assert again.returncode == 0, again.stderr
    out = again.stdout + again.stderr
    assert f"pre-flight {host}: ok (passed earlier with these settings)" in out
    assert f"pre-flight {host}: ok (python" not in out
