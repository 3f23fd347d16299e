"""Container wrapper on the real cluster: the exact ``singularity exec`` argv, and the job really runs
inside a container root (tests/container_standin/singularity runs it with charliecloud's ch-run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from tests.conftest import REPO_ROOT
from tests.slurm_cluster import STANDIN_DIR, CommandLog, SlurmCluster, launch_sweep, skeleton_image

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


def _ch_run_usable() -> str | None:
    """Why charliecloud cannot run containers here (after trying to install it), or None."""
    if shutil.which("ch-run") is None and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "charliecloud-runtime"],
            capture_output=True,
            timeout=600,
            check=False,
        )
    if shutil.which("ch-run") is None:
        return "charliecloud's ch-run is needed by the singularity stand-in (apt-get install charliecloud-runtime)"
    return None


@pytest.mark.timeout(120)
def test_job_runs_inside_the_container_with_the_exact_argv(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = _ch_run_usable()
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(REPO_ROOT)  # the code dir, bound into the container
    image = skeleton_image(tmp_path / "image")
    argv_log = tmp_path / "standin.jsonl"
    monkeypatch.setenv("PATH", f"{STANDIN_DIR}:{slurm_calls.bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("CONTAINER_STANDIN_LOG", str(argv_log))

    def task(cfg):
        import os

        with open("/etc/hrl-container-marker") as f:  # exists only in the image
            marker = f.read().strip()
        return {"x": cfg.x, "marker": marker, "ch_running": os.environ.get("CH_RUNNING"), "env": os.environ["HRL_A"]}

    sweep = tmp_path / "sweep"
    venv = Path(sys.prefix)
    overrides = [
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.poll_interval_s=0.3",
        f"hydra.launcher.container.image={image}",
        f"hydra.launcher.container.python={sys.executable}",
        f"hydra.launcher.container.binds=[{REPO_ROOT},{venv}]",
        "+hydra.launcher.container.env={HRL_A: 'one,two'}",
    ]
    returns = launch_sweep(task, [["+x=0"], ["+x=1"]], overrides)

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    inside = {"marker": "inside the test image", "ch_running": "Weird Al Yankovic", "env": "one,two"}
    assert [r.return_value for r in returns] == [{"x": num, **inside} for num in range(2)]
    sweep_payload = str(next((sweep / ".launcher" / "slurm").glob("sweep-*.pkl")))
    table = str(sweep / ".launcher" / "slurm" / "jobs0-1.json")  # the job table of the two jobs
    logged = [json.loads(line) for line in argv_log.read_text().splitlines()]
    # the pre-flight checked the jobs' Python inside the image first (python -c PROBE)
    probes = [argv for argv in logged if any("HRLPROBE" in a for a in argv)]
    assert probes and all(str(image) in argv for argv in probes)
    calls = [argv for argv in logged if argv not in probes]
    assert sorted(calls, key=lambda argv: argv[-1]) == [
        # code dir and sweep dir are bound first (parents first), then the configured binds
        [
            "singularity",
            "exec",
            "--bind",
            str(REPO_ROOT),
            "--bind",
            str(sweep),
            "--bind",
            str(venv),
            "--env",
            '"HRL_A=one,two"',
            str(image),
            sys.executable,
            "-m",
            "launcher_core.runtime.worker",
            sweep_payload,
            table,
            str(first),
        ]
        for first in range(2)  # each array task's first entry in the table
    ]
