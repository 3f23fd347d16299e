"""Hydra's own launcher conformance suites, run against remote_ssh and the loopback sshd.

The jobs really run as the test user through sshd, from the shipped payloads, and their
outputs are pulled back; Hydra's assertions then look at the returned JobReturns and the
local sweep dirs.

IntegrationTestSuite runs a generated app whose task writes what it observed into a file
next to the app. Two hooks adapt it to a remote launcher, as Hydra's ray-on-AWS tests do:
the app dir is world-writable (the job runs as another user), and the app's remote working
dir is where this launcher mirrors relative sweep dirs (``<remote_dir>/runs``). The job's
``hydra.runtime.cwd`` stays the launching machine's cwd, as Hydra's remote launchers keep it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from tests.sshd import SSHTestEnv, shared_dir

pytestmark = pytest.mark.ssh

_CURRENT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def empty_code_dir() -> Iterator[Path]:
    """The suites' tasks come with their payloads: ship an empty project, not the repo."""
    path = shared_dir("hrl-empty-code")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def launcher_name() -> str:
    return "remote_ssh"


@pytest.fixture
def overrides(ssh_env: SSHTestEnv, empty_code_dir: Path) -> list[str]:
    return ssh_env.overrides("suites", code_dir=empty_code_dir, max_parallel=2)


@pytest.fixture
def task_launcher_cfg() -> dict[str, object]:
    return {}


@pytest.fixture
def extra_flags(ssh_env: SSHTestEnv, tmpdir: Path) -> Iterator[list[str]]:
    """A remote_dir per test, so each test's relative sweep dir is mirrored afresh."""
    name = f"it-{Path(str(tmpdir)).name}"
    _CURRENT["remote_runs"] = ssh_env.remote_path(name) / "runs"
    _CURRENT["scratch"] = shared_dir("hrl-it")
    yield ["-m", "hydra/launcher=remote_ssh", *ssh_env.overrides(name)]
    shutil.rmtree(_CURRENT.pop("scratch"), ignore_errors=True)


class TestRemoteSSHLauncher(LauncherTestSuite):
    pass


class TestRemoteSSHBatchedSweeper(BatchedSweeperTestSuite):
    @pytest.fixture
    def overrides(self, ssh_env: SSHTestEnv, empty_code_dir: Path) -> list[str]:
        return [*ssh_env.overrides("batched", code_dir=empty_code_dir), "hydra.sweeper.max_batch_size=2"]


class TestRemoteSSHIntegration(IntegrationTestSuite):
    def get_test_app_working_dir(self) -> Path | None:
        return _CURRENT["remote_runs"]

    def get_test_scratch_dir(self, tmpdir: Path) -> Path:
        if Path(str(tmpdir)) == _CURRENT["remote_runs"]:
            return Path(str(tmpdir))
        scratch = _CURRENT["scratch"]
        os.chmod(scratch, 0o777)
        return scratch
