"""Printing a sweep's results: ``--format table|csv|json|markdown``, rich tables on a terminal,
and the best rows at the end of a ``wait=true`` launch."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.overrides import format_value
from launcher_core.results.loading import rows_from_returns
from launcher_core.results.table import DURATION, NUM, STATE, Results, as_number, best_column, lower_is_better

FORMATS = ("table", "csv", "json", "markdown")
RICH_MAX_ROWS = 2000  # larger tables print as plain text even on a terminal (rich needs ~1 ms a row)


def format_duration(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``1:02:03``; empty for no duration."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(results: Results, columns: Sequence[str], fmt: str) -> str:
    """The rows as text: table (plain; rich via :func:`print_results` on a terminal), csv,
    json or markdown."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(results.records(columns), indent=1, default=str, allow_nan=True) + "\n"
    cells = text_cells(results, columns)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return buf.getvalue()
    if fmt == "markdown":
        return _markdown(columns, cells)
    return _plain_table(columns, cells)


def text_cells(results: Results, columns: Sequence[str]) -> list[list[str]]:
    """Each row's cells as the text a table shows (durations as ``1:02:03``)."""
    getters = [results.getter(c) for c in columns]
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
    right = [all(as_number(line[i]) is not None or not line[i] for line in cells) for i in range(len(columns))]

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
    cells = text_cells(results, columns)
    for i, col in enumerate(columns):
        numeric = all(as_number(line[i]) is not None or not line[i] for line in cells)
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
