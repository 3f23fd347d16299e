"""``launcher-core`` / ``python -m launcher_core``: status, list, logs, cancel, clean, pull.

Every command works the same for every backend: it reads the sweep's state store and, where it
needs the backend (fresh states, live logs, cancelling), rebuilds it from the stored config
through the Backend contract.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher_core.backends.registry import capabilities_of, describe_handle, handle_of
from launcher_core.jobs import LAUNCHER_DIR, STDERR_FILE, STDOUT_FILE, Ending
from launcher_core.state import AttemptRow, JobRow, JobState, StateStore, SweepIndex
from launcher_core.sweeps import LOCK_WAIT_S, cancel_jobs, find_job, one_sweep, refresh_states, sweep_lock_waiting

STATE_STYLE = {
    "pending": "dim",
    "submitted": "cyan",
    "running": "blue",
    "completed": "green",
    "pulled": "green",
    "failed": "red",
    "cancelled": "yellow",
}


def _console() -> Any:
    from rich.console import Console

    return Console(width=160 if not sys.stdout.isatty() else None)


def _fmt_time(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --- status ----------------------------------------------------------------------------------
STATUS_ROWS = 50  # jobs listed by `status` without --all
RICH_MAX_ROWS = 2000


def render_status(sweep_dir: Path, console: Any, show_jobs: bool = True, limit: int | None = STATUS_ROWS) -> None:
    from rich.table import Table

    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        meta = store.meta()
        rows = store.jobs()
        earlier = store.attempts()
    counts: dict[str, int] = {}
    for r in rows:
        key = (r.outcome or r.state).value if r.state is JobState.PULLED else r.state.value
        counts[key] = counts.get(key, 0) + 1
    pulled = sum(r.state is JobState.PULLED for r in rows)
    summary = Table(title=f"sweep {meta.get('sweep_id', '?')} ({meta.get('backend', '?')})", show_header=True)
    for state in STATE_STYLE:
        if state != "pulled":
            summary.add_column(state, justify="right")
    summary.add_column("pulled", justify="right")
    summary.add_column("total", justify="right")
    summary.add_row(*[str(counts.get(s, 0)) for s in STATE_STYLE if s != "pulled"], str(pulled), str(len(rows)))
    console.print(summary)
    cost = f"   cost so far: ${float(meta['cost_usd']):.2f}" if meta.get("cost_usd") is not None else ""
    console.print(
        f"dir: {sweep_dir}   launched: {_fmt_time(meta.get('launched_at'))}   code: {_code_label(meta)}{cost}"
    )
    from launcher_core.collect.autopull import status_line

    detached = capabilities_of(meta).detached
    collecting = status_line(sweep_dir, detached, [r.state.value for r in rows], meta)
    if collecting:
        console.print(collecting, markup=False)
    if not show_jobs:
        return
    shown = _rows_to_show(rows, limit)
    cells = [_job_cells(r, meta, earlier.get(r.job_id, ())) for r in shown]
    columns = ("#", "job id", "state", "where", "duration", "exit reason", "overrides")
    if len(cells) > RICH_MAX_ROWS:  # rich lays out every cell: ~0.5 ms a row
        _print_plain_table(console, columns, [[text for text, _style in row] for row in cells])
    else:
        jobs = Table(show_header=True)
        for col in columns:
            jobs.add_column(col)
        for row in cells:
            jobs.add_row(*(f"[{style}]{text}[/]" if style else text for text, style in row))
        console.print(jobs)
    if len(shown) < len(rows):
        ids = {r.job_id for r in shown}
        hidden: dict[str, int] = {}
        for r in rows:
            if r.job_id not in ids:
                hidden[_state_label(r)] = hidden.get(_state_label(r), 0) + 1
        what = ", ".join(f"{n} {state}" for state, n in sorted(hidden.items()))
        console.print(
            f"{len(rows) - len(shown)} more jobs not shown ({what}): `launcher-core status {sweep_dir} --all` "
            f"lists every job, `launcher-core results {sweep_dir}` their results",
            markup=False,
        )


def _rows_to_show(rows: Sequence[JobRow], limit: int | None) -> list[JobRow]:
    """Every job up to ``limit``; beyond it the jobs that need attention (not completed) first,
    then completed ones up to the limit, in job order."""
    if limit is None or len(rows) <= limit:
        return list(rows)
    attention = [r for r in rows if (r.outcome or r.state) is not JobState.COMPLETED]
    if len(attention) >= limit:
        return attention[:limit]
    done = [r for r in rows if (r.outcome or r.state) is JobState.COMPLETED][: limit - len(attention)]
    return sorted([*attention, *done], key=lambda r: r.idx)


def _job_cells(r: JobRow, meta: Mapping[str, Any], earlier: Sequence[AttemptRow] = ()) -> list[tuple[str, str]]:
    """(text, rich style) of each column of a job's row."""
    style = STATE_STYLE.get((r.outcome or r.state).value, "")
    return [
        (str(r.idx), ""),
        (r.job_id[:10], ""),
        (_state_label(r, earlier), style),
        (_where(r, meta), ""),
        (_fmt_duration(r.duration_s), ""),
        (r.exit_reason or "", ""),
        (" ".join(r.overrides), ""),
    ]


def _print_plain_table(console: Any, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    console.file.write("\n".join(lines) + "\n")


def _state_label(row: JobRow, earlier: Sequence[AttemptRow] = ()) -> str:
    """``running``, ``completed (pulled)``, ``completed (pulled, cleaned)``,
    ``completed (attempt 2; attempt 1 lost: node failure; pulled)``, ``failed (lost: runner died)``."""
    notes = [f"attempt {row.attempt}"] if row.attempt > 1 or earlier else []
    notes += [a.describe() for a in earlier]
    if row.ending and row.ending.startswith((Ending.LOST.value, Ending.OUT_OF_MEMORY.value)):
        notes.append(row.ending)
    if row.state is JobState.PULLED:
        notes.append(f"pulled{', cleaned' if row.cleaned_at is not None else ''}")
    state = (row.outcome or row.state).value if row.state is JobState.PULLED else row.state.value
    return f"{state} ({'; '.join(notes)})" if notes else state


def _where(row: JobRow, meta: Mapping[str, Any]) -> str:
    """What the backend calls the job (a Slurm job id, an instance id), else its host."""
    handle = row.handle or {}
    return describe_handle(meta, handle) or row.host or handle_of(meta, handle).host_label() or "-"


def cmd_status(args: argparse.Namespace) -> int:
    console = _console()
    sweep_dir = one_sweep(args.sweep)
    while True:
        if not args.offline:
            refresh_states(sweep_dir)
        if args.watch:
            console.clear()
        render_status(sweep_dir, console, show_jobs=not args.summary, limit=None if args.all else STATUS_ROWS)
        if not args.watch:
            return 0
        time.sleep(args.interval)


# --- list / history --------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    index = SweepIndex()
    try:
        sweeps = index.sweeps()[: args.limit]
    finally:
        index.close()
    table = Table(title="sweeps (newest first)")
    for col in ("sweep id", "backend", "jobs", "states", "launched", "code commit", "dir"):
        table.add_column(col)
    for sweep_id, sweep_dir, backend, launched in sweeps:
        if not StateStore.exists_in(sweep_dir):
            table.add_row(
                sweep_id, backend, "?", "[dim]state store missing[/]", _fmt_time(launched), "-", str(sweep_dir)
            )
            continue
        with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
            counts = store.counts()
            meta = store.meta()
        states = ", ".join(f"{n} {s.value}" for s, n in sorted(counts.items(), key=lambda kv: kv[0].value))
        commit = _code_label(meta)
        table.add_row(sweep_id, backend, str(sum(counts.values())), states, _fmt_time(launched), commit, str(sweep_dir))
    _console().print(table)
    return 0


def _code_label(meta: Mapping[str, Any]) -> str:
    """``1a2b3c4d5e +dirty``: the commit the sweep's last launch ran ("-" outside git)."""
    return str(meta.get("code_commit") or "-")[:10] + (" +dirty" if meta.get("code_dirty") else "")


# --- diff ------------------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    """What code differed between two sweeps (or, with one, what the sweep ran beyond its commit)."""
    from launcher_core.snapshots import describe_code_difference, sweep_code

    first = sweep_code(one_sweep(args.sweep))
    second = sweep_code(one_sweep(args.other)) if args.other else None
    sys.stdout.write(describe_code_difference(first, second))
    return 0


# --- logs ------------------------------------------------------------------------------------
def cmd_logs(args: argparse.Namespace) -> int:
    sweep_dir = one_sweep(args.sweep)
    stream = "stderr" if args.stderr else "stdout"
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        row = find_job(store.jobs(), args.job)
        meta = store.meta()
    local = row.output_dir / LAUNCHER_DIR / (STDERR_FILE if args.stderr else STDOUT_FILE)
    if row.state is JobState.PULLED or capabilities_of(meta).results_local:
        return _print_local(local, args.follow, row, sweep_dir)
    return _print_live(meta, row, stream, args.follow, sweep_dir)


def _print_local(path: Path, follow: bool, row: JobRow, sweep_dir: Path) -> int:
    offset = 0
    for _ in range(10**9 if follow else 1):
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()
        elif not follow:
            print(f"no log at {path}", file=sys.stderr)
            return 1
        if not follow or _job_finished(sweep_dir, row.job_id):
            return 0
        time.sleep(1.0)
    return 0


def _print_live(meta: dict, row: JobRow, stream: str, follow: bool, sweep_dir: Path) -> int:
    from launcher_core.backends import backend_for_meta

    backend = backend_for_meta(meta)
    try:
        data = backend.read_log(row.handle or {}, stream, 0)
        if data is None:  # this backend cannot read logs remotely: the pulled copy, if any
            local = row.output_dir / LAUNCHER_DIR / (STDERR_FILE if stream == "stderr" else STDOUT_FILE)
            return _print_local(local, follow, row, sweep_dir)
        offset = 0
        while True:
            offset += len(data)
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()
            if not follow:
                return 0
            refresh_states(sweep_dir)
            if _job_finished(sweep_dir, row.job_id):
                sys.stdout.write((backend.read_log(row.handle or {}, stream, offset) or b"").decode(errors="replace"))
                return 0
            time.sleep(1.0)
            data = backend.read_log(row.handle or {}, stream, offset) or b""
    finally:
        backend.close()


def _job_finished(sweep_dir: Path, job_id: str) -> bool:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        rows = store.jobs(job_ids=[job_id])
    return bool(rows) and rows[0].state.is_terminal


# --- cancel ----------------------------------------------------------------------------------
def cmd_cancel(args: argparse.Namespace) -> int:
    sweep_dir = one_sweep(args.sweep)
    cancelled = cancel_jobs(sweep_dir, args.jobs)
    if not cancelled:
        print("nothing to cancel: every selected job has already finished")
    else:
        print(f"cancelled {len(cancelled)} jobs: {' '.join('#' + str(r.idx) for r in cancelled)}")
    return 0


# --- clean -----------------------------------------------------------------------------------
PLAN_PATHS_SHOWN = 20  # job paths listed per location (all counted); sweep-level ones always shown


def cmd_clean(args: argparse.Namespace) -> int:
    sweep_dir = one_sweep(args.sweep)
    with sweep_lock_waiting(sweep_dir) as locked:
        if not locked:
            print(
                f"error: a pull process holds {sweep_dir} for more than {LOCK_WAIT_S:g} s; retry later", file=sys.stderr
            )
            return 1
        return clean_sweep(sweep_dir, include_bare=args.include_bare, dry_run=args.dry_run, assume_yes=args.yes)


def clean_sweep(sweep_dir: Path, *, include_bare: bool, dry_run: bool, assume_yes: bool) -> int:
    """Show what would be deleted, confirm, delete on the backend, then record it (in that order)."""
    from launcher_core.backends import backend_for_meta
    from launcher_core.collect import clean

    with StateStore.for_sweep_dir(sweep_dir) as store:
        meta = store.meta()
        why_not = clean.no_remote_copies(meta)
        if why_not:
            print(f"nothing to clean: {why_not}")
            return 0
        selection = clean.select(store.jobs(), meta, include_bare)
        sweep_id = str(meta.get("sweep_id", ""))
        backend = backend_for_meta(meta)
        try:
            plan = clean.backend_clean(backend, selection, sweep_id, dry_run=True)  # checks every path
            if plan.nothing_to_clean:
                print(f"nothing to clean: {plan.nothing_to_clean}")
                return 0
            _print_kept(selection)
            if selection.empty:
                print(f"nothing to clean in {sweep_dir} ({selection.already_cleaned} jobs cleaned before)")
                return 0
            _print_plan(plan, selection, dry_run)
            if dry_run:
                print("dry run: nothing was deleted")
                return 0
            if not assume_yes:
                if not sys.stdin.isatty():
                    print(
                        "error: clean deletes files on the backend: add --yes to confirm (no terminal to ask on)",
                        file=sys.stderr,
                    )
                    return 2
                if input("delete these? [y/N] ").strip().lower() not in ("y", "yes"):
                    print("nothing deleted")
                    return 1
            report = clean.backend_clean(backend, selection, sweep_id, dry_run=False)
            marked = clean.record(store, selection, report)
        finally:
            backend.close()
    return _print_result(report, selection, marked)


def _print_kept(selection: Any) -> None:
    for reason, n in sorted(selection.kept.items()):
        print(f"kept {n} jobs: {reason}")


def _print_plan(plan: Any, selection: Any, dry_run: bool) -> None:
    verb = "would delete" if dry_run else "will delete"
    print(f"{verb} the backend-side files of {len(selection.eligible)} jobs:")
    for location, paths in plan.targets.items():
        n_jobs = plan.jobs.get(location, 0)
        print(f"  {location}: {n_jobs} jobs")
        for path in paths[: min(n_jobs, PLAN_PATHS_SHOWN)]:
            print(f"    {path}")
        if n_jobs > PLAN_PATHS_SHOWN:
            print(f"    ... and {n_jobs - PLAN_PATHS_SHOWN} more job paths")
        for path in paths[n_jobs:]:
            print(f"    {path}   (sweep-level)")
    if selection.sweep_handles is None:
        print("  sweep-level files (code snapshot, payloads, batch files) are kept until every job is cleaned")


def _print_result(report: Any, selection: Any, marked: int) -> int:
    for note in report.notes:
        print(f"note: {note}")
    print(
        f"cleaned {marked} of {len(selection.eligible)} jobs"
        + ("; sweep-level files deleted" if selection.sweep_handles is not None and report.sweep_cleaned else "")
    )
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report.errors or marked < len(selection.eligible) else 0


# --- registration ----------------------------------------------------------------------------
def add_commands(sub: Any) -> None:
    """status, list/history, diff, logs, cancel, clean."""
    status = sub.add_parser("status", help="states of a sweep's jobs (default: the latest sweep)")
    status.add_argument("sweep", nargs="?", help="sweep dir or sweep id")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=float, default=5.0)
    status.add_argument("--summary", action="store_true", help="counts only, no per-job table")
    status.add_argument(
        "--all", action="store_true", help=f"list every job (default: {STATUS_ROWS}, the unfinished and failed first)"
    )
    status.add_argument("--offline", action="store_true", help="do not ask the backend, show the state store only")
    status.set_defaults(func=cmd_status)

    for name in ("list", "history"):
        lst = sub.add_parser(name, help="recent sweeps")
        lst.add_argument("--limit", type=int, default=20)
        lst.set_defaults(func=cmd_list)

    diff = sub.add_parser("diff", help="what code differed between two sweeps (one: its uncommitted changes)")
    diff.add_argument("sweep", help="sweep dir or sweep id")
    diff.add_argument("other", nargs="?", help="another sweep dir or sweep id")
    diff.set_defaults(func=cmd_diff)

    logs = sub.add_parser("logs", help="a job's stdout (or stderr)")
    logs.add_argument("sweep", help="sweep dir or sweep id")
    logs.add_argument("job", help="job number or job id prefix")
    logs.add_argument("--stderr", action="store_true")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(func=cmd_logs)

    cancel = sub.add_parser("cancel", help="cancel a sweep's unfinished jobs (or the given ones)")
    cancel.add_argument("sweep", help="sweep dir or sweep id")
    cancel.add_argument("jobs", nargs="*", help="job numbers or id prefixes (default: all unfinished)")
    cancel.set_defaults(func=cmd_cancel)

    clean = sub.add_parser("clean", help="delete the backend-side files of jobs pulled home")
    clean.add_argument("sweep", nargs="?", help="sweep dir or sweep id (default: the latest sweep)")
    clean.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
    clean.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    clean.add_argument(
        "--include-bare",
        action="store_true",
        help="also clean jobs pulled with --bare (their skipped large files are then lost)",
    )
    clean.set_defaults(func=cmd_clean)
