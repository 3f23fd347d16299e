"""Sweep expansion: Hydra's grid (cartesian product) plus paired (zipped) groups.

A paired group is a set of keys that advance together: ``{model: [cnn, tf], aug: [basic, adv]}``
gives two entries, ``model=cnn aug=basic`` and ``model=tf aug=adv``. Groups are crossed with
each other and with every ordinary grid key. A group is written either

* with its values: ``{model.name: [cnn, tf], data.aug: "basic,adv"}`` (a list, or a string in
  Hydra's sweep syntax: ``a,b``, ``range(3)``, ``choice(...)``, ``glob(...)``), or
* as a list of keys, ``[model.name, data.aug]``, whose values are the ordinary sweep overrides
  given for those keys (``model.name=cnn,tf data.aug=basic,adv``).

Order of jobs: the grid keys in Hydra's order (sweeper ``params`` first, then the command line),
then the paired groups in the order they are declared; the last dimension varies fastest, as
in Hydra's BasicSweeper.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.errors import SweepDefinitionError

_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:+\-]+")


@dataclass
class Dimension:
    """One axis of the product: its keys and, per step, the overrides to apply."""

    keys: tuple[str, ...]
    entries: list[list[str]]
    paired_group: int | None = None


def bare_key(key: str) -> str:
    """``+a.b`` / ``++a.b`` / ``~a.b`` -> ``a.b`` (for comparing keys)."""
    return key.lstrip("+~")


def render_value(value: Any) -> str:
    """A YAML value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)) or _is_list_config(value):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    if isinstance(value, Mapping) or _is_dict_config(value):
        return "{" + ",".join(f"{k}:{render_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text):
        return text
    return quote_value(text)


def quote_value(text: str) -> str:
    """``text`` as a single-quoted Hydra override value that parses back to exactly ``text``.

    In Hydra's grammar a backslash is literal unless it precedes a quote (or ends the quoted
    string), so only those runs of backslashes are doubled, then quotes are escaped.
    """
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def _is_list_config(value: Any) -> bool:
    from omegaconf import ListConfig

    return isinstance(value, ListConfig)


def _is_dict_config(value: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(value, DictConfig)


def grid_dimensions(overrides: Iterable[Any]) -> list[Dimension]:
    """Hydra's BasicSweeper dimensions: one per key, later overrides of a key win."""
    dims: dict[str, Dimension] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise SweepDefinitionError(
                    f"'{override.input_line}': the paired sweeper cannot expand a "
                    f"{override.value_type.name} sweep (use choice, range, glob or a,b,c)"
                )
            entries = [[f"{key}={v}"] for v in override.sweep_string_iterator()]
            if not entries:
                raise SweepDefinitionError(f"'{override.input_line}' sweeps over no values")
        else:
            entries = [[f"{key}={override.get_value_element_as_str()}"]]
        dims.pop(bare_key(key), None)
        dims[bare_key(key)] = Dimension((key,), entries)
    return list(dims.values())


def _values_for(key: str, values: Any, parser: Any, group_no: int) -> list[str]:
    """Override strings ``key=v`` for one key of a value-form paired group."""
    if isinstance(values, str):
        override = parser.parse_override(f"{key}={values}")
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise SweepDefinitionError(f"paired group {group_no}: '{key}: {values}' is not a discrete sweep")
            rendered = list(override.sweep_string_iterator())
        else:
            rendered = [override.get_value_element_as_str()]
    elif isinstance(values, (list, tuple)) or _is_list_config(values):
        rendered = [render_value(v) for v in values]
    else:
        raise SweepDefinitionError(
            f"paired group {group_no}: values of '{key}' must be a list or a sweep string "
            f"like 'a,b' or 'range(3)', got {type(values).__name__} {values!r}"
        )
    return [f"{key}={v}" for v in rendered]


def _group_as_dict(group: Any, group_no: int, grid: dict[str, Dimension], parser: Any) -> dict[str, list[str]]:
    if isinstance(group, Mapping) or _is_dict_config(group):
        result = {}
        for key, values in group.items():
            key = str(key)
            if bare_key(key) in grid:
                raise SweepDefinitionError(
                    f"key '{bare_key(key)}' is both in paired group {group_no} and an ordinary "
                    f"override ({' '.join(grid[bare_key(key)].entries[0])}...): give it in one place only"
                )
            result[key] = _values_for(key, values, parser, group_no)
        return result
    if isinstance(group, (list, tuple)) or _is_list_config(group):
        result = {}
        for key in (str(k) for k in group):
            dim = grid.get(bare_key(key))
            if dim is None:
                raise SweepDefinitionError(
                    f"paired group {group_no} names '{key}' but no override gives its values: "
                    f"add e.g. '{key}=v1,v2' to the command line"
                )
            result[dim.keys[0]] = [e[0] for e in dim.entries]
        return result
    raise SweepDefinitionError(
        f"paired group {group_no} must be a mapping key -> values or a list of keys, got {group!r}"
    )


def paired_dimensions(
    groups: Sequence[Any] | None, grid: list[Dimension], parser: Any
) -> tuple[list[Dimension], list[Dimension]]:
    """Validate the paired groups; return (remaining grid dims, one dim per paired group)."""
    if not groups:
        return grid, []
    grid_by_key = {bare_key(d.keys[0]): d for d in grid}
    seen: dict[str, int] = {}
    paired: list[Dimension] = []
    for group_no, group in enumerate(groups, start=1):
        values = _group_as_dict(group, group_no, grid_by_key, parser)
        if not values:
            raise SweepDefinitionError(f"paired group {group_no} is empty")
        for key in values:
            if bare_key(key) in seen:
                raise SweepDefinitionError(
                    f"key '{bare_key(key)}' is in paired groups {seen[bare_key(key)]} and {group_no}: "
                    "a key can belong to one paired group only"
                )
            seen[bare_key(key)] = group_no
        lengths = {k: len(v) for k, v in values.items()}
        if len(set(lengths.values())) != 1:
            detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise SweepDefinitionError(
                f"paired group {group_no} has keys with different numbers of values ({detail}): "
                "every key of a paired group needs the same number of values"
            )
        if 0 in lengths.values():
            raise SweepDefinitionError(f"paired group {group_no} has no values")
        entries = [list(step) for step in zip(*values.values())]
        paired.append(Dimension(tuple(values), entries, paired_group=group_no))
    remaining = [d for d in grid if bare_key(d.keys[0]) not in seen]
    return remaining, paired


def expand(dimensions: Sequence[Dimension]) -> list[list[str]]:
    """All jobs: the cartesian product of the dimensions, each job a flat override list."""
    return [list(itertools.chain.from_iterable(combo)) for combo in itertools.product(*(d.entries for d in dimensions))]


def count_jobs(dimensions: Sequence[Dimension]) -> int:
    return math.prod(len(d.entries) for d in dimensions)


def batches(jobs: list[list[str]], max_batch_size: int | None) -> list[list[list[str]]]:
    if max_batch_size is None or max_batch_size == -1:
        return [jobs]
    if max_batch_size < 1:
        raise SweepDefinitionError(f"hydra.sweeper.max_batch_size must be >= 1 (or null), got {max_batch_size}")
    return [jobs[i : i + max_batch_size] for i in range(0, len(jobs), max_batch_size)]


# --- jobs listed in a file (hydra.sweeper.jobs_file) ---------------------------------------------
JOB_NUM_KEY = "hydra.job.num"


@dataclass
class ListedJob:
    """One job of a jobs file: its overrides and, if given, its number (its dir and id)."""

    overrides: list[str]
    num: int | None = None


def read_jobs_file(path: str | Path) -> list[ListedJob]:
    """``hydra.sweeper.jobs_file``: a JSON list of jobs, each a list of override strings or
    ``{"overrides": [...], "num": N}``. A job's number is its place in the sweep (its dir
    ``${hydra.job.num}`` and its id); without ``num`` it is its position in the list."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SweepDefinitionError(f"hydra.sweeper.jobs_file: cannot read {path}: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise SweepDefinitionError(f"hydra.sweeper.jobs_file {path} must hold a non-empty JSON list of jobs")
    jobs = [_listed_job(entry, pos, path) for pos, entry in enumerate(data)]
    seen: dict[int, int] = {}
    for pos, job in enumerate(jobs):
        num = pos if job.num is None else job.num
        if num in seen:
            raise SweepDefinitionError(
                f"hydra.sweeper.jobs_file {path}: jobs {seen[num]} and {pos} are both job #{num}"
            )
        seen[num] = pos
    return jobs


def _listed_job(entry: Any, pos: int, path: str | Path) -> ListedJob:
    overrides, num = (entry.get("overrides"), entry.get("num")) if isinstance(entry, dict) else (entry, None)
    extra = set(entry) - {"overrides", "num"} if isinstance(entry, dict) else set()
    if extra or not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise SweepDefinitionError(
            f"hydra.sweeper.jobs_file {path}: job {pos} must be a list of override strings or "
            f'{{"overrides": [...], "num": N}}, got {entry!r}'
        )
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 0):
        raise SweepDefinitionError(f"hydra.sweeper.jobs_file {path}: job {pos} has num {num!r}, not an int >= 0")
    return ListedJob(list(overrides), num)


def listed_jobs(path: str | Path, overrides: Sequence[Any], paired: Sequence[Any] | None) -> list[list[str]]:
    """Every job of a jobs file, in its order: the command line's overrides (``overrides``,
    parsed; none may sweep), then the job's own, then ``hydra.job.num=N`` for a job with a
    number. The launchers of this package take that as the job's number, not as an override to
    compose, so numbered jobs share one config template."""
    swept = [o.input_line for o in overrides if o.is_sweep_override()]
    if swept or paired:
        what = f"sweep overrides {swept}" if swept else "hydra.sweeper.paired"
        raise SweepDefinitionError(f"hydra.sweeper.jobs_file lists every job of the sweep: remove the {what}")
    (common,) = expand(grid_dimensions(overrides))
    jobs = read_jobs_file(path)
    return [[*common, *job.overrides, *([] if job.num is None else [f"{JOB_NUM_KEY}={job.num}"])] for job in jobs]
