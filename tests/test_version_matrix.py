"""What must match between the launching side and the job side, tested rather than assumed (issue 28).

The rule (docs, "What must match"): the job side runs Python >= 3.10 with hydra-core and omegaconf of
the launching side's major.minor and any cloudpickle >= 2.2; only a task that has to travel pickled
by value also needs the launching side's Python minor version and cloudpickle major.minor there.

Each test launches a real sweep across environments built for it (``tests/venvs.py``): the oldest
versions our pyproject allows on one side and the newest on the other, both ways; a launching
Python of another minor version (pyenv's 3.12) than the job's (Debian's 3.11); Hydra plugins
(hydra-optuna-sweeper, hydra-colorlog) installed on the launching side only. remote_ssh runs on
the loopback sshd, slurm on the test cluster, ec2 on moto with the test agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher_core.runtime.worker import load_job_return
from tests.conftest import REPO_ROOT
from tests.slurm_cluster import SlurmCluster
from tests.sshd import SSHTestEnv
from tests.venvs import DEBIAN_PYTHON, NEWEST, OLDEST, ensure_venv, versions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LAUNCHING_PLUGINS = ("hydra-optuna-sweeper", "hydra-colorlog")
OUR_DEPENDENCIES = ("rich>=13",)
PYENV_312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")
N_JOBS = 3

APP = '''\
"""Returns what it ran with; its own config class travels with the templates."""
import sys
from dataclasses import dataclass

import hydra
import omegaconf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig


@dataclass
class Config:
    x: float = 0.0
    name: str = "job"


ConfigStore.instance().store(name="config", node=Config)


@hydra.main(version_base="1.3", config_path=None, config_name="config")
def main(cfg: Config) -> dict:
    return {
        "x": cfg.x,
        "x_type": type(cfg.x).__name__,
        "num": HydraConfig.get().job.num,
        "python": "%d.%d" % sys.version_info[:2],
        "omegaconf": omegaconf.__version__,
    }


if __name__ == "__main__":
    main()
'''
BY_VALUE_APP = """\
import hydra

task = lambda cfg: {"x": cfg.x}  # noqa: E731  (no name the job side could import it by)
main = hydra.main(version_base="1.3", config_path=None, config_name=None)(task)

if __name__ == "__main__":
    main()
"""


def _project(root: Path, app: str = APP) -> Path:
    root.mkdir(parents=True)
    (root / "app.py").write_text(app)
    return root


def _launch(
    python: Path | str, proj: Path, args: list[str], sweep: str = "x=1,2,2"
) -> subprocess.CompletedProcess[str]:
    """Run the app's sweep with ``python`` (launcher_core and our plugin from this checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    argv = [str(python), str(proj / "app.py"), "-m", *args, sweep]
    return subprocess.run(argv, cwd=proj, capture_output=True, text=True, timeout=600, env=env)


def _check_completed(proc: subprocess.CompletedProcess[str], sweep_dir: Path, job_side: dict[str, str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n, x in enumerate([1, 2, 2]):
        ret = load_job_return(sweep_dir / str(n) / ".launcher" / "result.pkl")
        # typed as the Config dataclass says (1 -> 1.0), exactly as on the launching side
        assert ret.return_value == {
            "x": float(x),
            "x_type": "float",
            "num": n,
            "python": job_side["python"],
            "omegaconf": job_side["omegaconf"],
        }


@pytest.fixture(scope="module", name="oldest")
def oldest_fixture() -> Path:
    return ensure_venv("oldest", DEBIAN_PYTHON, OLDEST)


def _ssh_args(env: SSHTestEnv, name: str, python: Path | str, sweep_dir: Path) -> list[str]:
    overrides = [o for o in env.overrides(name, max_parallel=2) if not o.startswith("hydra.launcher.python=")]
    return ["hydra/launcher=remote_ssh", *overrides, f"hydra.launcher.python={python}", f"hydra.sweep.dir={sweep_dir}"]


@pytest.mark.ssh
def test_remote_ssh_jobs_on_the_oldest_versions_from_a_launcher_with_plugins_they_lack(
    oldest: Path, ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    """This test process's environment (newest versions, Optuna's and colorlog's plugins
    installed) launches; the jobs run on hydra-core 1.3.0, omegaconf 2.3.0, cloudpickle 2.2.0."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    pytest.importorskip("hydra_plugins.hydra_colorlog")
    job_side = versions(oldest)
    assert (job_side["hydra-core"], job_side["cloudpickle"]) == ("1.3.0", "2.2.0")
    proj = _project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    proc = _launch(sys.executable, proj, _ssh_args(ssh_env, "matrix-oldest-jobs", oldest, sweep_dir))
    _check_completed(proc, sweep_dir, job_side)
    assert "cloudpickle 2.2.0" in proc.stdout + proc.stderr  # the pre-flight saw them and let them pass


@pytest.mark.ssh
def test_remote_ssh_jobs_on_the_newest_versions_from_a_launcher_on_the_oldest(
    ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    launcher = ensure_venv("oldest-launcher", DEBIAN_PYTHON, (*OLDEST, *OUR_DEPENDENCIES))
    job_side = versions(Path(ssh_env.python))
    assert versions(launcher)["cloudpickle"] == "2.2.0" != job_side["cloudpickle"]
    proj = _project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    proc = _launch(launcher, proj, _ssh_args(ssh_env, "matrix-oldest-launcher", ssh_env.python, sweep_dir))
    _check_completed(proc, sweep_dir, job_side)


@pytest.mark.ssh
def test_remote_ssh_jobs_on_python_3_11_from_a_launcher_on_3_12(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    if not PYENV_312.exists():
        pytest.skip(f"no Python 3.12 at {PYENV_312}")
    launcher = ensure_venv("py312-launcher", str(PYENV_312), (*NEWEST, *OUR_DEPENDENCIES, *LAUNCHING_PLUGINS))
    job_side = versions(Path(ssh_env.python))
    assert versions(launcher)["python"] == "3.12" != job_side["python"]
    proj = _project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    proc = _launch(launcher, proj, _ssh_args(ssh_env, "matrix-py312", ssh_env.python, sweep_dir))
    _check_completed(proc, sweep_dir, job_side)


@pytest.mark.ssh
def test_a_task_that_travels_by_value_is_refused_where_cloudpickle_differs(
    oldest: Path, ssh_env: SSHTestEnv, tmp_path: Path
) -> None:
    proj = _project(tmp_path / "proj", BY_VALUE_APP)
    sweep_dir = tmp_path / "sweep"
    proc = _launch(sys.executable, proj, _ssh_args(ssh_env, "matrix-by-value", oldest, sweep_dir), "+x=1,2")
    assert proc.returncode != 0
    here = versions(Path(sys.executable))["cloudpickle"]
    assert f"cloudpickle: 2.2.0 there, {here} here" in proc.stderr, proc.stderr[-3000:]
    assert "not defined at the top level" in proc.stderr  # why it travels by value
    assert "none of the 2 jobs was started" in proc.stderr
    assert not any(sweep_dir.glob("*/.launcher/result.pkl"))


@pytest.mark.slurm
def test_slurm_jobs_on_the_oldest_versions(oldest: Path, slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_side = versions(oldest)
    proj = _project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    args = [
        "hydra/launcher=slurm",
        f"hydra.launcher.python={oldest}",
        "hydra.launcher.poll_interval_s=0.3",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = _launch(sys.executable, proj, args)
    _check_completed(proc, sweep_dir, job_side)


@pytest.mark.ec2
def test_ec2_jobs_on_the_oldest_versions(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from tests.test_ec2_hydra import launcher_overrides

    agent_python = ensure_venv("oldest-agent", DEBIAN_PYTHON, (*OLDEST, "boto3"))  # the agent itself uses boto3
    job_side = versions(agent_python)
    aws = request.getfixturevalue("aws")
    proj = _project(tmp_path / "proj")
    sweep_dir = tmp_path / "sweep"
    settings = aws.launcher_settings(jobs_per_instance=3, code_dir=str(proj), python=str(agent_python))
    proc = _launch(
        sys.executable, proj, ["hydra/launcher=ec2", *launcher_overrides(settings), f"hydra.sweep.dir={sweep_dir}"]
    )
    _check_completed(proc, sweep_dir, job_side)
    assert json.loads(json.dumps(job_side))["omegaconf"] == "2.3.0"
