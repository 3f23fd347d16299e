"""The fast sweep composer gives exactly the config Hydra's own load_sweep_config gives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hydra._internal.callbacks import Callbacks
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf

from launcher_core.runtime.compose import SweepComposer, compose_job, job_output_dir
from tests.conftest import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "tests" / "apps" / "conf_grid"


@pytest.fixture
def hydra_app(hydra_restore_singletons: None) -> Iterator[tuple[Hydra, DictConfig, HydraContext]]:
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name="grid_app", config_search_path=create_config_search_path(str(CONFIG_DIR))
    )
    master = hydra.compose_config("config", overrides=["a=1,2", "hydra.job.chdir=false"], run_mode=RunMode.MULTIRUN)
    yield hydra, master, HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))
    GlobalHydra.instance().clear()


def _flags(cfg: DictConfig) -> tuple:
    return (OmegaConf.is_struct(cfg), OmegaConf.is_readonly(cfg), OmegaConf.is_readonly(cfg.hydra))


def _assert_same(fast: DictConfig, slow: DictConfig) -> None:
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(slow)
    assert OmegaConf.to_container(fast, resolve=False) == OmegaConf.to_container(slow, resolve=False)
    assert _flags(fast) == _flags(slow)


CASES = [
    ["a=1"],
    ["a=2", "b=3"],
    ["b=3", "a=2"],  # same keys, other order: override_dirname and overrides.task follow the order
    ["a=5", "model=tf"],
    ["model=tf", "a=6", "c=7"],
    ["model=mlp", "a=6"],
    ["+extra=1", "a=1"],
    ["++m=forced", "a=1"],
    ["++newkey=9"],
    ["~n", "a=1"],
    ["m={k:1,l:[1,2]}", "a=3"],
    ["m=[1,2,3]"],
    ["m=${a}", "a=4"],
    ["m='quoted, with comma'", 'n="it\'s"'],
    ["m=null", "n=true"],
    ["hydra.job.config.override_dirname.exclude_keys=[a]", "a=1", "b=2"],
    ["hydra.verbose=true", "a=8"],
    ["model=tf", "model=mlp", "a=1"],
    [],
]


def test_fast_composition_equals_hydra_for_every_case(hydra_app) -> None:
    hydra, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    for overrides in CASES + CASES:  # twice: the second pass reuses every cached template
        fast = composer.compose(overrides)
        slow = hydra.config_loader.load_sweep_config(master, list(overrides))
        _assert_same(fast, slow)


def test_value_only_sweep_composes_once(hydra_app) -> None:
    hydra, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    jobs = [[f"a={a}", f"b={b}", "model=tf"] for a in range(10) for b in range(10)]
    configs = [composer.compose(job) for job in jobs]
    assert composer.full_compositions == 1
    for job, cfg in zip(jobs[::17], configs[::17]):
        _assert_same(cfg, hydra.config_loader.load_sweep_config(master, job))
    # the per-job copies are independent of each other
    assert [(c.a, c.b) for c in configs[:3]] == [(0, 0), (0, 1), (0, 2)]


def test_group_choices_get_one_template_each(hydra_app) -> None:
    _, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    for model in ("cnn", "tf", "mlp"):
        for a in range(5):
            assert composer.compose([f"model={model}", f"a={a}"]).model.name == model
    assert composer.full_compositions == 3


@pytest.mark.parametrize("overrides", [["nokey=1"], ["+a=1"], ["model=nosuch"], ["a=[1"]])
def test_errors_match_hydra(hydra_app, overrides: list[str]) -> None:
    hydra, master, ctx = hydra_app
    with pytest.raises(Exception) as slow_err:
        hydra.config_loader.load_sweep_config(master, overrides)
    with pytest.raises(type(slow_err.value)) as fast_err:
        SweepComposer(ctx, master).compose(overrides)
    assert str(fast_err.value) == str(slow_err.value)


DIR_CASES = [
    ([], True),  # Hydra's defaults: multirun/${now:...}/${now:...} and ${hydra.job.num}
    (["hydra.sweep.dir=/tmp/hrl/${hydra.job.name}", "hydra.sweep.subdir=run_${hydra.job.id}"], True),
    (["hydra.sweep.subdir=${hydra.runtime.choices.model}-${hydra.job.num}"], True),
    (["hydra.sweep.dir=/tmp/hrl/${hydra.job.num}"], True),  # the default subdir, but a numbered dir
    (["hydra.sweep.subdir=${hydra.job.override_dirname}"], False),  # differs by the value overrides
    (["hydra.sweep.subdir=${a}_${hydra.job.num}"], False),  # a value override changes it
    (["hydra.job.name=${m}", "hydra.sweep.subdir=${hydra.job.name}_${hydra.job.num}"], False),  # via hydra.job.name
    (["hydra.sweep.subdir=${oc.env:HOME}/${hydra.job.num}"], False),  # another resolver
    (["hydra.sweep.subdir=${.dir}"], False),  # a relative interpolation
]


@pytest.mark.parametrize("hydra_overrides, known", DIR_CASES)
def test_output_dir_without_composing_again_is_the_composed_jobs(
    hydra_app, hydra_overrides: list[str], known: bool
) -> None:
    """What build_job_specs uses after Hydra's validation composed the jobs: the same dir the
    composed config gives, and no answer at all where the dir may depend on the job."""
    _, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    jobs = [[*hydra_overrides, f"a={i}", f"m=v{i}"] for i in range(3)]
    assert composer.output_dir(jobs[0], 0) is None  # not composed before: no shortcut
    for idx, job in enumerate(jobs):
        expected = job_output_dir(compose_job(composer, job, idx))
        assert composer.output_dir(job, idx) == (expected if known else None)
    if known:  # and it follows the job number, not a stale one
        assert composer.output_dir(jobs[2], 7) == job_output_dir(compose_job(composer, jobs[2], 7))
