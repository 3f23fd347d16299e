"""Reading a pipeline file: its stages, their dependency order, and each stage's jobs.

A stage's overrides are split into constants, stage references (``${stage:NAME,KEY}``) and swept
keys; the sweep (grid and paired groups) is expanded as the paired sweeper does, into jobs
numbered in that order. :func:`load_pipeline` also matches every job with its upstream jobs, so
a bad file is refused before anything is launched.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError, LauncherError
from launcher_core.pipeline.matching import check_matches
from launcher_core.pipeline.model import REF_KEYS, STAGE_REF, JobPlan, Pipeline, Stage
from launcher_core.runtime.compose import NOT_PLAIN, plain_value
from launcher_core.sweep import bare_key, expand, grid_dimensions, paired_dimensions

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
GROUP_KEY = re.compile(r"[+~]{0,2}[A-Za-z_][A-Za-z0-9_.\-]*")
STAGE_KEYS = {"app", "overrides", "paired", "cluster", "needs", "match", "paths", "python", "cwd"}
TOP_KEYS = {"name", "dir", "cluster", "python", "stages"}
RESERVED = ("hydra.sweep.", "hydra.sweeper.", "hydra/sweeper", "hydra.launcher.wait", "hydra.launcher.dependency")
# override values Hydra's grammar reads as one plain INT, FLOAT or ID token (a strict subset of its
# rules, as in launcher_core.runtime.compose): canonical without the (slow) ANTLR parser


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline file, plan every stage's jobs and match them with their upstream
    jobs; raise ``ConfigError`` naming the stage and key on anything wrong (nothing is launched
    before this returns)."""
    pipeline = read_pipeline(path)
    check_matches(pipeline)  # ambiguous or missing matches fail here, before anything runs
    return pipeline


def read_pipeline(path: str | Path) -> Pipeline:
    """The file's stages in dependency order, each with its planned jobs (not matched yet)."""
    import yaml

    file = Path(path).expanduser().resolve()
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read pipeline file {file}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise ConfigError(f"{file}: a pipeline file needs a 'stages' mapping: name -> {{app, overrides, needs}}")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{file}: unknown keys {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    base = file.parent
    name = str(data.get("name") or file.stem)
    pdir = _path(base, data.get("dir") or f"multirun/pipeline-{name}")
    stages = {
        str(n): _stage(str(n), s, base, data.get("cluster"), data.get("python")) for n, s in data["stages"].items()
    }
    order = _topological(stages)
    pipeline = Pipeline(file=file, name=name, dir=pdir, stages={n: stages[n] for n in order})
    for stage in pipeline.stages.values():
        plan_stage(stage)
    return pipeline


def _path(base: Path, value: Any) -> Path:
    return (base / os.path.expanduser(str(value))).resolve()


def _stage(name: str, raw: Any, base: Path, cluster: Any, python: Any) -> Stage:
    where = f"stage {name}"
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}: a stage name must be letters, digits, '_' or '-' (starting with a letter)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with at least 'app', got {raw!r}")
    unknown = set(raw) - STAGE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(STAGE_KEYS)}")
    if not raw.get("app"):
        raise ConfigError(f"{where}: 'app' (the Hydra app's script) is required")
    app = _path(base, raw["app"])
    if not app.is_file():
        raise ConfigError(f"{where}: app {app} does not exist")
    overrides = _strings(f"{where}.overrides", raw.get("overrides") or [])
    for text in overrides:
        if text.startswith("-") or any(text.startswith(r) or text.lstrip("+~").startswith(r) for r in RESERVED):
            raise ConfigError(f"{where}: override {text!r} is set by the pipeline (sweep dir, sweeper, wait)")
    paths = str(raw.get("paths", "auto"))
    if paths not in ("auto", "local"):
        raise ConfigError(f"{where}.paths must be auto or local, got {paths!r}")
    match = raw.get("match")
    return Stage(
        name=name,
        app=app,
        cwd=_path(base, raw.get("cwd") or "."),
        python=str(raw.get("python") or python or sys.executable),
        overrides=overrides,
        paired=list(raw.get("paired") or []),
        cluster=None if raw.get("cluster", cluster) is None else str(raw.get("cluster", cluster)),
        needs=_strings(f"{where}.needs", raw.get("needs") or []),
        match=None if match is None else _strings(f"{where}.match", match),
        paths=paths,
    )


def _strings(key: str, value: Any) -> list[str]:
    if (
        isinstance(value, str)
        or not isinstance(value, list)
        or not all(isinstance(v, (str, int, float)) for v in value)
    ):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def _topological(stages: Mapping[str, Stage]) -> list[str]:
    """Stage names, every stage after the stages it needs; a cycle or an unknown name is an error."""
    for stage in stages.values():
        for need in stage.needs:
            if need not in stages:
                raise ConfigError(f"stage {stage.name} needs stage {need!r}, which the file does not define")
            if need == stage.name:
                raise ConfigError(f"stage {stage.name} needs itself")
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name) :] + [name]
            raise ConfigError(f"stages depend on each other in a cycle: {' -> '.join(cycle)}")
        visiting.append(name)
        for need in stages[name].needs:
            visit(need)
        visiting.pop()
        order.append(name)

    for name in stages:
        visit(name)
    return order


# --- planning a stage's jobs -----------------------------------------------------------------------
def override_parser() -> Any:
    """Hydra's override parser (no config loader: group names are not looked up)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def plan_stage(stage: Stage) -> None:
    """Split the stage's overrides into constants, stage references and swept keys; expand the
    sweep (grid and paired groups, as the paired sweeper does) into numbered jobs."""
    parser = override_parser()
    where = f"stage {stage.name}"
    grouped = _paired_keys(stage.paired)
    swept_overrides = []
    for text in stage.overrides:
        if STAGE_REF.search(text):
            _add_ref(stage, text)
            continue
        override = parse_override(parser, text, where)
        key = override.get_key_element()
        if key.startswith(("hydra.", "hydra/")):
            if override.is_sweep_override():
                raise ConfigError(f"{where}: override {text!r} sweeps a hydra key, which a pipeline cannot plan")
            stage.constants.append(text)
        elif override.is_sweep_override() or bare_key(key) in grouped:
            swept_overrides.append(override)
        else:
            stage.constants.append(text)
    try:
        grid, groups = paired_dimensions(stage.paired, grid_dimensions(swept_overrides), parser)
        dims = [*grid, *groups]
    except LauncherError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    stage.swept = [bare_key(k) for d in dims for k in d.keys]
    for ref_key in stage.refs:
        if bare_key(ref_key) in stage.swept:
            raise ConfigError(f"{where}: key {bare_key(ref_key)!r} is both swept and set from another stage")
    values_cache: dict[str, str] = {}
    for num, overrides in enumerate(expand(dims)):
        values = {bare_key(o.split("=", 1)[0]): canonical(parser, o, values_cache, where) for o in overrides}
        stage.jobs.append(JobPlan(num, overrides, values))


def _paired_keys(groups: Sequence[Any]) -> set[str]:
    keys: set[str] = set()
    for group in groups:
        if isinstance(group, (dict, list, tuple)):
            keys.update(bare_key(str(k)) for k in group)
    return keys


def parse_override(parser: Any, text: str, where: str) -> Any:
    """Hydra's parse of one override; a ``ConfigError`` naming ``where`` if it does not parse."""
    from hydra.errors import HydraException

    try:
        return parser.parse_override(text)
    except HydraException as exc:
        raise ConfigError(f"{where}: override {text!r}: {str(exc).splitlines()[0]}") from exc


def canonical(parser: Any, override_text: str, cache: dict[str, str], where: str) -> str:
    """A value as Hydra reads it (``1e-3`` and ``0.001`` are one value), as text to compare.

    A plain int, float or name is read without Hydra's parser (~0.5 ms an override: a stage
    sweeping ``seed=range(10000)`` plans in a moment)."""
    if override_text not in cache:
        value = plain_value(override_text.partition("=")[2])
        if value is NOT_PLAIN:
            value = parse_override(parser, override_text, where).value()
        cache[override_text] = json.dumps(value, sort_keys=True, default=str)
    return cache[override_text]


def _add_ref(stage: Stage, text: str) -> None:
    where = f"stage {stage.name}"
    key, sep, value = text.partition("=")
    if not sep or not GROUP_KEY.fullmatch(key):
        raise ConfigError(f"{where}: {text!r} must be KEY=VALUE to use ${{stage:...}}")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    for upstream, ref_key in STAGE_REF.findall(value):
        if upstream not in stage.needs:
            raise ConfigError(f"{where}: {key} refers to stage {upstream!r}, which is not in its needs")
        if ref_key not in REF_KEYS:
            raise ConfigError(f"{where}: {key} asks for {ref_key!r} of stage {upstream}; known: {', '.join(REF_KEYS)}")
    stage.refs[key] = value
