"""A sweep's results as a table: the row and table model (:class:`ResultRow`, :class:`Results`).

One row per job: the job number, the value of every swept key, state, duration, host, and the
job's return value (or metrics file) flattened into columns. :meth:`Results.where`,
:meth:`Results.sort` and :meth:`Results.top` select rows; :func:`select` is what
``launcher-core results`` applies; :func:`best_column` picks the metric to rank jobs by. Loading
rows from a sweep dir is :mod:`launcher_core.results.loading`; printing them is
:mod:`launcher_core.results.formats`.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.overrides import format_value

NUM, STATE, DURATION, HOST, REASON = "#", "state", "duration", "host", "reason"
WHERE = "where"  # the spill target a job was placed on (sweeps over several targets only)
ATTEMPTS = "attempts"  # how many times the job was started (more than 1: an attempt was lost)
RETURN = "return"  # the column of a return value that is not a dict
BUILTIN_COLUMNS = (NUM, STATE, DURATION, WHERE, HOST, REASON, ATTEMPTS)
# metric names for which lower is better when picking "the best rows"
_LOWER_IS_BETTER = re.compile(r"loss|err|mse|mae|rmse|perplexity|ppl|time|latency|regret|cost", re.IGNORECASE)


@dataclass
class ResultRow:
    """One job: where it ran, how it ended and what it returned."""

    num: int
    job_id: str
    params: dict[str, Any]  # swept key -> value (all override keys; Results.swept_keys says which vary)
    state: str  # completed / failed / cancelled / running / submitted / pending, "(not pulled)" if remote
    duration_s: float | None
    host: str | None
    values: dict[str, Any]  # metric column -> value (return value or metrics file, flattened)
    reason: str | None  # why it failed (exception line, or the backend's reason)
    output_dir: Path
    created_at: float | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    local: bool = True  # its files are in the local sweep dir (pulled, or a local backend)
    pull_mode: str | None = None  # "bare" when big files were left on the backend
    overrides: list[str] = field(default_factory=list)
    attempts: int = 1  # launcher_core.retry: a lost attempt was run again
    where: str | None = None  # the spill target it was placed on (None: a single-backend sweep)

    @property
    def failed(self) -> bool:
        return self.state.startswith(("failed", "cancelled"))


class Results(Sequence[ResultRow]):
    """The rows of one sweep, with the columns they share. Indexing and slicing give rows;
    :meth:`where`, :meth:`sort`, :meth:`top` give new ``Results``."""

    def __init__(
        self,
        sweep_dir: Path,
        rows: list[ResultRow],
        *,
        meta: Mapping[str, Any] | None = None,
        swept_keys: list[str] | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.rows = rows
        self.meta = dict(meta or {})
        self.swept_keys = swept_keys if swept_keys is not None else varying_keys(r.params for r in rows)
        self.metric_keys = union_keys(r.values for r in rows)
        self.warnings = list(warnings or [])

    # --- Sequence ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._with(self.rows[index])
        return self.rows[index]

    def __iter__(self) -> Iterator[ResultRow]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"<Results {self.sweep_dir}: {len(self.rows)} jobs, columns {self.columns}>"

    def _with(self, rows: list[ResultRow]) -> Results:
        new = Results(self.sweep_dir, rows, meta=self.meta, swept_keys=self.swept_keys, warnings=self.warnings)
        new.metric_keys = self.metric_keys  # keep the column set of the whole sweep
        return new

    # --- columns ----------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """``#``, the swept keys, state, duration, host, ``attempts`` when a job was run again, the
        metric columns, and ``reason`` when a job failed. A metric named like another column is
        shown as ``return.<name>``."""
        cols = [NUM, *self.swept_keys, STATE, DURATION]
        if any(r.where for r in self.rows):
            cols.append(WHERE)
        cols.append(HOST)
        if any(r.attempts > 1 for r in self.rows):
            cols.append(ATTEMPTS)
        cols += [self._metric_column(k) for k in self.metric_keys]
        if any(r.failed or r.reason for r in self.rows):
            cols.append(REASON)
        return cols

    def _metric_column(self, key: str) -> str:
        clash = key in self.swept_keys or key in BUILTIN_COLUMNS
        return f"{RETURN}.{key}" if clash and key != RETURN else key

    def _column_source(self, column: str) -> tuple[str, str]:
        """(kind, key) of a column name: kind is builtin, param or metric."""
        if column in BUILTIN_COLUMNS:
            return "builtin", column
        if column in self.swept_keys:
            return "param", column
        for key in self.metric_keys:
            if self._metric_column(key) == column:
                return "metric", key
        if any(column in r.params for r in self.rows):  # a key that did not vary: still addressable
            return "param", column
        raise ConfigError(f"no column {column!r} in this sweep; columns: {', '.join(self.columns)}")

    def value(self, row: ResultRow, column: str) -> Any:
        kind, key = self._column_source(column)
        return _cell(row, kind, key)

    def numeric_columns(self) -> list[str]:
        """Metric columns whose every present value is a number (at least one present)."""
        out = []
        for key in self.metric_keys:
            present = [r.values[key] for r in self.rows if r.values.get(key) is not None]
            if present and all(is_number(v) for v in present):
                out.append(self._metric_column(key))
        return out

    def records(self, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts of native values (what ``--format json`` prints)."""
        cols = list(columns or self.columns)
        getters = [self.getter(c) for c in cols]
        return [{c: g(r) for c, g in zip(cols, getters)} for r in self.rows]

    def getter(self, column: str) -> Callable[[ResultRow], Any]:
        """A function giving a row's value in ``column`` (the column resolved once, not per row)."""
        kind, key = self._column_source(column)
        return lambda row: _cell(row, kind, key)

    def to_pandas(self, columns: Sequence[str] | None = None) -> Any:
        """A ``pandas.DataFrame`` of :meth:`records`, indexed by job number (needs pandas:
        ``pip install 'hydra-remote-launcher[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ConfigError(
                "to_pandas needs pandas: pip install 'hydra-remote-launcher[pandas]' (or pandas itself)"
            ) from exc
        frame = pd.DataFrame.from_records(self.records(columns))
        return frame.set_index(NUM) if NUM in frame.columns else frame

    # --- selecting ----------------------------------------------------------------------------
    def where(self, *conditions: str) -> Results:
        """Rows matching every condition ``KEY=VALUE`` (also ``!=``, ``<``, ``<=``, ``>``, ``>=``;
        VALUE may be a glob for ``=``/``!=``: ``model=res*``)."""
        rows = self.rows
        for text in conditions:
            column, op, wanted = _parse_condition(text)
            get = self.getter(column)
            rows = [r for r in rows if _compare(get(r), op, wanted)]
        return self._with(rows)

    def sort(self, spec: str) -> Results:
        """Sorted by comma-separated columns, ``-col`` descending; missing values last."""
        rows = list(self.rows)
        for part in reversed([p.strip() for p in spec.split(",") if p.strip()]):
            descending = part.startswith("-")
            get = self.getter(part.lstrip("-"))
            present = [r for r in rows if get(r) is not None]
            missing = [r for r in rows if get(r) is None]
            present.sort(key=lambda r, g=get: _sort_key(g(r)), reverse=descending)
            rows = present + missing
        return self._with(rows)

    def top(self, n: int) -> Results:
        return self._with(self.rows[: max(0, n)])

    def select_columns(self, spec: str | Sequence[str]) -> list[str]:
        """Columns named by a comma-separated list of names or globs (``val/*``), in that order."""
        wanted = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
        chosen: list[str] = []
        for pattern in filter(None, wanted):
            matches = [c for c in self.columns if fnmatch.fnmatchcase(c, pattern)] if _is_glob(pattern) else []
            if not matches:
                self._column_source(pattern)  # raises naming the unknown column
                matches = [pattern]
            chosen += [m for m in matches if m not in chosen]
        return chosen


# --- values ------------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    """A real number: an int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(row: ResultRow, kind: str, key: str) -> Any:
    if kind == "param":
        return row.params.get(key)
    if kind == "metric":
        return row.values.get(key)
    return {
        NUM: row.num,
        STATE: row.state,
        DURATION: None if row.duration_s is None else round(row.duration_s, 3),
        HOST: row.host,
        WHERE: row.where,
        REASON: row.reason,
        ATTEMPTS: row.attempts,
    }[key]


def union_keys(dicts: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of the mappings, in first-seen order."""
    seen: dict[str, None] = {}
    for d in dicts:
        for k in d:
            seen.setdefault(k, None)
    return list(seen)


def varying_keys(params: Iterable[Mapping[str, Any]]) -> list[str]:
    """Keys whose value differs between jobs, in first-seen order (all keys if none differ)."""
    params = list(params)
    keys = union_keys(params)
    missing = object()
    varying = [k for k in keys if len({repr(p.get(k, missing)) for p in params}) > 1]
    return varying or keys


# --- conditions and sorting ---------------------------------------------------------------------
_CONDITION = re.compile(r"^\s*([^<>=!]+?)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")


def _parse_condition(text: str) -> tuple[str, str, str]:
    match = _CONDITION.match(text)
    if not match or not match.group(1):
        raise ConfigError(f"--where {text!r}: write KEY=VALUE (or !=, <, <=, >, >=), e.g. model=cnn or loss<0.5")
    column, op, value = match.groups()
    return column, "=" if op == "==" else op, value


def _compare(value: Any, op: str, wanted: str) -> bool:
    number = as_number(wanted)
    if is_number(value) and number is not None:
        left, right = float(value), number
        return {
            "=": left == right,
            "!=": left != right,
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
        }[op]
    text = format_value(value)
    if op in ("=", "!="):
        same = fnmatch.fnmatchcase(text, wanted) if _is_glob(wanted) else text == wanted
        return same if op == "=" else not same
    if value is None:
        return False
    return {"<": text < wanted, "<=": text <= wanted, ">": text > wanted, ">=": text >= wanted}[op]


def as_number(text: str) -> float | None:
    """``text`` as a float, None if it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before strings, each in their natural order (NaN after the numbers)."""
    if is_number(value):
        return (1, 0.0) if isinstance(value, float) and math.isnan(value) else (0, value)
    return (2, format_value(value))


# --- picking -----------------------------------------------------------------------------------
def best_column(results: Results, metric: str | None = None) -> str | None:
    """``metric`` (checked), else the first numeric metric column, else None."""
    if metric:
        kind, _key = results._column_source(metric)
        if kind == "metric" and metric in results.numeric_columns():
            return metric
        raise ConfigError(f"--metric {metric!r} is not a numeric result column; numeric: {results.numeric_columns()}")
    numeric = results.numeric_columns()
    return numeric[0] if numeric else None


def lower_is_better(column: str) -> bool:
    """A guess from the name (loss, error, time, ...): used only to pick "the best rows". A bare
    number a task returns counts as an objective to minimise, as Hydra's optimising sweepers
    (Optuna, Nevergrad, Ax) take it by default."""
    return column == RETURN or bool(_LOWER_IS_BETTER.search(column))


def select(
    results: Results,
    *,
    where: Sequence[str] = (),
    sort: str | None = None,
    top: int | None = None,
    columns: str | None = None,
) -> tuple[Results, list[str]]:
    """What ``launcher-core results`` shows: filtered, sorted, cut rows and their columns."""
    chosen = results.select_columns(columns) if columns else results.columns
    selected = results.where(*where)
    if sort:
        selected = selected.sort(sort)
    if top is not None:
        if top < 0:
            raise ConfigError(f"--top {top}: give a number of rows >= 0")
        selected = selected.top(top)
    return selected, chosen
