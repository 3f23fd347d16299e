"""The ``launcher-core results | report | link | files`` sub-commands: their arguments
(:func:`add_commands`, which ``launcher_core.cli`` calls) and what each prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from launcher_core.results.browse import FileEntry, copy_files, find_files, job_names, link_sweep
from launcher_core.results.formats import FORMATS, print_results, render
from launcher_core.results.loading import load
from launcher_core.results.report import write_report
from launcher_core.results.table import NUM, ResultRow, Results, select
from launcher_core.sweeps import one_sweep


def cmd_results(args: argparse.Namespace) -> int:
    table = load(one_sweep(args.sweep), metrics_file=args.metrics)
    selected, columns = select(table, where=args.where, sort=args.sort, top=args.top, columns=args.columns)
    print_results(selected, columns, args.format)
    cost = table.meta.get("cost_usd") if table.meta else None
    if cost is not None:  # on stderr: the table on stdout stays machine-readable
        print(f"cost so far: ${float(cost):.2f} (the EC2 targets' instance-hours)", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    sweep_dir = one_sweep(args.sweep)
    out = Path(args.output) if args.output else sweep_dir / "report.html"
    path = write_report(sweep_dir, out, metric=args.metric, metrics_file=args.metrics)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    report = link_sweep(one_sweep(args.sweep), Path(args.dest), by)
    print(
        f"{args.dest}: {report.created} links created, {report.replaced} replaced, {report.unchanged} unchanged"
        + (f"; {len(report.skipped or [])} jobs have no local dir yet (pull them)" if report.skipped else "")
    )
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    sweep_dir = one_sweep(args.sweep)
    table, entries, notes = find_files(sweep_dir, args.pattern)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.copy:
        names = job_names(table, table.swept_keys)
        copied = copy_files(sweep_dir, entries, Path(args.copy), names)
        print(f"copied {copied} files of {len({e.num for e in entries})} jobs into {args.copy}")
        return 0
    _print_files(table.swept_keys, entries, args.format)
    if not entries:
        print(f"no file matches {args.pattern!r} in {len(table)} jobs", file=sys.stderr)
    return 0


def _print_files(keys: Sequence[str], entries: Iterable[FileEntry], fmt: str) -> None:
    columns = [NUM, *keys, "path", "size", "where"]
    rows = [
        ResultRow(
            num=e.num,
            job_id="",
            params=e.params,
            state="",
            duration_s=None,
            host=None,
            values={"path": str(e.local_path), "size": e.size},
            reason=None,
            output_dir=e.local_path,
            where=e.where,  # here, or on the backend
        )
        for e in entries
    ]
    table = Results(Path("."), rows, swept_keys=list(keys))
    table.metric_keys = ["path", "size"]  # also when nothing matched: the header stays
    if fmt == "table":
        for row in rows:
            row.values["size"] = _human_size(row.values["size"])
    sys.stdout.write(render(table, columns, fmt))


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


METRICS_HELP = "JSON/YAML file in each job's output dir to read metrics from (e.g. metrics.json)"


def add_commands(sub: Any) -> None:
    """Register results, report, link and files on the ``launcher-core`` subparsers."""
    results = sub.add_parser("results", help="one row per job: swept values, state, duration, host, returned metrics")
    results.add_argument("sweep", help="sweep dir or sweep id")
    results.add_argument("--sort", help="column(s) to sort by, comma-separated; --sort=-COL sorts descending")
    results.add_argument("--where", action="append", default=[], help="KEY=VALUE (or !=, <, <=, >, >=); repeatable")
    results.add_argument("--columns", help="comma-separated columns or globs to show, in that order")
    results.add_argument("--top", type=int, help="only the first N rows (after sorting)")
    results.add_argument("--format", choices=FORMATS, default="table")
    results.add_argument("--metrics", metavar="FILE", help=METRICS_HELP)
    results.set_defaults(func=cmd_results)

    report = sub.add_parser("report", help="a self-contained HTML page: status, timeline, results table, plots")
    report.add_argument("sweep", help="sweep dir or sweep id")
    report.add_argument("-o", "--output", help="where to write it (default: SWEEP/report.html)")
    report.add_argument("--metric", help="result column to plot (default: the first numeric one)")
    report.add_argument("--metrics", metavar="FILE", help=METRICS_HELP)
    report.set_defaults(func=cmd_report)

    link = sub.add_parser("link", help="symlinks named by config values (DEST/model=cnn,lr=0.001 -> job dir)")
    link.add_argument("sweep", help="sweep dir or sweep id")
    link.add_argument("dest", help="directory to put the links in")
    link.add_argument("--by", help="comma-separated keys to name links by (default: the swept keys)")
    link.set_defaults(func=cmd_link)

    files = sub.add_parser("files", help="files matching a glob in every job, local or still on the backend")
    files.add_argument("sweep", help="sweep dir or sweep id")
    files.add_argument("pattern", help="glob relative to each job's dir: 'ckpt/*.pt', '**/events.*'")
    files.add_argument("--copy", metavar="DEST", help="copy them to DEST/<job name>/ (fetching remote ones first)")
    files.add_argument("--format", choices=FORMATS, default="table")
    files.set_defaults(func=cmd_files)
