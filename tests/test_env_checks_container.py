"""The pre-flight checks the Python inside the container image (issue 28): an image whose Python
has packages the jobs cannot use is refused before any job starts, on remote_ssh (loopback sshd)
and on slurm (the test cluster), naming the package and both versions; with a usable Python the
same launch runs.

The runtime is the stand-in ``singularity`` (tests/container_standin: charliecloud's ``ch-run`` on
a directory image). The image holds a real venv (``/opt/venv``, the host's /usr bound in by the
stand-in) whose site-packages has the real omegaconf 2.2.3 next to a ``.pth`` to the usual job-side
packages: the image's Python imports the old omegaconf, exactly what an old image would do.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from tests.conftest import REPO_ROOT
from tests.slurm_cluster import STANDIN_DIR, CommandLog, SlurmCluster, launch_sweep, skeleton_image
from tests.sshd import REMOTE_SITE, REMOTE_VENV, USERS, SSHTestEnv, make_project, shared_dir
from tests.test_env_checks_ssh import HERE, OLD_OMEGACONF, old_omegaconf_site
from tests.test_remote_ssh import launch, outcomes, states
from tests.test_remote_ssh_container import _path_prepend, _userns_problem

IMAGE_PYTHON = "/opt/venv/bin/python"


def _old_image(path: Path, site: Path, owner: str | None = None) -> Path:
    """A directory image whose ``/opt/venv`` Python has omegaconf 2.2.3 and, through a ``.pth``,
    the packages of ``site`` (bound into the container by the launch)."""
    skeleton_image(path)
    venv = path / "opt" / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    old = old_omegaconf_site()
    for entry in old.iterdir():
        if entry.name.startswith("omegaconf"):
            shutil.copytree(entry, venv_site / entry.name)
    (venv_site / "job-side.pth").write_text(f"{site}\n")
    if owner is not None:
        user = pwd.getpwnam(owner)
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, user.pw_uid, user.pw_gid)
    return path


@pytest.mark.ssh
@pytest.mark.timeout(240)
def test_remote_ssh_refuses_an_image_with_old_packages_before_any_job(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    reason = _userns_problem(USERS[0])
    if reason:
        pytest.skip(reason)
    bin_dir = shared_dir("hrl-standin") / "bin"
    bin_dir.mkdir(mode=0o755)
    shutil.copy2(STANDIN_DIR / "singularity", bin_dir / "singularity")
    os.chmod(bin_dir / "singularity", 0o755)
    image = _old_image(shared_dir("hrl-image") / "old", REMOTE_SITE, owner=USERS[0])
    proj = make_project(tmp_path / "proj")
    name = "env-image"
    common = [
        f"hydra.launcher.container.image={image}",
        f"hydra.launcher.container.binds=[{REMOTE_VENV},{REMOTE_SITE}:{REMOTE_SITE}:ro]",
    ]

    proc, sweep = launch(
        ssh_env,
        proj,
        name,
        "x=1,2",
        *common,
        f"hydra.launcher.container.python={IMAGE_PYTHON}",
        prepare_commands=_path_prepend(bin_dir),
    )

    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr
    host = ssh_env.server.alias(USERS[0])
    assert "pre-flight check failed" in err, err
    assert f"{host}: omegaconf in the image: {OLD_OMEGACONF} there, {HERE['omegaconf']} here" in err, err
    assert f"`{IMAGE_PYTHON} -m pip install 'omegaconf==2.3.*'`" in err  # the fix names the image's Python
    assert "none of the 2 jobs was started" in err and "Traceback" not in err
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}
    assert not ssh_env.remote_path(name).exists()  # nothing was created on the host

    # the image's Python fixed (here: a usable one), the same launch runs
    again, _ = launch(
        ssh_env,
        proj,
        name,
        "x=1,2",
        *common,
        f"hydra.launcher.container.python={ssh_env.python}",
        prepare_commands=_path_prepend(bin_dir),
    )
    assert again.returncode == 0, again.stderr
    assert [s for s, _ in outcomes(sweep).values()] == [JobState.COMPLETED] * 2


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_slurm_refuses_an_image_with_old_packages_before_anything_is_submitted(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("ch-run") is None:
        pytest.skip("the singularity stand-in needs charliecloud's ch-run (charliecloud-runtime)")
    monkeypatch.chdir(REPO_ROOT)  # the code dir, bound into the container
    venv = Path(sys.prefix)
    test_site = next((venv / "lib").glob("python3*/site-packages"))
    image = _old_image(tmp_path / "image", test_site)
    monkeypatch.setenv("PATH", f"{STANDIN_DIR}:{slurm_calls.bin_dir}:{venv / 'bin'}:/usr/bin:/bin")
    sweep = tmp_path / "sweep"
    common = [
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.poll_interval_s=0.3",
        f"hydra.launcher.container.image={image}",
        f"hydra.launcher.container.binds=[{REPO_ROOT},{venv}]",
    ]

    def task(cfg):
        return cfg.x

    with pytest.raises(ConfigError) as info:
        launch_sweep(task, [["+x=0"], ["+x=1"]], [*common, f"hydra.launcher.container.python={IMAGE_PYTHON}"])

    text = str(info.value)
    assert f"this machine: omegaconf in the image: {OLD_OMEGACONF} there, {HERE['omegaconf']} here" in text, text
    assert "none of the 2 jobs was started" in text
    assert slurm_calls.calls("sbatch") == 0

    returns = launch_sweep(task, [["+x=0"], ["+x=1"]], [*common, f"hydra.launcher.container.python={sys.executable}"])
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    assert [r.return_value for r in returns] == [0, 1]
