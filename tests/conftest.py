"""Fixtures shared by every test module.

Backend-specific fixtures (the loopback sshd, the Slurm cluster, the moto server) live in their
own modules (tests/sshd.py, tests/slurm_cluster.py, tests/ec2_fixtures.py), registered here as
plugins. Test modules must not import the fixture functions: pytest would then make each
importing module a fixture of its own, and a "session" cluster would start once per module.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
_HAS_AWS_TOOLS = all(importlib.util.find_spec(name) for name in ("boto3", "moto"))
# without boto3 and moto only the ec2 tests skip (their modules importorskip them)
pytest_plugins = [
    "tests.warning_policy",
    "pytester",
    "tests.sshd",
    "tests.slurm_cluster",
    *(["tests.ec2_fixtures"] if _HAS_AWS_TOOLS else []),
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_launcher_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the user-level sweep index of the test run away from the real home dir."""
    home = tmp_path_factory.mktemp("launcher-home")
    os.environ["HYDRA_REMOTE_LAUNCHER_HOME"] = str(home)


@pytest.fixture(autouse=True)
def _restore_hydra_singletons() -> object:
    """Every test starts from the same Hydra singletons (config store, plugins, version base):
    a test that initializes Hydra in-process must not change what later tests see."""
    from hydra.core.singleton import Singleton

    state = copy.deepcopy(Singleton.get_state())
    yield
    Singleton.set_state(state)


def run_app(
    script: Path, args: list[str], cwd: Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a Hydra app in a subprocess (as a user would) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
