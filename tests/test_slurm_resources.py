"""Per-job resources (``resources_from``) and the site template (``sbatch_template``) on slurm.

The cluster tests run on the session's real single-node cluster (tests/slurm_cluster.py), whose
node declares 4 GPUs through gres (empty files stand in for the devices: there is no GPU here);
what each array asked for is read back from sacct. The refusals and dry runs need no cluster.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from launcher_core.state import StateStore
from tests.slurm_cluster import TEST_GPUS, CommandLog, SlurmCluster, launch_sweep, wait_until

pytestmark = [pytest.mark.usefixtures("hydra_restore_singletons")]

RESOURCES_FROM = (
    "+hydra.launcher.resources_from={gpus_per_node:trainer.gpus,mem_gb:trainer.mem_gb,timeout_min:trainer.minutes}"
)
SMALL = ["+model=small", "+trainer.gpus=1", "+trainer.mem_gb=0.25", "+trainer.minutes=2"]
LARGE = ["+model=large", f"+trainer.gpus={TEST_GPUS}", "+trainer.mem_gb=0.5", "+trainer.minutes=3"]


def _overrides(sweep_dir: Path, *extra: str) -> list[str]:
    return [f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.poll_interval_s=0.3", *extra]


def _task(cfg):
    """Reports its model and what Slurm gave it (the batch step's view of its allocation)."""
    import os
    import subprocess

    job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    return {"model": cfg.model, "x": cfg.x, "slurm_job": job, "scontrol": shown}


def _sacct(cluster: SlurmCluster, arrays: list[str]) -> dict[str, dict[str, str]]:
    """sacct's view of every task of ``arrays``: ReqTRES, Timelimit, State by ``<array>_<index>``."""

    def query() -> dict[str, dict[str, str]] | None:
        out = cluster.run(
            "sacct", "-X", "-n", "-P", "-o", "JobID,State,ReqTRES,Timelimit", "-j", ",".join(arrays)
        ).stdout
        rows = {}
        for line in out.splitlines():
            job, state, tres, limit = line.split("|")
            rows[job] = {"state": state.split()[0], "tres": tres, "limit": limit}
        done = rows and all(r["state"] == "COMPLETED" for r in rows.values())
        return rows if done else None

    return wait_until("sacct knows every task as completed", query, 60)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_jobs_run_in_one_array_per_resource_group_with_their_gres_mem_and_time(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    """model=small (1 GPU, 256 MB, 2 min) and model=large (4 GPUs, 512 MB, 3 min) in one sweep:
    every job gets its own resources, read from its config. 6 small jobs (MaxArraySize 5: two
    arrays) and 1 large one (its own array); array_parallelism=2 chains all three arrays with
    afterany, across the groups, as it chains the arrays of one group."""
    order = ["small", "large", "small", "small", "small", "small", "small"]
    jobs = [[*(SMALL if m == "small" else LARGE), f"+x={i}"] for i, m in enumerate(order)]
    sweep = tmp_path / "sweep"
    returns = launch_sweep(_task, jobs, _overrides(sweep, RESOURCES_FROM, "hydra.launcher.array_parallelism=2"))

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * len(jobs)
    assert [r.return_value["x"] for r in returns] == list(range(len(jobs)))
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        handles = {r.idx: r.handle for r in store.jobs()}
    arrays = sorted({h["array_job_id"] for h in handles.values()}, key=int)
    assert len(arrays) == 3
    # the large job is alone in its array; the small ones share the two others
    assert sum(h["array_job_id"] == handles[1]["array_job_id"] for h in handles.values()) == 1
    sacct = _sacct(slurm_cluster, arrays)
    expected = {
        "small": ("gres/gpu=1", "mem=256M", "00:02:00"),
        "large": (f"gres/gpu={TEST_GPUS}", "mem=512M", "00:03:00"),
    }
    for idx, model in enumerate(order):
        row = sacct[handles[idx]["slurm_job_id"]]
        gpus, mem, limit = expected[model]
        assert gpus in row["tres"].split(",") and mem in row["tres"].split(","), (idx, row)
        assert row["limit"] == limit, (idx, row)
        assert returns[idx].return_value["model"] == model
        shown = returns[idx].return_value["scontrol"]  # what the running task's allocation was
        assert re.search(rf"TimeLimit=00:0{limit[4]}:00\b", shown) and f"gres/gpu={gpus.split('=')[1]}" in shown
        assert handles[idx]["timeout_min"] == int(limit[4])
    # one test-only per group before anything was submitted, then the three arrays chained
    submitted = [line for line in slurm_calls.lines("sbatch") if "--test-only" not in line]
    calls = slurm_calls.lines("sbatch")
    tests = [line for line in calls if "--test-only" in line]
    assert len(tests) == 2 and calls.index(tests[-1]) < calls.index(submitted[0])
    assert "--dependency" not in submitted[0]
    assert [line.split()[2] for line in submitted[1:]] == [f"--dependency=afterany:{a}" for a in arrays[:2]]
    # overrides stay out of the scripts: they live in the job table only
    for script in (sweep / ".launcher" / "slurm").glob("*.sbatch"):
        assert "trainer" not in script.read_text() and "model=" not in script.read_text()


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_group_the_cluster_cannot_run_is_refused_before_any_submission(
    slurm_cluster: SlurmCluster, slurm_calls: CommandLog, tmp_path: Path
) -> None:
    """A job asking for more GPUs than the node has: Slurm's own answer to ``sbatch --test-only``
    stops the launch, naming the job and its resources; no array of the sweep was submitted."""
    sweep = tmp_path / "sweep"
    too_many = ["+model=huge", f"+trainer.gpus={TEST_GPUS * 2}", "+trainer.mem_gb=0.25", "+trainer.minutes=2"]
    jobs = [[*SMALL, "+x=0"], [*too_many, "+x=1"]]
    with pytest.raises(ConfigError) as refused:
        launch_sweep(_task, jobs, _overrides(sweep, RESOURCES_FROM))
    message = str(refused.value)
    assert "hydra.launcher.resources_from" in message and f"gpus_per_node={TEST_GPUS * 2}" in message
    assert "#1" in message and "+model=huge" in message and "None of the 2 arrays was submitted" in message
    assert [line for line in slurm_calls.lines("sbatch") if "--test-only" not in line] == []
    assert slurm_cluster.queue_empty()
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        assert {r.state for r in store.jobs()} == {JobState.PENDING}


SITE_TEMPLATE = """\
{% extends "hydra_remote_launcher.sbatch.j2" %}
{# a site's lines: a header line, and a pre-job hook before our setup #}
{% block sbatch %}{{ super() }}#SBATCH --comment=site-{{ chunk.first_job }}-gpus-{{ resources.gpus_per_node }}
{% endblock %}
{% block setup %}echo "hook: array {{ array }} of {{ sweep_id }}" > "${LAUNCHER_DIR%/*}/site_hook.txt"
{{ super() }}{% endblock %}
"""


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_site_template_adds_a_header_line_and_a_hook_and_the_jobs_run(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    template = tmp_path / "site.sbatch.j2"
    template.write_text(SITE_TEMPLATE)
    sweep = tmp_path / "sweep"
    jobs = [[*SMALL, "+x=0"], [*LARGE, "+x=1"]]
    returns = launch_sweep(_task, jobs, _overrides(sweep, RESOURCES_FROM, f"hydra.launcher.sbatch_template={template}"))

    assert [r.status for r in returns] == [JobStatus.COMPLETED] * 2
    for idx, gpus in ((0, 1), (1, TEST_GPUS)):
        # the header line reached Slurm: the running task's job record carries the comment
        assert f"Comment=site-{idx}-gpus-{gpus}" in returns[idx].return_value["scontrol"]
        # the hook ran in the batch script, before the task
        hook = (sweep / str(idx) / "site_hook.txt").read_text()
        assert hook.startswith("hook: array 0-0%1 of ") and (sweep / str(idx) / ".launcher" / "result.pkl").exists()


def _dry_run_overrides(sweep: Path, *extra: str) -> list[str]:
    return _overrides(sweep, "hydra.launcher.dry_run=true", "hydra.launcher.max_array_size=10", *extra)


def _echo(cfg):
    return cfg.x


def test_dry_run_shows_the_groups_and_the_rendered_template(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A dry run (no cluster needed: max_array_size is given) writes one script per resource group,
    rendered with the template, and says which jobs each group has and what it asks for."""
    template = tmp_path / "site.sbatch.j2"
    template.write_text(SITE_TEMPLATE)
    sweep = tmp_path / "sweep"
    jobs = [[*SMALL, "+x=0"], [*LARGE, "+x=1"], [*SMALL, "+x=2"]]
    with caplog.at_level("INFO", logger="launcher_core.slurm"):
        returns = launch_sweep(
            _echo, jobs, _dry_run_overrides(sweep, RESOURCES_FROM, f"hydra.launcher.sbatch_template={template}")
        )

    slurm_dir = sweep / ".launcher" / "slurm"
    assert sorted(p.name for p in slurm_dir.glob("*.sbatch")) == ["jobs0-2.sbatch", "jobs1-1.sbatch"]
    small, large = (slurm_dir / "jobs0-2.sbatch").read_text(), (slurm_dir / "jobs1-1.sbatch").read_text()
    assert "#SBATCH --gpus-per-node=1\n" in small and "#SBATCH --mem=256MB\n" in small and "#SBATCH --time=2\n" in small
    assert f"#SBATCH --gpus-per-node={TEST_GPUS}\n" in large and "#SBATCH --mem=512MB\n" in large
    assert "#SBATCH --array=0-1%2\n" in small and "#SBATCH --comment=site-0-gpus-1\n" in small
    assert f"#SBATCH --comment=site-1-gpus-{TEST_GPUS}\n" in large and 'echo "hook: array 0-0%1 of ' in large
    # the job table lists the groups one after the other: the small jobs are entries 0 and 1
    assert "_hrl_first=$((0 + SLURM_ARRAY_TASK_ID * 1))" in small and "_hrl_first=$((2 + " in large
    assert "resource group 1 (gpus_per_node=1 mem_gb=0.25 timeout_min=2): 2 jobs (#0, #2)" in caplog.text
    assert f"resource group 2 (gpus_per_node={TEST_GPUS} mem_gb=0.5 timeout_min=3): 1 jobs (#1)" in caplog.text
    assert "sbatch_template" in caplog.text
    assert "with gpus_per_node=1 mem_gb=0.25 timeout_min=2" in str(returns[2].return_value)


@pytest.mark.parametrize(
    "job, message",
    [
        (["+trainer.mem_gb=1", "+trainer.minutes=2"], r"job #0 \(.*\): hydra.launcher.resources_from.gpus_per_node: "
         r"trainer.gpus is not set in the job's config"),
        (["+trainer.gpus=two", "+trainer.mem_gb=1", "+trainer.minutes=2"],
         r"resources_from.gpus_per_node: trainer.gpus must be an integer, got 'two'"),
        (["+trainer.gpus=-1", "+trainer.mem_gb=1", "+trainer.minutes=2"], r"trainer.gpus must be >= 0, got -1"),
        (["+trainer.gpus=1", "+trainer.mem_gb='1G; touch /tmp/pwned'", "+trainer.minutes=2"],
         r"resources_from.mem_gb: trainer.mem_gb must be a memory size"),
        (["+trainer.gpus=1", "+trainer.mem_gb=1", "+trainer.minutes=true"],
         r"resources_from.timeout_min: trainer.minutes must be an integer, not a boolean"),
        (["+trainer={gpus:1}", "+trainer.mem_gb=1", "+trainer.minutes={a:1}"],
         r"trainer.minutes is a config node, not a value"),
    ],
)
def test_a_job_with_a_missing_or_invalid_resource_is_refused_naming_job_and_key(
    tmp_path: Path, job: list[str], message: str
) -> None:
    """Refused before anything is written for any job (checked in the first job, #0, with a good
    job #1 after it: nothing of the good one is written either)."""
    sweep = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=message):
        launch_sweep(_echo, [[*job, "+x=0"], [*SMALL, "+x=1"]], _dry_run_overrides(sweep, RESOURCES_FROM))
    assert not (sweep / ".launcher" / "slurm").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("+hydra.launcher.resources_from={nodes:trainer.nodes}", r"resources_from.nodes: not a per-job resource here"),
        ("+hydra.launcher.resources_from={mem_gb:'a b'}", r"resources_from.mem_gb must be a dotted path"),
        ("hydra.launcher.sbatch_template=/no/such/site.j2", r"sbatch_template: '/no/such/site.j2' is not a file"),
    ],
)
def test_bad_resources_from_and_template_settings_are_refused(tmp_path: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        launch_sweep(_echo, [["+x=0"]], _dry_run_overrides(tmp_path / "sweep", setting))


@pytest.mark.parametrize(
    "body, message",
    [
        ("{% block trap %}{% endblock %}", r"must keep the launcher's trap block verbatim"),
        ("{% block run %}python -m my.job\n{% endblock %}", r"must keep the launcher's run block verbatim"),
        ("{% block setup %}trap 'echo mine' USR2\n{% endblock %}", r"has its own SIGUSR2 trap"),
        ("{% block sbatch %}{{ super() }}#SBATCH --signal=B:USR2@5\n{% endblock %}", r"the launcher owns --signal"),
        ("{% block sbatch %}{% endblock %}", r"must keep the launcher's '#SBATCH --job-name=slurm_test'"),
        ("{% block setup %}{{ no_such_variable }}{% endblock %}", r"UndefinedError.*no_such_variable"),
        ("{% block setup %}{{ ''.__class__.__mro__ }}{% endblock %}", r"SecurityError"),
    ],
)
def test_a_template_that_drops_or_replaces_the_launchers_parts_is_refused(
    tmp_path: Path, body: str, message: str
) -> None:
    """Refused when the launcher's settings are checked, before any job is looked at or written."""
    template = tmp_path / "site.sbatch.j2"
    template.write_text('{% extends "hydra_remote_launcher.sbatch.j2" %}\n' + body + "\n")
    sweep = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=r"^hydra.launcher.sbatch_template \(" + re.escape(str(template)) + r"\): .*"
                       + message):
        launch_sweep(_echo, [["+x=0"]], _dry_run_overrides(sweep, f"hydra.launcher.sbatch_template={template}"))
    assert not (sweep / ".launcher" / "slurm").exists()


def test_the_documented_example_template_passes_the_checks() -> None:
    """docs/site.sbatch.j2 renders (with and without GPUs) and keeps every part of ours."""
    from launcher_core.backends.slurm.options import SlurmOptions

    example = Path(__file__).resolve().parent.parent / "docs" / "site.sbatch.j2"
    for gpus in (None, 2):
        options = SlurmOptions.from_params({"sbatch_template": str(example), "gpus_per_node": gpus})
        assert options.sbatch_template == str(example)


def test_values_that_depend_on_another_key_are_read_per_job(tmp_path: Path) -> None:
    """Jobs share values read from an earlier job only when theirs cannot differ: here each job's
    ``trainer.minutes`` is an interpolation of its own ``x`` (the same override text in every job),
    so each is read from its own config."""
    sweep = tmp_path / "sweep"
    jobs = [[f"+x={m}", "+trainer.gpus=1", "+trainer.mem_gb=1", "+trainer.minutes=${x}"] for m in (3, 5, 3)]
    returns = launch_sweep(_echo, jobs, _dry_run_overrides(sweep, RESOURCES_FROM))
    assert ["timeout_min=3" in str(r.return_value) for r in returns] == [True, False, True]
    assert "timeout_min=5" in str(returns[1].return_value)
    scripts = sorted(p.name for p in (sweep / ".launcher" / "slurm").glob("*.sbatch"))
    assert scripts == ["jobs0-2.sbatch", "jobs1-1.sbatch"]


def test_a_path_through_an_interpolation_is_not_shared_between_jobs() -> None:
    from omegaconf import OmegaConf

    from launcher_core.resources import _plain_path

    trainer = {"gpus": 2, "minutes": "${epochs}", "sub": "${other}"}
    cfg = OmegaConf.create({"trainer": trainer, "epochs": 3, "other": {}})
    assert _plain_path(cfg, "trainer.gpus") and _plain_path(cfg, "trainer.new.key")
    assert not _plain_path(cfg, "trainer.minutes") and not _plain_path(cfg, "trainer.sub.x")
