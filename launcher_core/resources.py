"""Per-job resources: ``hydra.launcher.resources_from`` maps launcher keys to paths in each job's
composed config (``{gpus_per_node: trainer.gpus, mem_gb: trainer.mem_gb}``), so one sweep can
give every job what it needs instead of the maximum to all.

A backend declares which keys it takes and how each value is checked (:data:`PARSERS`); the
values are read at launch, from each job's config as the job will see it, before anything is
created or contacted, and a job whose value is missing or invalid is refused naming the job,
the key and the path. Values reach ``#SBATCH`` lines, the runner and RunInstances only after
these checks (numbers as numbers, names against a strict pattern), never as free text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobSpec

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|)\s*$", re.IGNORECASE)
_MEM_UNITS_GB = {"": 1.0, "K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:,+-]{0,127}$")
_INSTANCE_TYPE = re.compile(r"^[a-z0-9][a-z0-9-]*\.[a-z0-9-]+$")


class ResourceValueError(ValueError):
    """A value read from a job's config is not acceptable for its key (the message says what is)."""


Parser = Callable[[Any], Any]


def positive_int(value: Any, *, allow_zero: bool = False) -> int:
    """An integer > 0 (>= 0 with ``allow_zero``); whole floats and digit strings are accepted."""
    if isinstance(value, bool):
        raise ResourceValueError("must be an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise ResourceValueError(f"must be an integer, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ResourceValueError(f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def gpu_count(value: Any) -> int:
    """A number of GPUs (0 allowed: a CPU job of a GPU sweep)."""
    return positive_int(value, allow_zero=True)


def minutes(value: Any) -> int:
    """A time limit in whole minutes > 0 (a float is rounded up: a limit must not be cut short)."""
    if isinstance(value, float) and math.isfinite(value) and value > 0:
        return math.ceil(value)
    return positive_int(value)


def memory_gb(value: Any) -> float:
    """Memory in GB > 0: a number (GB) or a string with a unit (``64G``, ``500MB``, ``1.5T``)."""
    if isinstance(value, bool):
        raise ResourceValueError("must be a memory size, not a boolean")
    if isinstance(value, (int, float)):
        gb = float(value)
    elif isinstance(value, str) and (match := _MEM.match(value)):
        gb = float(match.group(1)) * _MEM_UNITS_GB[match.group(2)[:1].upper()]
    else:
        raise ResourceValueError(f"must be a memory size in GB (a number) or like 64G / 500MB, got {value!r}")
    if not math.isfinite(gb) or gb <= 0:
        raise ResourceValueError(f"must be > 0, got {value!r}")
    return gb


def slurm_name(value: Any) -> str:
    """A partition, constraint or gres name: letters, digits and ``_.:,+-`` only (never shell text)."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ResourceValueError(f"must be a name of letters, digits and _.:,+- (at most 128), got {value!r}")
    return value


def instance_type(value: Any) -> str:
    """An EC2 instance type such as ``g5.xlarge``."""
    if not isinstance(value, str) or not _INSTANCE_TYPE.match(value):
        raise ResourceValueError(f"must be an EC2 instance type like g5.xlarge, got {value!r}")
    return value


def check_resources_from(value: Any, parsers: Mapping[str, Parser], prefix: str = "hydra.launcher") -> dict[str, str]:
    """The ``resources_from`` setting, checked: known keys, each a dotted config path."""
    key = f"{prefix}.resources_from"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping launcher key -> config path, got {value!r}")
    out: dict[str, str] = {}
    for name, path in value.items():
        if name not in parsers:
            raise ConfigError(f"{key}.{name}: not a per-job resource here; use one of {', '.join(sorted(parsers))}")
        if not isinstance(path, str) or not _PATH.match(path):
            raise ConfigError(f"{key}.{name} must be a dotted path in the job's config (trainer.gpus), got {path!r}")
        out[str(name)] = path
    return out


_MISSING = object()


def read_job_resources(
    specs: Sequence[JobSpec],
    resources_from: Mapping[str, str],
    parsers: Mapping[str, Parser],
    prefix: str = "hydra.launcher",
) -> None:
    """Set ``spec.resources`` of every job from its composed config; ConfigError naming the job,
    the key and the path for a missing or invalid value. Each config is released after use.

    Composing a job costs milliseconds; jobs whose values cannot differ (see :func:`_signature`)
    share the values read from the first of them, so a 10,000-job grid composes a few configs."""
    if not resources_from:
        return
    paths = list(resources_from.values())
    known: dict[tuple[Any, ...], dict[str, Any]] = {}
    literal: dict[tuple[int, str], bool] = {}
    for spec in specs:
        signature = _signature(spec, paths, literal)
        if signature is not None and signature in known:
            spec.resources = dict(known[signature])
            continue
        cfg = spec.config
        try:
            spec.resources = {
                key: _read(cfg, spec, key, path, parsers[key], prefix) for key, path in resources_from.items()
            }
        finally:
            spec.release_config()
        if signature is not None:
            known[signature] = dict(spec.resources)


def _signature(spec: JobSpec, paths: Sequence[str], literal: dict[tuple[int, str], bool]) -> tuple[Any, ...] | None:
    """What the values at ``paths`` of the job's config depend on, or None when that is not known.

    Known when the job's config is its template (one per set of config-group choices) plus value
    overrides, no path is under ``hydra`` (set per job), and every node on each path of the
    template is a plain value, not an interpolation (which could read anything, e.g. a swept key).
    Then the values depend only on the template and the value overrides of a path, of one of its
    parents or of something inside it, as long as those hold no interpolation either.
    """
    composer = _composer_of(spec)
    if composer is None or any(p == "hydra" or p.startswith("hydra.") for p in paths):
        return None
    template = composer.template_of(spec.overrides)
    for path in paths:
        cached = literal.get((id(template), path))
        if cached is None:
            cached = literal[(id(template), path)] = _plain_path(template, path)
        if not cached:
            return None
    relevant = []
    for override in composer.value_overrides(spec.overrides):
        key = str(override.key_or_group)
        if override.package is not None:
            return None
        if any(p == key or p.startswith(f"{key}.") or key.startswith(f"{p}.") for p in paths):
            if "${" in override.input_line:
                return None
            relevant.append(override.input_line)
    return (id(template), tuple(relevant))


def _composer_of(spec: JobSpec) -> Any:
    """The composer behind the spec's config (the controller's factory), or None."""
    import functools

    from launcher_core.runtime.compose import SweepComposer, compose_job

    factory = spec.config_factory
    if isinstance(factory, functools.partial) and factory.func is compose_job and factory.args:
        composer = factory.args[0]
        return composer if isinstance(composer, SweepComposer) else None
    return None


def _plain_path(template: Any, path: str) -> bool:
    """No node along ``path`` in ``template`` is an interpolation (a missing tail is fine: only an
    override can set it)."""
    from omegaconf import DictConfig, OmegaConf

    node: Any = template
    for part in path.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return True
        if OmegaConf.is_interpolation(node, part):
            return False
        node = node._get_node(part)
    return not (isinstance(node, str) and "${" in node)


def _read(cfg: Any, spec: JobSpec, key: str, path: str, parse: Parser, prefix: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    where = f"job #{spec.idx} ({' '.join(spec.overrides) or 'no overrides'}): {prefix}.resources_from.{key}"
    try:
        raw = OmegaConf.select(cfg, path, default=_MISSING, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {path} cannot be read from the job's config ({exc})") from exc
    if raw is _MISSING or raw is None:
        raise ConfigError(f"{where}: {path} is not set in the job's config")
    if OmegaConf.is_config(raw):
        raise ConfigError(f"{where}: {path} is a config node, not a value")
    try:
        return parse(raw)
    except ResourceValueError as exc:
        raise ConfigError(f"{where}: {path} {exc}") from exc


def resource_groups(specs: Sequence[JobSpec]) -> list[tuple[dict[str, Any], list[JobSpec]]]:
    """Jobs grouped by their resource set, groups in order of their first job, jobs in order."""
    groups: dict[tuple[tuple[str, Any], ...], tuple[dict[str, Any], list[JobSpec]]] = {}
    for spec in specs:
        key = tuple(sorted(spec.resources.items()))
        groups.setdefault(key, (dict(spec.resources), []))[1].append(spec)
    return list(groups.values())
