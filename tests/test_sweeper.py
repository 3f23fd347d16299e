"""The paired sweeper: exact job lists, errors before launch, dry runs, any launcher."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT, run_app

GRID_APP = REPO_ROOT / "tests" / "apps" / "grid_app.py"


@pytest.mark.parametrize("launcher_name, overrides", [("local_pool", ["hydra/sweeper=paired"])])
class TestPairedSweeperWithLocalPool(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("basic", ["hydra/sweeper=paired"])])
class TestPairedSweeperWithBasicLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [("local_pool", ["hydra/sweeper=paired", "hydra.sweeper.max_batch_size=2"])],
)
class TestPairedSweeperBatches(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/sweeper=paired", "hydra/launcher=local_pool"])]
)
class TestPairedSweeperIntegration(IntegrationTestSuite):
    pass


def _dry_run(tmp_path: Path, *args: str, config_name: str | None = None) -> list[list[str]]:
    extra = [f"--config-name={config_name}"] if config_name else []
    proc = run_app(
        GRID_APP,
        [
            *extra,
            "-m",
            "hydra/sweeper=paired",
            "hydra.sweeper.dry_run=true",
            f"hydra.sweep.dir={tmp_path / 's'}",
            *args,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "s").exists(), "a dry run must not create the sweep dir"
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"\s+#\d+ : ", ln)]
    header = re.search(r"Dry run: (\d+) jobs would be launched", proc.stdout)
    assert header and int(header.group(1)) == len(lines)
    return [ln.split(" : ", 1)[1].split(" ") for ln in lines]


def test_grid_crossed_with_two_paired_groups(tmp_path: Path) -> None:
    jobs = _dry_run(tmp_path, "a=1,2", "hydra.sweeper.paired=[{m:[x,y],n:[p,q]},[b,c]]", "b=10,20", "c=30,40")
    expected = [
        [f"a={a}", f"m={m}", f"n={n}", f"b={b}", f"c={c}"]
        for a, (m, n), (b, c) in itertools.product([1, 2], [("x", "p"), ("y", "q")], [(10, 30), (20, 40)])
    ]
    assert jobs == expected


def test_paired_groups_from_yaml_with_range_and_config_groups(tmp_path: Path) -> None:
    jobs = _dry_run(tmp_path, "a=1,2,3", config_name="yaml_paired")
    expected = [
        [f"a={a}", f"m={m}", f"n={n}", f"b={b}", f"model={model}"]
        for a, (m, n), (b, model) in itertools.product([1, 2, 3], [("x", "p"), ("y", "q")], [(10, "tf"), (11, "mlp")])
    ]
    assert jobs == expected


def test_plain_grid_matches_basic_sweeper_order(tmp_path: Path) -> None:
    jobs = _dry_run(tmp_path, "a=1,2", "b=range(3)", "model=glob(*)")
    expected = [
        [f"a={a}", f"b={b}", f"model={m}"] for a, b, m in itertools.product([1, 2], [0, 1, 2], ["cnn", "mlp", "tf"])
    ]
    assert jobs == expected


def test_values_with_commas_and_quotes_survive_pairing(tmp_path: Path) -> None:
    jobs = _dry_run(tmp_path, "hydra.sweeper.paired=[[m,n]]", "m='a,b',c", 'n="it\'s",plain')
    assert jobs == [["m='a,b'", 'n="it\'s"'], ["m=c", "n=plain"]]


def test_paired_sweep_runs_with_basic_launcher(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "out"
    proc = run_app(
        GRID_APP,
        [
            "-m",
            "hydra/sweeper=paired",
            "hydra/launcher=basic",
            "hydra.sweeper.paired=[[m,model]]",
            "m=x,y",
            "model=tf,mlp",
            "a=1,2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    got = [list(OmegaConf.load(sweep_dir / str(i) / ".hydra" / "overrides.yaml")) for i in range(4)]
    assert got == [
        ["a=1", "m=x", "model=tf"],
        ["a=1", "m=y", "model=mlp"],
        ["a=2", "m=x", "model=tf"],
        ["a=2", "m=y", "model=mlp"],
    ]
    configs = [OmegaConf.load(sweep_dir / str(i) / ".hydra" / "config.yaml") for i in range(4)]
    assert [(c.m, c.model.name) for c in configs] == [("x", "tf"), ("y", "mlp"), ("x", "tf"), ("y", "mlp")]
    assert not (sweep_dir / "4").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["hydra.sweeper.paired=[{m:[x,y],n:[p,q,r]}]"],
            "paired group 1 has keys with different numbers of values (m has 2, n has 3)",
        ),
        (["hydra.sweeper.paired=[[m,n]]", "m=x,y", "n=p"], "paired group 1 has keys with different numbers of values"),
        (["hydra.sweeper.paired=[{m:[x,y]},{m:[z,w],n:[p,q]}]"], "key 'm' is in paired groups 1 and 2"),
        (["hydra.sweeper.paired=[[m,n],[n,a]]", "m=1,2", "n=3,4", "a=5,6"], "key 'n' is in paired groups 1 and 2"),
        (["hydra.sweeper.paired=[{m:[x,y],n:[p,q]}]", "m=z,w"], "key 'm' is both in paired group 1 and an ordinary"),
        (["hydra.sweeper.paired=[[m,n]]", "m=1,2"], "paired group 1 names 'n' but no override gives its values"),
        (["hydra.sweeper.paired=[{}]"], "paired group 1 is empty"),
        (["hydra.sweeper.paired=[{m:[]}]"], "paired group 1 has no values"),
        (["a=interval(0,1)"], "cannot expand a INTERVAL_SWEEP sweep"),
        (["hydra.sweeper.paired=[{m:7}]"], "values of 'm' must be a list or a sweep string"),
    ],
)
def test_bad_paired_sweeps_fail_before_launch(tmp_path: Path, args: list[str], message: str) -> None:
    sweep_dir = tmp_path / "s"
    proc = run_app(
        GRID_APP,
        ["-m", "hydra/sweeper=paired", "hydra/launcher=local_pool", f"hydra.sweep.dir={sweep_dir}", *args],
        tmp_path,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not sweep_dir.exists(), "nothing may be launched (or even created) for a bad sweep"


def test_max_batch_size_splits_paired_jobs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "out"
    proc = run_app(
        GRID_APP,
        [
            "-m",
            "hydra/sweeper=paired",
            "hydra/launcher=local_pool",
            "hydra.sweeper.max_batch_size=3",
            "hydra.sweeper.paired=[[m,n]]",
            "m=x,y",
            "n=p,q",
            "a=1,2,3",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("local_pool is launching 3 jobs") == 2
    got = [list(OmegaConf.load(sweep_dir / str(i) / ".hydra" / "overrides.yaml")) for i in range(6)]
    assert got == [
        [f"a={a}", f"m={m}", f"n={n}"] for a, (m, n) in itertools.product([1, 2, 3], [("x", "p"), ("y", "q")])
    ]


def _jobs_file(tmp_path: Path, jobs: list) -> Path:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs))
    return path


def test_jobs_file_jobs_keep_their_numbers_and_share_one_composition(tmp_path: Path) -> None:
    """A jobs file's numbered jobs run under their numbers (dir, hydra.job.num, state row), with
    the command line's overrides first; the number is not composed, so value-only jobs share one
    full composition however many there are."""
    from launcher_core.state import StateStore

    jobs = _jobs_file(tmp_path, [{"num": 7, "overrides": ["a=1", "m=x"]}, {"num": 3, "overrides": ["a=2"]}, ["a=3"]])
    sweep_dir = tmp_path / "out"
    proc = run_app(
        GRID_APP,
        [
            "-m",
            "hydra/sweeper=paired",
            "hydra/launcher=local_pool",
            f"hydra.sweeper.jobs_file={jobs}",
            "b=9",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.verbose=launcher_core",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "composed 3 job configs with 1 full compositions" in proc.stdout
    got = {n: list(OmegaConf.load(sweep_dir / str(n) / ".hydra" / "overrides.yaml")) for n in (7, 3, 2)}
    assert got == {7: ["b=9", "a=1", "m=x"], 3: ["b=9", "a=2"], 2: ["b=9", "a=3"]}
    assert OmegaConf.load(sweep_dir / "7" / ".hydra" / "hydra.yaml").hydra.job.num == 7
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        assert sorted((r.idx, r.output_dir.name) for r in store.jobs()) == [(2, "2"), (3, "3"), (7, "7")]


def test_jobs_file_dry_run_prints_the_numbers(tmp_path: Path) -> None:
    jobs = _jobs_file(tmp_path, [{"num": 4, "overrides": ["a=1"]}, {"num": 1, "overrides": ["a=2", "m=y"]}])
    assert _dry_run(tmp_path, f"hydra.sweeper.jobs_file={jobs}", "b=5") == [["b=5", "a=1"], ["b=5", "a=2", "m=y"]]
    args = ["-m", "hydra/sweeper=paired", "hydra.sweeper.dry_run=true", f"hydra.sweeper.jobs_file={jobs}"]
    proc = run_app(GRID_APP, args, tmp_path)
    assert "  #4 : a=1\n  #1 : a=2 m=y" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    "jobs, args, message",
    [
        ([["a=1"]], ["b=1,2"], "hydra.sweeper.jobs_file lists every job of the sweep: remove the sweep overrides"),
        ([["a=1"]], ["hydra.sweeper.paired=[[m,n]]", "m=1", "n=2"], "remove the hydra.sweeper.paired"),
        ([{"num": 1, "overrides": ["a=1"]}, ["a=2"]], [], "jobs 0 and 1 are both job #1"),
        ([{"num": -1, "overrides": ["a=1"]}], [], "job 0 has num -1, not an int >= 0"),
        ([{"overrides": "a=1"}], [], "job 0 must be a list of override strings"),
        ([], [], "must hold a non-empty JSON list of jobs"),
        ([{"num": 5, "overrides": ["a=1"]}], ["hydra/launcher=basic"], "job 0 is numbered 5; only this package's"),
    ],
)
def test_bad_jobs_files_fail_before_launch(tmp_path: Path, jobs: list, args: list[str], message: str) -> None:
    sweep_dir = tmp_path / "s"
    launcher = [] if any(a.startswith("hydra/launcher=") for a in args) else ["hydra/launcher=local_pool"]
    proc = run_app(
        GRID_APP,
        [
            "-m",
            "hydra/sweeper=paired",
            *launcher,
            f"hydra.sweeper.jobs_file={_jobs_file(tmp_path, jobs)}",
            f"hydra.sweep.dir={sweep_dir}",
            *args,
        ],
        tmp_path,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert not sweep_dir.exists(), "nothing may be launched (or even created) for a bad jobs file"
