"""A sweep's results as rows: ``launcher-core results`` and the notebook API.

One row per job, read from the local sweep dir and its state store only (so it works offline,
on every backend, once jobs are pulled): the job number, the value of every swept key (parsed
as Hydra parses the override: ``lr=1e-3`` is the float 0.001), state, duration, host, and the
job's return value (a number or string as one ``return`` column, a dict, nested or flat, as one
column per key, ``{"val": {"acc": 0.9}}`` -> ``val.acc``) or, with ``metrics_file``, the keys of
a JSON/YAML file the task wrote into its output dir.

    >>> from launcher_core import results
    >>> table = results.load("multirun/2026-11-23/10-00-00")
    >>> table.sort("-val/acc")[:3]
    >>> df = table.to_pandas()            # with the pandas extra
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE
from launcher_core.state import JobRow, JobState, StateStore

NUM, STATE, DURATION, HOST, REASON = "#", "state", "duration", "host", "reason"
RETURN = "return"  # the column of a return value that is not a dict
BUILTIN_COLUMNS = (NUM, STATE, DURATION, HOST, REASON)
FORMATS = ("table", "csv", "json", "markdown")
MAX_CELL = 200  # characters of a non-scalar value (list, object repr) kept in a cell
RICH_MAX_ROWS = 2000  # larger tables print as plain text even on a terminal (rich needs ~1 ms a row)
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
        self.metric_keys = _union_keys(r.values for r in rows)
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
        """``#``, the swept keys, state, duration, host, the metric columns, and ``reason`` when a
        job failed. A metric named like another column is shown as ``return.<name>``."""
        cols = [NUM, *self.swept_keys, STATE, DURATION, HOST]
        cols += [self._metric_column(k) for k in self.metric_keys]
        if any(r.failed or r.reason for r in self.rows):
            cols.append(REASON)
        return cols

    def _metric_column(self, key: str) -> str:
        clash = key in self.swept_keys or key in BUILTIN_COLUMNS
        return f"{RETURN}.{key}" if clash and key != RETURN else key

    def _column_source(self, column: str) -> tuple[str, str]:
        """(kind, key) of a column name: kind is builtin, param or metric."""
        if column in (NUM, STATE, DURATION, HOST, REASON):
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
        getters = [self._getter(c) for c in cols]
        return [{c: g(r) for c, g in zip(cols, getters)} for r in self.rows]

    def _getter(self, column: str) -> Any:
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
            get = self._getter(column)
            rows = [r for r in rows if _compare(get(r), op, wanted)]
        return self._with(rows)

    def sort(self, spec: str) -> Results:
        """Sorted by comma-separated columns, ``-col`` descending; missing values last."""
        rows = list(self.rows)
        for part in reversed([p.strip() for p in spec.split(",") if p.strip()]):
            descending = part.startswith("-")
            get = self._getter(part.lstrip("-"))
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


# --- loading ----------------------------------------------------------------------------------
def load(sweep_dir: str | Path, metrics_file: str | None = None, *, values: bool = True) -> Results:
    """The rows of the sweep in ``sweep_dir`` (a dir holding ``.launcher/state.sqlite``).

    ``metrics_file``: a JSON or YAML file, relative to each job's output dir, whose keys become
    columns (over the return value's; a list of dicts, e.g. one per epoch, gives its last one).
    ``values=False`` skips reading results (names and states only, for ``link``).
    """
    sweep_dir = Path(sweep_dir)
    if not StateStore.exists_in(sweep_dir):
        raise ConfigError(f"{sweep_dir} is not a sweep dir: it has no {LAUNCHER_DIR}/state.sqlite")
    _check_metrics_file(metrics_file)
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        meta = store.meta()
        job_rows = store.jobs()
    local_backend = meta.get("backend") == "local_pool" or _shared_fs_slurm(meta)
    warnings: list[str] = []
    rows = [_row(j, local_backend, metrics_file if values else None, values, warnings) for j in job_rows]
    return Results(sweep_dir, rows, meta=meta, warnings=_summarise_warnings(warnings))


def rows_from_returns(sweep_dir: Path, jobs: Iterable[tuple[int, Sequence[str], Any]]) -> Results:
    """Rows of jobs whose ``JobReturn`` is in memory (the end of a launch): no file is read."""
    rows = []
    for num, overrides, ret in jobs:
        values, reason, failed = _from_return(ret)
        rows.append(
            ResultRow(
                num=num,
                job_id="",
                params=parse_overrides(overrides),
                state="failed" if failed else "completed",
                duration_s=None,
                host=None,
                values=values,
                reason=reason,
                output_dir=Path(sweep_dir),
                overrides=list(overrides),
            )
        )
    return Results(sweep_dir, rows)


def _shared_fs_slurm(meta: Mapping[str, Any]) -> bool:
    config = meta.get("backend_config") or {}
    return meta.get("backend") == "slurm" and not (isinstance(config, Mapping) and config.get("login_host"))


def _row(job: JobRow, local_backend: bool, metrics_file: str | None, values: bool, warnings: list[str]) -> ResultRow:
    shown = job.outcome if job.state is JobState.PULLED and job.outcome else job.state
    local = job.state is JobState.PULLED or local_backend
    state = shown.value
    if shown in (JobState.COMPLETED, JobState.FAILED) and not local:
        state += " (not pulled)"
    row = ResultRow(
        num=job.idx,
        job_id=job.job_id,
        params=parse_overrides(job.overrides),
        state=state,
        duration_s=_duration(job),
        host=job.host or (job.handle or {}).get("host"),
        values={},
        reason=job.exit_reason,
        output_dir=job.output_dir,
        created_at=job.created_at,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        local=local,
        pull_mode=job.pull_mode,
        overrides=list(job.overrides),
    )
    if values and local and shown.is_terminal:
        _read_values(row, metrics_file, warnings)
    return row


def _duration(job: JobRow) -> float | None:
    start = job.started_at or job.submitted_at
    if start is None:
        return None
    if job.finished_at is not None:
        return max(0.0, job.finished_at - start)
    return None if job.state.is_terminal else job.duration_s


def _read_values(row: ResultRow, metrics_file: str | None, warnings: list[str]) -> None:
    from launcher_core.runtime.worker import load_job_return

    result_path = row.output_dir / LAUNCHER_DIR / RESULT_FILE
    if result_path.exists():
        try:
            ret = load_job_return(result_path)
        except Exception as exc:  # noqa: BLE001 - e.g. a return value of a class not importable here
            warnings.append(f"{RESULT_FILE} unreadable here ({type(exc).__name__}: {exc})")
        else:
            row.values, reason, _failed = _from_return(ret)
            if reason and not row.reason:
                row.reason = reason
    if metrics_file:
        row.values.update(_read_metrics(row.output_dir / metrics_file, warnings))


def _from_return(ret: Any) -> tuple[dict[str, Any], str | None, bool]:
    """(metric values, failure reason, failed) of a ``JobReturn``."""
    from hydra.core.utils import JobStatus

    if ret is None:
        return {}, None, False
    if ret.status == JobStatus.FAILED:
        err = ret._return_value
        lines = str(err).splitlines()
        return {}, f"{type(err).__name__}: {lines[0] if lines else ''}", True
    return flatten_return(ret._return_value), None, False


def _read_metrics(path: Path, warnings: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        warnings.append(f"metrics file unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        return {}
    except Exception as exc:  # noqa: BLE001 - yaml's own errors
        warnings.append(f"metrics file unreadable ({type(exc).__name__})")
        return {}
    if isinstance(data, list) and data and all(isinstance(d, Mapping) for d in data):
        data = data[-1]  # one dict per epoch/step: the last one
    if not isinstance(data, Mapping):
        warnings.append(f"metrics file holds a {type(data).__name__}, not a mapping")
        return {}
    return flatten_return(data)


def _check_metrics_file(metrics_file: str | None) -> None:
    if metrics_file is None:
        return
    path = Path(metrics_file)
    if not metrics_file or path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"--metrics {metrics_file!r}: give a path relative to each job's output dir")
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"--metrics {metrics_file!r}: only .json, .yaml and .yml files are read")


def _summarise_warnings(warnings: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for w in warnings:
        counts[w] = counts.get(w, 0) + 1
    return [f"{n} job(s): {w}" for w, n in counts.items()]


# --- values -----------------------------------------------------------------------------------
def flatten_return(value: Any, prefix: str = "") -> dict[str, Any]:
    """Columns of a return value: a mapping (also OmegaConf's) gives one per leaf key, joined
    with ``.``; anything else one ``return`` column (None: none)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = f"{prefix}{key}"
            if isinstance(item, Mapping) and item:
                out.update(flatten_return(item, name + "."))
            else:
                out[name] = plain_value(item)
        return out
    if value is None and not prefix:
        return {}
    return {prefix or RETURN: plain_value(value)}


def plain_value(value: Any) -> Any:
    """A value a table can show: numbers, strings, bools and None stay; numpy/torch scalars
    become Python numbers; anything else its (shortened) JSON or repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) in ((), None) and getattr(value, "size", 1) == 1:
        try:
            scalar = item()
            if isinstance(scalar, (bool, int, float, str)):
                return scalar
        except Exception:  # noqa: BLE001 - not a scalar after all
            pass
    try:
        text = json.dumps(value, default=str) if isinstance(value, (list, tuple, Mapping)) else repr(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(value: Any) -> str:
    """How a value is printed in tables and names: floats in 6 significant digits (0.001, 1e-05)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else str(value)
    return str(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


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
        REASON: row.reason,
    }[key]


def _union_keys(dicts: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        for k in d:
            seen.setdefault(k, None)
    return list(seen)


def varying_keys(params: Iterable[Mapping[str, Any]]) -> list[str]:
    """Keys whose value differs between jobs, in first-seen order (all keys if none differ)."""
    params = list(params)
    keys = _union_keys(params)
    missing = object()
    varying = [k for k in keys if len({repr(p.get(k, missing)) for p in params}) > 1]
    return varying or keys


# --- overrides -> values --------------------------------------------------------------------
_SIMPLE_KEY = re.compile(r"[A-Za-z_][\w.\-/]*")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][\w\-]*")
_SPECIAL_WORDS = {"true", "false", "null", "inf", "nan"}


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "model=cnn", "+tag=a"]`` -> ``{"lr": 0.001, "model": "cnn", "tag": "a"}``."""
    return dict(parse_override(o) for o in overrides)


@functools.lru_cache(maxsize=65536)
def parse_override(text: str) -> tuple[str, Any]:
    """Key and value of one override, with the value typed as Hydra types it. Common simple
    forms are parsed here (a 10,000-job sweep loads in well under a second); the rest go through
    Hydra's own parser."""
    key, sep, raw = text.partition("=")
    bare_key = key.lstrip("+")
    if sep and _SIMPLE_KEY.fullmatch(bare_key):
        if _INT.fullmatch(raw):
            return bare_key, int(raw)
        if _FLOAT.fullmatch(raw):
            return bare_key, float(raw)
        if _WORD.fullmatch(raw) and raw.lower() not in _SPECIAL_WORDS:
            return bare_key, raw
    return _hydra_parse(text)


def _hydra_parse(text: str) -> tuple[str, Any]:
    try:
        override = _parser().parse_override(text)
        return override.key_or_group, override.value()
    except Exception:  # noqa: BLE001 - an override Hydra accepted at launch; keep its text if not now
        key, _sep, raw = text.partition("=")
        return key.lstrip("+~"), raw


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


# --- conditions and sorting ---------------------------------------------------------------------
_CONDITION = re.compile(r"^\s*([^<>=!]+?)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")


def _parse_condition(text: str) -> tuple[str, str, str]:
    match = _CONDITION.match(text)
    if not match or not match.group(1):
        raise ConfigError(f"--where {text!r}: write KEY=VALUE (or !=, <, <=, >, >=), e.g. model=cnn or loss<0.5")
    column, op, value = match.groups()
    return column, "=" if op == "==" else op, value


def _compare(value: Any, op: str, wanted: str) -> bool:
    number = _as_number(wanted)
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


def _as_number(text: str) -> float | None:
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


# --- picking and printing -------------------------------------------------------------------
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


def render(results: Results, columns: Sequence[str], fmt: str) -> str:
    """The rows as text: table (plain; rich via :func:`print_results` on a terminal), csv,
    json or markdown."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(results.records(columns), indent=1, default=str, allow_nan=True) + "\n"
    cells = _text_cells(results, columns)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return buf.getvalue()
    if fmt == "markdown":
        return _markdown(columns, cells)
    return _plain_table(columns, cells)


def _text_cells(results: Results, columns: Sequence[str]) -> list[list[str]]:
    getters = [results._getter(c) for c in columns]
    out = []
    for row in results.rows:
        line = []
        for column, get in zip(columns, getters):
            value = get(row)
            line.append(format_duration(value) if column == DURATION else format_value(value))
        out.append(line)
    return out


def _plain_table(columns: Sequence[str], cells: list[list[str]]) -> str:
    cells = [[c.replace("\n", " ") for c in line] for line in cells]
    widths = [max([len(col), *(len(line[i]) for line in cells)]) for i, col in enumerate(columns)]
    right = [all(_as_number(line[i]) is not None or not line[i] for line in cells) for i in range(len(columns))]

    def fmt(line: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(line, widths, right)]
        return "  ".join(parts).rstrip()

    lines = [fmt(columns), "  ".join("-" * w for w in widths)]
    lines += [fmt(line) for line in cells]
    return "\n".join(lines) + "\n"


def _markdown(columns: Sequence[str], cells: list[list[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def print_results(results: Results, columns: Sequence[str], fmt: str, stream: Any = None) -> None:
    """Print as ``render`` does; a table on a terminal is drawn with rich (up to RICH_MAX_ROWS)."""
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if fmt == "table" and tty and len(results) <= RICH_MAX_ROWS:
        _rich_table(results, columns, stream)
    else:
        stream.write(render(results, columns, fmt))
    for warning in results.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _rich_table(
    results: Results, columns: Sequence[str], stream: Any, title: str | None = None, width: int | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    cells = _text_cells(results, columns)
    for i, col in enumerate(columns):
        numeric = all(_as_number(line[i]) is not None or not line[i] for line in cells)
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    state_at = columns.index(STATE) if STATE in columns else -1
    for line in cells:
        texts = [Text(c) for c in line]
        if state_at >= 0:
            texts[state_at].stylize(_state_style(line[state_at]))
        table.add_row(*texts)
    Console(file=stream, width=width).print(table)


def _state_style(state: str) -> str:
    for name, style in (("failed", "red"), ("cancelled", "yellow"), ("completed", "green"), ("running", "blue")):
        if state.startswith(name):
            return style
    return "dim"


# --- the end of a launch --------------------------------------------------------------------
BEST_ROWS = 5


def print_best_rows(sweep_dir: Path, jobs: Iterable[tuple[int, Sequence[str], Any]], stream: Any = None) -> None:
    """After a ``wait=true`` sweep: the best few jobs by the first numeric result column, and
    the command that prints the full table. Prints nothing when no job returned a number."""
    results = rows_from_returns(sweep_dir, jobs)
    column = best_column(results)
    if column is None:
        return
    ascending = lower_is_better(column)
    ok = results.where(f"{STATE}=completed")
    best = ok.sort(column if ascending else f"-{column}").top(BEST_ROWS)
    shown = [NUM, *results.swept_keys, *[c for c in results.numeric_columns() if c not in results.swept_keys][:4]]
    stream = stream or sys.stderr
    title = f"best {len(best)} of {len(ok)} by {column} ({'lowest' if ascending else 'highest'} first)"
    try:
        _rich_table(best, shown, stream, title=title, width=120)
    except Exception:  # noqa: BLE001 - a summary must never fail a finished sweep
        stream.write(title + "\n" + render(best, shown, "table"))
    stream.write(f"full table: launcher-core results {sweep_dir}\n")
