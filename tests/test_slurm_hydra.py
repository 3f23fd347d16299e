"""Hydra's own launcher conformance suites against ``hydra/launcher=slurm`` on the real test cluster."""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster"), pytest.mark.timeout(180)]

FAST_POLL = "hydra.launcher.poll_interval_s=0.3"


@pytest.mark.parametrize("launcher_name, overrides", [("slurm", [FAST_POLL])])
class TestSlurmLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=slurm", FAST_POLL])])
class TestSlurmLauncherIntegration(IntegrationTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("slurm", ["hydra.sweeper.max_batch_size=2", FAST_POLL])])
class TestSlurmBatchedSweeper(BatchedSweeperTestSuite):
    pass
