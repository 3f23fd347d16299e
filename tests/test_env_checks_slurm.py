"""slurm: the jobs' set-up lines where and as the batch script runs them (issue 28).

On the single-node test cluster with Debian's Lmod and a site modulefile written for the test
(``/etc/lmod/modules``, on Lmod's default MODULEPATH): a module in ``modules`` is loaded in every
job (the batch script is no login shell: it reads the site's module init itself); an unknown module
is refused by the pre-flight, which runs the lines the same way, before anything is submitted; a
``setup`` line that fails ends the job before its task starts, with the line and its message as
the job's reason in the state store, ``launcher-core status``/``results``, sacct and the
end-of-sweep table.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core import cli
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.slurm_cluster import LMOD_SITE_DIR, CommandLog, SlurmCluster, ensure_lmod, launch_sweep, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("hydra_restore_singletons")]


@pytest.fixture(name="site_module")
def site_module_fixture() -> Iterator[tuple[str, str]]:
    """(name, value): a site modulefile that sets ``HRL_SITE_MODULE=value``, removed afterwards."""
    reason = ensure_lmod()
    if reason:
        pytest.skip(reason)
    token = secrets.token_hex(4)
    name, value = f"hrl-site-{token}", f"loaded-{token}"
    folder = LMOD_SITE_DIR / name
    folder.mkdir(parents=True)
    (folder / "1.0.lua").write_text(f'setenv("HRL_SITE_MODULE", "{value}")\n')
    try:
        yield name, value
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _overrides(sweep: Path, *extra: str) -> list[str]:
    return [f"hydra.sweep.dir={sweep}", "hydra.launcher.poll_interval_s=0.3", "hydra.launcher.timeout_min=5", *extra]


def _rows(sweep: Path) -> dict[int, tuple[JobState, str | None, dict]]:
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        return {r.idx: (r.outcome or r.state, r.exit_reason, r.handle or {}) for r in store.jobs()}


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    assert code in (0, 1), out.err
    return out.out + out.err


@pytest.mark.timeout(180)
def test_a_site_module_is_loaded_in_every_job(
    slurm_cluster: SlurmCluster, site_module: tuple[str, str], tmp_path: Path
) -> None:
    name, value = site_module

    def task(cfg):
        import os

        return os.environ.get("HRL_SITE_MODULE")

    sweep = tmp_path / "sweep"
    returns = launch_sweep(task, [["+x=0"], ["+x=1"]], _overrides(sweep, f"hydra.launcher.modules=[{name}]"))

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    assert [r.return_value for r in returns] == [value, value]


@pytest.mark.timeout(180)
def test_an_unknown_module_is_refused_before_anything_is_submitted(
    slurm_cluster: SlurmCluster, site_module: tuple[str, str], slurm_calls: CommandLog, tmp_path: Path
) -> None:
    missing = f"nosuchmodule-{secrets.token_hex(3)}"
    sweep = tmp_path / "sweep"
    overrides = _overrides(sweep, f"hydra.launcher.modules=[{site_module[0]},{missing}]")

    with pytest.raises(ConfigError) as info:
        launch_sweep(lambda cfg: None, [["+x=0"], ["+x=1"]], overrides)

    text = str(info.value)
    assert f"hydra.launcher.modules[1] `module load {missing}` failed (exit 1)" in text, text
    assert "The following module(s) are unknown" in text and missing in text  # Lmod's own message
    assert "fix: fix hydra.launcher.modules[1] (`module avail` lists the modules there)" in text
    assert "none of the 2 jobs was started" in text
    assert slurm_calls.calls("sbatch") == 0
    assert {state for state, _r, _h in _rows(sweep).values()} == {JobState.PENDING}


@pytest.mark.timeout(180)
def test_a_failing_setup_line_fails_the_job_before_its_task_with_the_line_as_reason(
    slurm_cluster: SlurmCluster,
    site_module: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran = tmp_path / "task-ran"
    after = tmp_path / "after-the-failing-line"
    line = "echo 'license server unreachable' >&2; exit_code=3; (exit $exit_code)"
    setup = json.dumps(["export FROM_SETUP=1", line, f"touch {after}"])

    def task(cfg):
        from pathlib import Path

        Path(cfg.ran).touch()
        return "ran"

    sweep = tmp_path / "sweep"
    overrides = _overrides(sweep, f"hydra.launcher.modules=[{site_module[0]}]", f"hydra.launcher.setup={setup}")
    returns = launch_sweep(task, [[f"+ran={ran}", "+x=0"], [f"+ran={ran}", "+x=1"]], overrides)

    reason = f"set-up failed before the task started: hydra.launcher.setup[1] `{line}` failed (exit 3): "
    reason += "license server unreachable"
    assert [r.status for r in returns] == [JobStatus.FAILED] * 2
    with pytest.raises(Exception, match=r"set-up failed before the task started: hydra\.launcher\.setup\[1\]"):
        returns[0].return_value  # noqa: B018 - raises the job's error
    assert not ran.exists() and not after.exists()  # the script stopped at the line, the task never started
    rows = _rows(sweep)
    assert [(rows[n][0], rows[n][1]) for n in range(2)] == [(JobState.FAILED, reason)] * 2
    # the end-of-sweep table (its reason column wraps)
    table = capsys.readouterr().err
    assert "set-up failed before the task started:" in table and "hydra.launcher.setup[1] `echo" in table, table
    # sacct: FAILED with the batch script's exit code 97
    job_id = rows[0][2]["slurm_job_id"]
    def sacct() -> str:
        return slurm_cluster.run("sacct", "-X", "-n", "-P", "-o", "State,ExitCode", "-j", job_id).stdout.strip()

    assert wait_until("sacct to know the job", sacct, 30) == "FAILED|97:0"  # accounting may lag a little
    # status and results show the line and its message
    status = _cli(capsys, "status", str(sweep))
    assert "setup[1]" in status and "license server unreachable" in status, status
    results = _cli(capsys, "results", str(sweep), "--format", "json")
    assert {row["reason"] for row in json.loads(results)} == {reason}
    log = (sweep / "0" / ".launcher" / "stderr.log").read_text()
    assert f"[hydra-remote-launcher] set-up failed, the task was not started: hydra.launcher.setup[1] `{line}`" in log


@pytest.mark.timeout(180)
def test_cluster_test_deep_runs_the_set_up_on_a_compute_node(
    slurm_cluster: SlurmCluster,
    site_module: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--deep`` runs modules and setup lines in a tiny job as its batch script would: a line
    that passes on the submitting machine but fails in a job is a failure of the compute node."""
    import sys

    from tests.test_clusters import cli_main_with

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "config-home"
    in_a_job_only = '[ -z "$SLURM_JOB_ID" ] || { echo "no scratch on this node" >&2; false; }'
    settings = [
        f"partition={slurm_cluster.partition}",
        f"python={sys.executable}",
        "env_vars={}",
        f"modules=[{site_module[0]}]",
        f"setup_commands={json.dumps([in_a_job_only])}",
    ]
    assert cli_main_with(home, ["cluster", "add", "deepslurm", "--from", "slurm_cpu", *settings]) == 0
    capsys.readouterr()
    assert cli_main_with(home, ["cluster", "test", "deepslurm"]) == 0  # passes here, the module loads
    assert cli_main_with(home, ["cluster", "test", "deepslurm", "--deep"]) == 1
    table = " ".join(capsys.readouterr().out.split())
    assert "a compute node" in table and "hydra.launcher.setup_commands[0]" in table
    assert "no scratch on this node" in table
