"""``launcher-core report SWEEP``: one self-contained HTML page about a sweep.

Status counts, failed jobs with their reasons and log tails, a timeline per host and slot, a
duration histogram, the results table (sortable), a chosen metric against each swept key and a
parallel-coordinates view when three or more keys vary.

The plots are plotly figures (the ``report`` extra). The page inlines plotly.js once (~4.7 MB),
so it works offline (no CDN, nothing fetched) and stays interactive: hover a point to see its
job and overrides, zoom the timeline, brush the parallel-coordinates axes. Each figure's data is
written as JSON with ``</`` escaped, so no value from a job can end a ``<script>`` early.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.jobs import LAUNCHER_DIR, STDERR_FILE, STDOUT_FILE
from launcher_core.overrides import format_value
from launcher_core.results.formats import format_duration, text_cells
from launcher_core.results.loading import load
from launcher_core.results.table import STATE, ResultRow, Results, best_column, is_number

LOG_TAIL_LINES = 30
MAX_FAILED_SHOWN = 50  # failed jobs with their log tails on the page (all are counted)
COLORS = {"completed": "#2ca02c", "failed": "#d62728", "cancelled": "#ff7f0e", "running": "#1f77b4"}
QUEUED_COLOR = "#c7c7c7"


def write_report(sweep_dir: Path, out: Path, *, metric: str | None = None, metrics_file: str | None = None) -> Path:
    """Build the page for the sweep and write it to ``out`` (atomically); return the path."""
    table = load(sweep_dir, metrics_file=metrics_file)
    page = build_report(table, metric)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def build_report(table: Results, metric: str | None = None) -> str:
    """The whole page as a string."""
    go = _plotly()
    column = best_column(table, metric)
    sections = [
        _header(table),
        _status(table),
        _failed(table),
        _section("Timeline", _figure(_timeline(go, table), "timeline"), "when jobs queued and ran, per host and slot"),
        _section("Durations", _figure(_histogram(go, table), "durations")),
        _section("Results", _results_table(table), "click a column header to sort"),
    ]
    if column is None:
        sections.append(_section("Metrics", "<p>No job returned a number (try <code>--metrics FILE</code>).</p>"))
    else:
        figures = [_figure(f, f"metric-{i}") for i, f in enumerate(_metric_plots(go, table, column))]
        sections.append(_section(f"{column} against each swept key", "<div class=grid>" + "".join(figures) + "</div>"))
        if len(table.swept_keys) >= 3:
            sections.append(_section("Parallel coordinates", _figure(_parallel(go, table, column), "parcoords")))
    title = f"sweep {table.meta.get('sweep_id', table.sweep_dir.name)}"
    return _PAGE.format(
        title=html.escape(title),
        style=_STYLE,
        plotly=_plotly_js(),
        body="\n".join(sections),
        script=_SORT_SCRIPT,
    )


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise ConfigError("launcher-core report needs plotly: pip install 'hydra-remote-launcher[report]'") from exc
    return go


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


# --- sections ---------------------------------------------------------------------------------
def _section(title: str, body: str, note: str = "") -> str:
    note_html = f"<p class=note>{html.escape(note)}</p>" if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{note_html}{body}</section>"


def _header(table: Results) -> str:
    meta = table.meta
    launched = meta.get("launched_at")
    facts = [
        ("backend", meta.get("backend", "?")),
        ("sweep dir", str(table.sweep_dir)),
        ("launched", dt.datetime.fromtimestamp(launched).strftime("%Y-%m-%d %H:%M:%S") if launched else "-"),
        ("code", (str(meta.get("code_commit") or "-")[:10]) + (" +dirty" if meta.get("code_dirty") else "")),
        ("swept keys", ", ".join(table.swept_keys) or "-"),
    ]
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts)
    title = html.escape(f"sweep {meta.get('sweep_id', table.sweep_dir.name)}")
    return f"<header><h1>{title}</h1><dl>{items}</dl></header>"


def _status(table: Results) -> str:
    counts: dict[str, int] = {}
    for row in table:
        state = row.state.split(" ")[0]
        counts[state] = counts.get(state, 0) + 1
    cards = [f"<div class=card><b>{len(table)}</b><span>jobs</span></div>"]
    for state in ("completed", "failed", "cancelled", "running", "submitted", "pending"):
        if counts.get(state):
            color = COLORS.get(state, "#7f7f7f")
            cards.append(
                f"<div class='card state-{state}' style='border-color:{color}'><b>{counts[state]}</b>"
                f"<span>{state}</span></div>"
            )
    return _section("Status", "<div class=cards>" + "".join(cards) + "</div>")


def _failed(table: Results) -> str:
    failed = [r for r in table if r.failed]
    if not failed:
        return ""
    items = []
    for row in failed[:MAX_FAILED_SHOWN]:
        tail = _log_tail(row)
        items.append(
            f"<details class=failed><summary>#{row.num} <code>{html.escape(' '.join(row.overrides))}</code>: "
            f"{html.escape(row.reason or row.state)}</summary><pre>{html.escape(tail)}</pre></details>"
        )
    more = f"<p>... and {len(failed) - MAX_FAILED_SHOWN} more.</p>" if len(failed) > MAX_FAILED_SHOWN else ""
    return _section(f"Failed jobs ({len(failed)})", "".join(items) + more, "click a job for the end of its log")


def _log_tail(row: ResultRow) -> str:
    for name in (STDERR_FILE, STDOUT_FILE):
        path = row.output_dir / LAUNCHER_DIR / name
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        if text.strip():
            return f"--- {name} (last {LOG_TAIL_LINES} lines) ---\n" + "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
    return "no log here (the job's files are not pulled yet)" if not row.local else "the job's logs are empty"


def _results_table(table: Results) -> str:
    columns = table.columns
    cells = text_cells(table, columns)
    raw = table.records(columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for line, record in zip(cells, raw):
        tds = []
        for column, text in zip(columns, line):
            value = record[column]
            sort = value if is_number(value) and math.isfinite(float(value)) else ""
            cls = f" class='state-{html.escape(text.split(' ')[0])}'" if column == STATE else ""
            tds.append(f"<td data-sort='{sort}'{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    rows = "".join(body)
    return f"<div class=scroll><table id=results><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"


# --- figures ----------------------------------------------------------------------------------
def _figure(fig: Any, div_id: str) -> str:
    """A figure as a div plus the script that draws it (data JSON with ``</`` escaped)."""
    spec = fig.to_plotly_json()
    data = json.dumps(spec.get("data", []), cls=_plotly_encoder()).replace("</", "<\\/")
    layout = json.dumps(spec.get("layout", {}), cls=_plotly_encoder()).replace("</", "<\\/")
    config = json.dumps({"displaylogo": False, "responsive": True})
    return (
        f"<div id='{div_id}' class=plot></div><script>Plotly.newPlot('{div_id}', {data}, {layout}, {config});</script>"
    )


def _plotly_encoder() -> type[json.JSONEncoder]:
    from plotly.utils import PlotlyJSONEncoder

    return PlotlyJSONEncoder


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="milliseconds")


def _lanes(table: Results) -> dict[int, str]:
    """A lane per host and slot, rebuilt from the times: each job takes the first lane of its
    host that is free when it starts (what a slot is)."""
    lanes: dict[int, str] = {}
    ends: dict[str, list[float]] = {}
    ran = sorted((r for r in table if r.started_at is not None), key=lambda r: (r.host or "", r.started_at))
    for row in ran:
        host = row.host or "?"
        host_ends = ends.setdefault(host, [])
        start = float(row.started_at or 0)
        end = float(row.finished_at or start)
        slot = next((i for i, e in enumerate(host_ends) if e <= start + 1e-6), len(host_ends))
        if slot == len(host_ends):
            host_ends.append(end)
        else:
            host_ends[slot] = end
        lanes[row.num] = f"{host} · slot {slot + 1}"
    return lanes


def _timeline(go: Any, table: Results) -> Any:
    lanes = _lanes(table)
    fig = go.Figure()
    queued = [r for r in table if r.num in lanes and (r.submitted_at or r.created_at)]
    if queued:
        fig.add_trace(
            go.Bar(
                name="queued",
                orientation="h",
                y=[lanes[r.num] for r in queued],
                base=[_iso(float(r.submitted_at or r.created_at or 0)) for r in queued],
                x=[_queued_ms(r) for r in queued],
                marker_color=QUEUED_COLOR,
                opacity=0.5,
                hovertext=[f"#{r.num} queued" for r in queued],
                hoverinfo="text",
            )
        )
    for state in ("completed", "failed", "cancelled", "running"):
        rows = [r for r in table if r.num in lanes and r.state.split(" ")[0] == state]
        if not rows:
            continue
        fig.add_trace(
            go.Bar(
                name=state,
                orientation="h",
                y=[lanes[r.num] for r in rows],
                base=[_iso(float(r.started_at or 0)) for r in rows],
                x=[max(1.0, (r.duration_s or 0) * 1000) for r in rows],
                marker_color=COLORS[state],
                hovertext=[_hover(table, r) for r in rows],
                hoverinfo="text",
            )
        )
    height = 160 + 22 * len(set(lanes.values()))
    fig.update_layout(barmode="overlay", xaxis_type="date", height=min(height, 1200), margin={"t": 20, "l": 10})
    fig.update_yaxes(autorange="reversed", categoryorder="category ascending")
    return fig


def _queued_ms(row: ResultRow) -> float:
    return max(0.0, float(row.started_at or 0) - float(row.submitted_at or row.created_at or 0)) * 1000


def _histogram(go: Any, table: Results) -> Any:
    fig = go.Figure()
    for state in ("completed", "failed"):
        durations = [r.duration_s for r in table if r.duration_s is not None and r.state.split(" ")[0] == state]
        if durations:
            fig.add_trace(go.Histogram(x=durations, name=state, marker_color=COLORS[state], opacity=0.75))
    fig.update_layout(barmode="stack", xaxis_title="duration (s)", yaxis_title="jobs", height=320, margin={"t": 20})
    return fig


def _hover(table: Results, row: ResultRow) -> str:
    params = ", ".join(f"{k}={format_value(row.params.get(k))}" for k in table.swept_keys)
    extra = f"<br>{html.escape(row.reason)}" if row.reason else ""
    return f"#{row.num} {html.escape(params)}<br>{row.state}, {format_duration(row.duration_s)}{extra}"


def _metric_plots(go: Any, table: Results, column: str) -> list[Any]:
    """One plot per swept key: a scatter for numeric keys (log axis over wide positive ranges),
    a box with every point for the others."""
    rows = [r for r in table if is_number(table.value(r, column))]
    figures = []
    for key in table.swept_keys:
        xs = [r.params.get(key) for r in rows]
        ys = [table.value(r, column) for r in rows]
        hover = [_hover(table, r) + f"<br>{html.escape(column)}={format_value(y)}" for r, y in zip(rows, ys)]
        numeric = bool(xs) and all(is_number(x) for x in xs)
        if numeric:
            trace = go.Scatter(x=xs, y=ys, mode="markers", hovertext=hover, hoverinfo="text", marker={"size": 9})
        else:
            trace = go.Box(
                x=[format_value(x) for x in xs],
                y=ys,
                boxpoints="all",
                jitter=0.3,
                pointpos=0,
                hovertext=hover,
                hoverinfo="text",
            )
        fig = go.Figure(trace)
        log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 100
        fig.update_layout(
            xaxis_title=key,
            yaxis_title=column,
            height=340,
            margin={"t": 30},
            showlegend=False,
            xaxis_type="log" if log_x else None,
            title={"text": f"{column} by {key}", "x": 0.5},
        )
        figures.append(fig)
    return figures


def _parallel(go: Any, table: Results, column: str) -> Any:
    rows = [r for r in table if is_number(table.value(r, column))]
    dims = [_dimension(key, [r.params.get(key) for r in rows]) for key in table.swept_keys]
    ys = [float(table.value(r, column)) for r in rows]
    dims.append({"label": column, "values": ys})
    line = {"color": ys, "colorscale": "Viridis", "showscale": True}
    fig = go.Figure(go.Parcoords(line=line, dimensions=dims))
    fig.update_layout(height=420, margin={"t": 50, "l": 60, "r": 60})
    return fig


def _dimension(key: str, values: Sequence[Any]) -> dict[str, Any]:
    """A parcoords axis: numbers as they are, anything else as evenly spaced labelled ticks."""
    if values and all(is_number(v) for v in values):
        return {"label": key, "values": [float(v) for v in values]}
    labels = sorted({format_value(v) for v in values})
    index = {label: i for i, label in enumerate(labels)}
    return {
        "label": key,
        "values": [index[format_value(v)] for v in values],
        "tickvals": list(range(len(labels))),
        "ticktext": labels,
    }


# --- page -----------------------------------------------------------------------------------
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style>
<script>{plotly}</script>
</head><body>
{body}
<script>{script}</script>
</body></html>
"""

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 1em 2em; color: #222; }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
header dl { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; margin: 0; }
header dt { color: #666; } header dd { margin: 0; font-family: monospace; }
.note { color: #666; margin: 0 0 0.5em; font-size: 0.9em; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { border: 2px solid #999; border-radius: 6px; padding: 0.4em 1em; min-width: 5em; text-align: center; }
.card b { display: block; font-size: 1.6em; } .card span { color: #555; }
details.failed { margin: 0.3em 0; } details.failed summary { cursor: pointer; }
details.failed pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; max-height: 24em; }
.scroll { max-height: 36em; overflow: auto; border: 1px solid #ddd; }
table#results { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
table#results th { position: sticky; top: 0; background: #f0f0f0; cursor: pointer; user-select: none; }
table#results th, table#results td { padding: 0.2em 0.6em; border-bottom: 1px solid #eee; text-align: left; }
table#results th.asc::after { content: " \\25B2"; } table#results th.desc::after { content: " \\25BC"; }
td.state-failed { color: #d62728; } td.state-completed { color: #2ca02c; } td.state-cancelled { color: #ff7f0e; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 1em; }
"""

# sorts the results table by a clicked column (numbers by value, the rest as text)
_SORT_SCRIPT = """
document.querySelectorAll('table#results th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var asc = !th.classList.contains('asc');
    th.parentNode.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col], y = b.cells[col];
      var nx = x.dataset.sort, ny = y.dataset.sort, r;
      if (nx !== '' && ny !== '') { r = parseFloat(nx) - parseFloat(ny); }
      else if (nx !== '' || ny !== '') { return nx !== '' ? -1 : 1; }
      else { r = x.textContent.localeCompare(y.textContent); }
      return asc ? r : -r;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""
