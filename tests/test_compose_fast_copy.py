"""The composer's fast paths: pickled template copies, the shared composer behind
``ComposingConfigLoader`` and ``job_output_dir`` without ``HydraConfig.set_config``.

``tests/test_compose.py`` compares YAML, containers and flags with Hydra's own composition;
here ``same_tree`` compares node for node (node classes, metadata, flags, parents).
"""

from __future__ import annotations

import os
import pickle

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import HydraContext
from omegaconf import OmegaConf

from launcher_core.runtime import compose
from launcher_core.runtime.compose import (
    ComposingConfigLoader,
    SweepComposer,
    composer_for,
    job_output_dir,
    same_tree,
    set_job_identity,
    use_fast_sweep_composition,
)
from tests.test_compose import CASES, hydra_app  # noqa: F401  (fixture)


def test_fast_composition_is_hydras_node_for_node(hydra_app) -> None:  # noqa: F811
    hydra, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    for overrides in CASES + CASES:
        fast = composer.compose(overrides)
        slow = hydra.config_loader.load_sweep_config(master, list(overrides))
        assert same_tree(fast, slow), overrides
    assert all(t.blob is not None for t in composer._templates.values()), "pickled copies were not used"


def test_same_tree_sees_differences(hydra_app) -> None:  # noqa: F811
    hydra, master, _ = hydra_app
    a = hydra.config_loader.load_sweep_config(master, ["a=1"])
    b = hydra.config_loader.load_sweep_config(master, ["a=1"])
    assert same_tree(a, b)
    b.a = 2
    assert not same_tree(a, b)
    b.a = 1
    OmegaConf.set_readonly(b.model, True)
    assert not same_tree(a, b)


def test_copies_are_independent(hydra_app) -> None:  # noqa: F811
    _, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    first, second = composer.compose(["a=1"]), composer.compose(["a=2"])
    set_job_identity(first, 0)
    set_job_identity(second, 1)
    first.model.name = "changed"
    assert (first.a, second.a, second.model.name, second.hydra.job.num) == (1, 2, "cnn", 1)
    assert composer.compose(["a=3"]).model.name == "cnn"


def test_falls_back_to_deepcopy_when_the_template_does_not_pickle(hydra_app, monkeypatch) -> None:  # noqa: F811
    hydra, master, ctx = hydra_app

    def unpicklable(*args, **kwargs):
        raise pickle.PicklingError("a local class")

    monkeypatch.setattr(compose.pickle, "dumps", unpicklable)
    composer = SweepComposer(ctx, master)
    for overrides in CASES[:6]:
        assert same_tree(composer.compose(overrides), hydra.config_loader.load_sweep_config(master, list(overrides)))
    assert all(t.blob is None for t in composer._templates.values())


def test_composing_loader_shares_one_composer_with_the_launcher(hydra_app) -> None:  # noqa: F811
    hydra, master, _ = hydra_app
    inner = hydra.config_loader
    ctx = HydraContext(config_loader=inner, callbacks=None)
    loader = use_fast_sweep_composition(ctx)
    assert use_fast_sweep_composition(ctx) is loader and ctx.config_loader is loader
    # what BasicSweeper.validate_batch_is_legal does, then what the launcher does
    for a in range(5):
        validated = ctx.config_loader.load_sweep_config(master, [f"a={a}", "model=tf"])
        assert same_tree(validated, inner.load_sweep_config(master, [f"a={a}", "model=tf"]))
    composer = composer_for(ctx, master)
    for a in range(5):
        composer.compose([f"a={a}", "model=tf"])
    assert composer.full_compositions == 1
    # everything else is the wrapped loader's
    assert loader.repository is inner.repository
    assert loader.get_search_path() is inner.get_search_path()
    assert loader.get_group_options("model") == inner.get_group_options("model")
    # a Hydra context shipped to a worker carries the plain loader, not the composer
    rebuild, args = loader.__reduce__()
    assert rebuild(*args) is inner
    # a composer for another master config does not reuse templates of the first
    other = hydra.config_loader.load_sweep_config(master, [])
    assert composer_for(ctx, other) is not composer
    assert isinstance(SweepComposer(ctx, master)._loader, type(inner)) and not isinstance(
        SweepComposer(ctx, master)._loader, ComposingConfigLoader
    )


def _output_dir_via_set_config(cfg) -> str:
    """The former implementation: what run_job sees after HydraConfig.set_config(cfg)."""
    hydra_cfg = HydraConfig.instance()
    previous = hydra_cfg.cfg
    hydra_cfg.set_config(cfg)
    try:
        sweep_dir = str(OmegaConf.select(cfg, "hydra.sweep.dir"))
        subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    finally:
        hydra_cfg.cfg = previous
    return os.path.abspath(os.path.join(sweep_dir, subdir))


@pytest.mark.parametrize(
    "sweep_overrides",
    [
        [],
        ["hydra.sweep.subdir=${hydra.job.override_dirname}"],
        ["hydra.sweep.dir=out/${hydra:job.name}/${now:%Y}", "hydra.sweep.subdir=${hydra:job.id}-${a}"],
    ],
)
def test_job_output_dir_matches_set_config(hydra_app, sweep_overrides) -> None:  # noqa: F811
    _, master, ctx = hydra_app
    composer = SweepComposer(ctx, master)
    marker = object()
    HydraConfig.instance().cfg = marker  # type: ignore[assignment]
    try:
        for idx, a in enumerate((3, 4)):
            fast = composer.compose([*sweep_overrides, f"a={a}", "b=1"])
            slow = composer.compose([*sweep_overrides, f"a={a}", "b=1"])
            set_job_identity(fast, idx)
            set_job_identity(slow, idx)
            assert job_output_dir(fast) == _output_dir_via_set_config(slow)
            assert HydraConfig.instance().cfg is marker
            assert OmegaConf.is_readonly(fast.hydra) and same_tree(fast, slow)
    finally:
        HydraConfig.instance().cfg = None
