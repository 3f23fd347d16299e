"""Pre-flight of slurm against the real single-node cluster (tests/slurm_cluster.py): a bad
partition, a max_array_size above the cluster's and an unknown QoS are refused before any sbatch
(the logged Slurm commands show none, the queue is empty, the state store keeps the jobs
pending); ``launcher-core cluster test`` prints its table, with ``--deep`` also for a compute node."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.slurm_cluster import TEST_MAX_ARRAY_SIZE, CommandLog, SlurmCluster, launch_sweep
from tests.test_clusters import cli_main_with

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


def _refused(cluster: SlurmCluster, calls: CommandLog, sweep: Path, *settings: str) -> str:
    def task(cfg):
        return cfg.x

    overrides = [f"hydra.sweep.dir={sweep}", "hydra.launcher.poll_interval_s=0.3", *settings]
    with pytest.raises(ConfigError) as info:
        launch_sweep(task, [["+x=1"], ["+x=2"]], overrides)
    assert calls.calls("sbatch") == 0 and cluster.queue_empty()
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        assert {row.state for row in store.jobs()} == {JobState.PENDING}
    message = str(info.value)
    assert "pre-flight check failed" in message and "none of the 2 jobs was started" in message
    return message


@pytest.mark.timeout(120)
def test_a_missing_partition_is_refused(slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path) -> None:
    message = _refused(slurm_cluster, slurm_calls, tmp_path / "sweep", "hydra.launcher.partition=nope")
    part = slurm_cluster.partition
    assert f"this machine: partition: hydra.launcher.partition: 'nope' does not exist (sinfo lists: {part})" in message
    assert f"fix: set hydra.launcher.partition to one of: {part}" in message


@pytest.mark.timeout(120)
def test_an_array_size_above_the_clusters_and_an_unknown_qos_are_refused(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    message = _refused(
        slurm_cluster,
        slurm_calls,
        tmp_path / "sweep",
        f"hydra.launcher.max_array_size={TEST_MAX_ARRAY_SIZE + 1}",
        "hydra.launcher.qos=nope",
    )
    assert (
        f"hydra.launcher.max_array_size={TEST_MAX_ARRAY_SIZE + 1} is above the cluster's "
        f"MaxArraySize={TEST_MAX_ARRAY_SIZE}" in message
    )
    assert "hydra.launcher.qos: 'nope' does not exist (sacctmgr lists: normal)" in message


@pytest.mark.timeout(180)
def test_cluster_test_prints_the_table_and_deep_checks_a_compute_node(
    slurm_cluster: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "config-home"
    settings = [f"partition={slurm_cluster.partition}", "setup_commands=[]", f"python={sys.executable}", "env_vars={}"]
    assert cli_main_with(home, ["cluster", "add", "testslurm", "--from", "slurm_cpu", *settings]) == 0
    capsys.readouterr()
    assert cli_main_with(home, ["cluster", "test", "testslurm", "--deep"]) == 0
    table = capsys.readouterr().out
    for needle in (
        "slurm commands",
        f"{slurm_cluster.partition} is up",
        f"MaxArraySize={TEST_MAX_ARRAY_SIZE}",
        "sacct works",
        "a compute node",
        "cloudpickle",
    ):
        assert needle in table, table
    assert "fail" not in table
    # the same preset on a partition that does not exist: the table says so, the exit code too
    assert cli_main_with(home, ["cluster", "test", "testslurm", "partition=nope"]) == 1
    out = capsys.readouterr().out
    assert "'nope' does not exist" in out and "fail" in out
