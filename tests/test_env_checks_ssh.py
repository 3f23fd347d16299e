"""remote_ssh checks the jobs' environment where the jobs will run, once it exists, before any
job starts (issue 28): with ``env.setup=uv`` the Python exists only after ``uv sync`` in the
launch's code snapshot, so host preparation runs the probe there and refuses versions the jobs
cannot use; a failing ``prepare_commands`` line stops the launch naming the line and its message.

Real services only: the loopback sshd (tests/sshd.py), the real ``uv`` (the test venv's, copied
where the test user can run it) resolving the project's pins offline from a wheelhouse of the real
distributions (downloaded once per machine; the test skips where that is not possible).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher_core.jobs import JobState
from tests.sshd import BASE, USERS, SSHTestEnv, _machine_lock, make_project, shared_dir
from tests.test_remote_ssh import launch, outcomes, result, states

pytestmark = pytest.mark.ssh

WHEELHOUSE = BASE / "uv-wheelhouse"
OLD_OMEGACONF = "2.2.3"  # what a project pinning `omegaconf<2.3` gets: not what the jobs' configs need
HERE = {d: importlib.metadata.version(d) for d in ("hydra-core", "omegaconf", "cloudpickle")}


def _wheelhouse() -> Path:
    """The wheels of hydra-core, omegaconf, cloudpickle (this machine's versions, and the old
    omegaconf) and their dependencies, built once per machine; uv resolves from it offline."""
    done = WHEELHOUSE / ".complete"
    if done.exists():
        return WHEELHOUSE
    tmp = WHEELHOUSE.with_name(WHEELHOUSE.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(tmp)]
    wanted = [f"{d}=={v}" for d, v in HERE.items()]
    for argv in (pip + wanted, pip + ["--no-deps", f"omegaconf=={OLD_OMEGACONF}"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot download the wheels uv installs from: {proc.stderr.strip()[-300:]}")
    for sdist in tmp.glob("*.tar.gz"):  # antlr4-python3-runtime 4.9.3 is an sdist: build its wheel here
        proc = subprocess.run(
            ["/usr/bin/python3", "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp)]
            + [str(sdist)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot build a wheel of {sdist.name}: {proc.stderr.strip()[-300:]}")
        sdist.unlink()
    subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
    (tmp / ".complete").touch()
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    tmp.rename(WHEELHOUSE)
    return WHEELHOUSE


def old_omegaconf_site() -> Path:
    """A world-readable dir holding the real omegaconf 2.2.3 (installed from the wheelhouse, once
    per machine): first on a Python's path, that Python has packages the jobs cannot use."""
    site = BASE / f"omegaconf-{OLD_OMEGACONF}-site"
    with _machine_lock():
        if not (site / ".complete").exists():
            wheels = _wheelhouse()
            (wheel,) = wheels.glob(f"omegaconf-{OLD_OMEGACONF}-*.whl")
            shutil.rmtree(site, ignore_errors=True)
            pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
            subprocess.run([*pip, "--no-index", "--target", str(site), str(wheel)], check=True, timeout=300)
            subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
            (site / ".complete").touch()
    return site


@pytest.fixture(scope="module", name="uv_setup")
def uv_setup_fixture(ssh_env: SSHTestEnv) -> tuple[Path, Path]:
    """(the uv binary where the test users can run it, the wheelhouse)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (pip install uv into the test venv)")
    with _machine_lock():
        wheels = _wheelhouse()
    bin_dir = shared_dir("hrl-uv") / "bin"
    bin_dir.mkdir(mode=0o755)
    shutil.copy2(uv, bin_dir / "uv")
    os.chmod(bin_dir / "uv", 0o755)
    return bin_dir / "uv", wheels


def _uv_project(root: Path, wheels: Path, omegaconf: str) -> Path:
    proj = make_project(root)
    _pin(proj, wheels, omegaconf)
    return proj


def _pin(proj: Path, wheels: Path, omegaconf: str) -> None:
    deps = [f"hydra-core=={HERE['hydra-core']}", f"omegaconf=={omegaconf}", f"cloudpickle=={HERE['cloudpickle']}"]
    (proj / "pyproject.toml").write_text(
        "[project]\n"
        'name = "hrl-uv-app"\n'
        'version = "0"\n'
        'requires-python = ">=3.10"\n'
        f"dependencies = {deps!r}\n".replace("'", '"')
        + "\n[tool.uv]\n"
        "no-index = true\n"
        f'find-links = ["{wheels}"]\n'
        'python-preference = "only-system"\n'
    )


@pytest.mark.timeout(300)
def test_uv_pins_the_jobs_cannot_use_are_refused_before_any_job_starts(
    ssh_env: SSHTestEnv, uv_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    uv, wheels = uv_setup
    proj = _uv_project(tmp_path / "proj", wheels, OLD_OMEGACONF)
    name = "env-uv"
    uv_settings = {"python": "python3", "env.setup": "uv", "env.uv_command": str(uv)}

    proc, sweep = launch(ssh_env, proj, name, "x=1,2", **uv_settings)

    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stdout + proc.stderr
    host = ssh_env.server.alias(USERS[0])
    # the pre-flight (before anything exists there) leaves the Python to the prepared snapshot ...
    assert f"pre-flight {host}: ok (" in err and "checked in the code snapshot after `uv sync`" in err, err
    # ... where uv really installed the pinned omegaconf, and the launch stops before any job
    assert "the jobs' Python after `uv sync` cannot run them" in err, err
    assert f"{host}: omegaconf: {OLD_OMEGACONF} there, {HERE['omegaconf']} here" in err
    assert "fix: require omegaconf==2.3.* in the project's pyproject.toml" in err
    assert "none of the 2 jobs was started" in err
    assert "Traceback" not in err
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}
    remote = ssh_env.remote_path(name)
    (snapshot,) = (remote / "snapshots").glob("*/*/")
    venv_site = next((snapshot / ".venv" / "lib").glob("python3*/site-packages"))
    assert (venv_site / f"omegaconf-{OLD_OMEGACONF}.dist-info").is_dir()  # uv sync really ran there
    assert not list((remote / "runs").rglob("exit_status"))  # no job ran

    # the pin fixed, the same command starts the jobs (a new snapshot, synced and checked again)
    _pin(proj, wheels, HERE["omegaconf"])
    again, _ = launch(ssh_env, proj, name, "x=1,2", **uv_settings)
    assert again.returncode == 0, again.stderr
    assert f"environment of {host} after `uv sync`: ok (" in again.stdout + again.stderr, again.stderr
    got = outcomes(sweep)
    assert [got[n][0] for n in range(2)] == [JobState.COMPLETED] * 2
    cwd = Path(result(sweep, 0).return_value["cwd"])  # the jobs ran in the new snapshot, with its venv
    assert cwd.parent.parent == remote / "snapshots" and cwd != snapshot
    assert next((cwd / ".venv" / "lib").glob(f"python3*/site-packages/omegaconf-{HERE['omegaconf']}.dist-info"))


@pytest.mark.timeout(180)
def test_a_failing_prepare_command_stops_the_launch_naming_the_line(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    name = "env-prepare"
    marker = shared_dir("hrl-prepare") / "ran"
    # passes in the home dir (where the pre-flight runs it before any snapshot exists), fails in the snapshot
    bad = "echo 'module: no such module cuda/99' >&2; test ! -f helper.py"
    prepare = f'["echo preparing", "{bad}", "pwd >> {marker}"]'

    proc, sweep = launch(ssh_env, proj, name, "x=1,2", prepare_commands=prepare)

    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stdout + proc.stderr
    host = ssh_env.server.alias(USERS[0])
    assert f"pre-flight {host}: ok (" in err, err
    # in the launch's snapshot it fails: named with its message, before any job started
    expected = f"host {host}: hydra.launcher.prepare_commands[1] `{bad}` failed (exit 1): module: no such module"
    assert expected in err, err
    assert "none of the 2 jobs was started" in err
    assert "Traceback" not in err
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}
    assert marker.read_text() == f"{ssh_env.home(USERS[0])}\n"  # the pre-flight's pass; none in the snapshot
    assert not list((ssh_env.remote_path(name) / "runs").rglob("exit_status"))

    # the line fixed, the same command starts the jobs (the lines now run in the snapshot)
    fixed = f'["echo preparing", "true", "pwd >> {marker}"]'
    again, _ = launch(ssh_env, proj, name, "x=1,2", prepare_commands=fixed)
    assert again.returncode == 0, again.stderr
    assert [s for s, _ in outcomes(sweep).values()] == [JobState.COMPLETED] * 2
    assert "/snapshots/" in marker.read_text().splitlines()[-1]
