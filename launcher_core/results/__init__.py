"""A sweep's results as rows: ``launcher-core results | report | link | files`` and the notebook API.

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

The package: :mod:`.table` (the row/table model, selecting, sorting), :mod:`.loading` (rows from
a sweep dir), :mod:`.formats` (table/csv/json/markdown output), :mod:`.report` (the HTML page),
:mod:`.browse` (``link`` and ``files``), :mod:`.commands` (the ``launcher-core`` sub-commands).
This module exports the public API of the first three (report, browse and commands are imported
where they are used: they are not needed to read a table).
"""

from __future__ import annotations

from launcher_core.overrides import format_value, parse_override, parse_overrides
from launcher_core.results.formats import (
    BEST_ROWS,
    FORMATS,
    RICH_MAX_ROWS,
    format_duration,
    print_best_rows,
    print_results,
    render,
    text_cells,
)
from launcher_core.results.loading import (
    MAX_CELL,
    flatten_return,
    load,
    plain_value,
    results_are_local,
    rows_from_returns,
)
from launcher_core.results.table import (
    BUILTIN_COLUMNS,
    DURATION,
    HOST,
    NUM,
    REASON,
    RETURN,
    STATE,
    ResultRow,
    Results,
    as_number,
    best_column,
    is_number,
    lower_is_better,
    select,
    union_keys,
    varying_keys,
)

__all__ = [
    "BEST_ROWS",
    "BUILTIN_COLUMNS",
    "DURATION",
    "FORMATS",
    "HOST",
    "MAX_CELL",
    "NUM",
    "REASON",
    "RETURN",
    "RICH_MAX_ROWS",
    "STATE",
    "ResultRow",
    "Results",
    "as_number",
    "best_column",
    "flatten_return",
    "format_duration",
    "format_value",
    "is_number",
    "load",
    "lower_is_better",
    "parse_override",
    "parse_overrides",
    "plain_value",
    "print_best_rows",
    "print_results",
    "render",
    "results_are_local",
    "rows_from_returns",
    "select",
    "text_cells",
    "union_keys",
    "varying_keys",
]
