"""The fast sweep composer gives exactly the config Hydra's own load_sweep_config gives."""

from __future__ import annotations

import dataclasses
import enum
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


# --- where the job runs: composed from the sweep payload's templates ------------------------------
HOSTILE_CASES = [
    ["m='$(touch /tmp/hrl-canary); rm -rf ~'", "a=1"],
    ['n="back\\\\slash and \\"quotes\\""', "a=2"],
    ["m='${oc.env:HOME}'", "a=3"],  # quoted: Hydra keeps the interpolation as a string, so do we
    ["m='a,b;c|d&e>f'", "model=tf"],
]


def _node_composer(composer: SweepComposer) -> SweepComposer:
    """The composer a job builds from the sweep payload: node state through cloudpickle, no loader."""
    import cloudpickle

    return SweepComposer.for_node(cloudpickle.loads(cloudpickle.dumps(composer.node_state())))


def test_configs_composed_where_the_job_runs_equal_hydras(hydra_app) -> None:
    """The controller only checks the jobs (as build_job_specs does); the job side composes each
    from the shipped templates without a config loader: node for node what Hydra composes."""
    hydra, master, ctx = hydra_app
    launcher_side = SweepComposer(ctx, master)
    jobs = CASES + HOSTILE_CASES
    for overrides in jobs:
        launcher_side.check(overrides)
    node = _node_composer(launcher_side)
    for overrides in jobs:
        slow = hydra.config_loader.load_sweep_config(master, list(overrides))
        _assert_same(node.compose(overrides), slow)  # hostile values verbatim, as Hydra has them
    assert node.full_compositions == 0


def test_a_job_side_composer_names_overrides_it_was_not_shipped_for(hydra_app) -> None:
    _, master, ctx = hydra_app
    launcher_side = SweepComposer(ctx, master)
    launcher_side.check(["a=1", "model=cnn"])
    node = _node_composer(launcher_side)
    assert node.compose(["a=2", "model=cnn"]).a == 2  # another value of a checked key: fine
    with pytest.raises(ValueError, match=r"no config was composed at launch for the overrides \['model=tf'\]"):
        node.compose(["model=tf"])
    with pytest.raises(ValueError, match=r"override key 'c' was not seen when the sweep was launched"):
        node.compose(["c=1"])


PLAIN_VALUES = [
    "0", "7", "-5", "+3", "007", "1_000", "1.5", "-0.25", "1e-3", "2E+4", "1.5e3", ".5", "1.", "inf", "-inf",
    "NaN", "true", "False", "null", "abc", "a_b", "_x", "abc-def", "1abc", "x y", "", "ab.c", "'q'", "[1]",
    # several tokens joined into one string: paths and the like
    "/", "//", "/data/run-1.5/first/12", "a/b", "-1/2", "+3/x", "1_000/x", "1_/x", "1./2", "inf/x", "true/x",
    "null/x", "a%b", "a*b", "a@b", "a?b", "a|b", "..", "a/b c", "a:b", "a/$b", "a/${x}", "a\\/b", "a/b,c",
]


@pytest.mark.parametrize("value", PLAIN_VALUES)
@pytest.mark.parametrize("prefix", ["a=", "+extra=", "++m=", "model.name="])
def test_plain_overrides_parse_exactly_as_hydras_parser(hydra_app, prefix: str, value: str) -> None:
    """The shortcut past Hydra's ANTLR parser (an override like one parsed before, with a plain
    int, float or name as value) gives the same Override, value type included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    _, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    composer._parse([f"{prefix}0"])  # the sibling, parsed by Hydra's parser
    text = f"{prefix}{value}"
    try:
        (slow,) = OverridesParser.create().parse_overrides([text])
    except Exception as exc:  # noqa: BLE001 - then the composer must fail the same way
        with pytest.raises(type(exc)):
            composer._parse([text])
        return
    ((fast, _is_value),) = composer._parse([text])
    assert (fast.type, fast.key_or_group, fast.package, fast.value_type, fast.input_line) == (
        slow.type, slow.key_or_group, slow.package, slow.value_type, slow.input_line
    )
    assert type(fast.value()) is type(slow.value())
    assert fast.value() == slow.value() or (fast.value() != fast.value() and slow.value() != slow.value())  # NaN


class Color(enum.Enum):
    red = 1
    blue = 2


@dataclasses.dataclass
class Typed:
    lr: float = 0.1
    steps: int = 10
    name: str = "x"
    color: Color = Color.red


@pytest.fixture
def typed_app(hydra_restore_singletons: None) -> Iterator[tuple[Hydra, DictConfig, HydraContext]]:
    """An app whose config is a structured config: values are type-checked when applied."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="typed_app", node=Typed)
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="typed", config_search_path=create_config_search_path(None))
    master = hydra.compose_config("typed_app", overrides=["hydra.job.chdir=false"], run_mode=RunMode.MULTIRUN)
    yield hydra, master, HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))
    GlobalHydra.instance().clear()


def test_check_composes_only_jobs_with_something_new_and_still_refuses_bad_values(typed_app) -> None:
    hydra, master, ctx = typed_app
    composer = SweepComposer(ctx, master)
    for seed in range(1000):
        composer.check([f"steps={seed}", "lr=0.5"])
    assert (composer.full_compositions, composer.replays) == (1, 1)  # seed=range(1000): one job composed
    composer.check(["steps=3", "lr=2"])  # lr: an int where only floats were seen: composed once more
    assert composer.replays == 2
    for bad in (["steps=abc"], ["steps=2.5"], ["lr=fast"], ["color=green"], ["nokey=1"]):
        with pytest.raises(Exception) as fast_err:
            composer.check(bad)
        with pytest.raises(type(fast_err.value)):
            hydra.config_loader.load_sweep_config(master, bad)
    composer.check(["color=blue"])
    composer.check(["color=red"])  # names are checked one by one
    assert composer.replays == 4


def test_check_composes_once_for_distinct_strings_where_any_string_will_do(typed_app) -> None:
    """A string key or a new key takes every string alike (a downstream pipeline stage gives each
    job its own upstream dir): one composition, not one per value. An Enum key still checks
    each name, and a string where a number belongs is still refused."""
    hydra, master, ctx = typed_app
    composer = SweepComposer(ctx, master)
    for i in range(500):
        composer.check([f"name=/runs/first/{i}", f"+up=/runs/first/{i}", f"+tag=run-{i}"])
    assert (composer.full_compositions, composer.replays) == (1, 1)
    composer.check(["name=${up}"])  # an interpolation: composed on its own
    assert composer.replays == 2
    composer.check(["color=blue"])
    with pytest.raises(Exception) as fast_err:
        composer.check(["color=pink"])
    with pytest.raises(type(fast_err.value)):
        hydra.config_loader.load_sweep_config(master, ["color=pink"])
    for bad in (["steps=a/b"], ["lr=1/2"]):
        with pytest.raises(Exception) as fast_err:
            composer.check(bad)
        with pytest.raises(type(fast_err.value)):
            hydra.config_loader.load_sweep_config(master, bad)
