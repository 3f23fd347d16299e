"""``launcher-core top``: every sweep with unfinished jobs, the hosts running them and each
running job, refreshed every ``--interval`` seconds in a full-screen view (rich), or printed
once as plain text (``--once``). The data is :mod:`launcher_core.collect.overview`'s; this module lays
it out and handles the keys.

Keys: ``n``/``p`` (or Tab) the next/previous sweep, ``j``/``k`` (or the arrows) the next/previous
job, ``l`` the job's log (``logs --follow``, Ctrl-C to come back), ``c`` cancel the job (asks
first), ``q`` quit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from launcher_core.collect.overview import STATES, GpuView, HostView, JobView, Overview, Snapshot, SweepView

KEY_WAIT_S = 60.0  # how long a confirmation waits for its answer
LAST_LINE_WIDTH = 70


# --- plain text ------------------------------------------------------------------------------
def render_text(snapshot: Snapshot) -> str:
    """The snapshot as plain text (``--once``): sweeps, then hosts."""
    when = dt.datetime.fromtimestamp(snapshot.taken_at).strftime("%Y-%m-%d %H:%M:%S")
    cost = ", ".join(f"{k} {n}" for k, n in sorted(snapshot.commands.items()) if n) or "no commands"
    lines = [f"launcher-core top  {when}  (refresh {snapshot.seconds:.2f} s: {cost})"]
    if not snapshot.sweeps:
        lines.append("no sweep has unfinished jobs")
    for sweep in snapshot.sweeps:
        lines += _sweep_lines(sweep)
    lines.append("")
    lines.append("hosts:")
    for host in snapshot.hosts:
        lines += _host_lines(host)
    return "\n".join(lines) + "\n"


def _sweep_lines(sweep: SweepView) -> list[str]:
    counts = "  ".join(f"{s} {sweep.counts.get(s, 0)}" for s in STATES)
    lines = ["", f"sweep {sweep.sweep_id} ({sweep.backend})  {counts}  total {sweep.total}"]
    lines.append(f"  {pace_text(sweep)}  collector: {sweep.collector}")
    if sweep.error:
        lines.append(f"  error: {sweep.error}")
    for job in sweep.running:
        lines.append(f"  running #{job.idx} on {job.host or '?'} {duration(job.duration_s)}: {job.last_line or ''}")
    for job in sweep.failed:
        lines.append(f"  failed #{job.idx}: {job.reason or 'no reason recorded'}")
    return [line.rstrip() for line in lines]


def pace_text(sweep: SweepView) -> str:
    rate = "-" if sweep.throughput_per_h is None else f"{sweep.throughput_per_h:.1f} jobs/h"
    return f"throughput {rate}  ETA {duration(sweep.eta_s)}  mean job {duration(sweep.mean_duration_s)}"


def _host_lines(host: HostView) -> list[str]:
    load = "-" if host.load1 is None else f"{host.load1:.2f}"
    lines = [f"  {host.name}  running {host.running}  load {load} / {host.cpus or '?'} CPUs"]
    if host.error:
        lines.append(f"    error: {host.error}")
    if host.note:
        lines.append(f"    {host.note}")
    lines += [f"    {gpu_text(gpu)}" for gpu in host.gpus]
    return lines


def gpu_text(gpu: GpuView) -> str:
    util = "-" if gpu.utilization_pct is None else f"{gpu.utilization_pct:.0f}%"
    used = "-" if gpu.memory_used_mib is None else f"{gpu.memory_used_mib:.0f}"
    total = "-" if gpu.memory_total_mib is None else f"{gpu.memory_total_mib:.0f}"
    return f"GPU {gpu.index}  util {util}  memory {used}/{total} MiB  {', '.join(gpu.holders) or 'free'}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --- the live view ---------------------------------------------------------------------------
@dataclass
class Selection:
    """Which sweep and job the keys act on, and the last message shown."""

    sweep: int = 0
    job: int = 0
    message: str = ""

    def current_sweep(self, snapshot: Snapshot) -> SweepView | None:
        if not snapshot.sweeps:
            return None
        self.sweep %= len(snapshot.sweeps)
        return snapshot.sweeps[self.sweep]

    def current_job(self, snapshot: Snapshot) -> JobView | None:
        sweep = self.current_sweep(snapshot)
        if sweep is None or not sweep.jobs:
            return None
        self.job = min(max(self.job, 0), len(sweep.jobs) - 1)
        return sweep.jobs[self.job]


_MOVES = {"n": (1, 0), "\t": (1, 0), "p": (-1, 0), "j": (0, 1), "\x1b[B": (0, 1), "k": (0, -1), "\x1b[A": (0, -1)}
_MOVES |= {"\x1b[C": (1, 0), "\x1b[D": (-1, 0)}


def handle_key(
    key: str,
    selection: Selection,
    snapshot: Snapshot,
    *,
    confirm: Callable[[str], bool],
    open_log: Callable[[JobView], None],
) -> bool:
    """Act on one key; False when the view should end. ``c`` cancels the selected job only when
    ``confirm`` (the question) says yes; nothing else changes a sweep."""
    from launcher_core.sweeps import cancel_jobs

    if key in ("q", "\x03"):
        return False
    if key in _MOVES:
        sweeps, jobs = _MOVES[key]
        selection.sweep += sweeps
        selection.job = 0 if sweeps else selection.job + jobs
        selection.message = ""
        return True
    job = selection.current_job(snapshot)
    if key in ("l", "c") and job is None:
        selection.message = "no job selected"
    elif key == "l" and job is not None:
        open_log(job)
    elif key == "c" and job is not None:
        if not job.unfinished:
            selection.message = f"#{job.idx} has finished: nothing to cancel"
        elif confirm(f"cancel job #{job.idx} ({' '.join(job.overrides)}) of sweep {job.sweep_id}? [y/N]"):
            cancelled = cancel_jobs(job.sweep_dir, [str(job.idx)])
            selection.message = f"cancelled #{job.idx}" if cancelled else f"#{job.idx} had finished already"
        else:
            selection.message = "not cancelled"
    return True


def render_live(snapshot: Snapshot, selection: Selection, prompt: str = "") -> Any:
    """The rich renderable of the full-screen view."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    current = selection.current_sweep(snapshot)
    selected_job = selection.current_job(snapshot)
    sweeps = Table(title="sweeps (n/p: switch)", expand=True)
    for col in ("", "sweep", "backend", *STATES, "total", "pace", "collector"):
        sweeps.add_column(col, no_wrap=col not in ("pace", "collector"))
    for sweep in snapshot.sweeps:
        mark = ">" if sweep is current else ""
        counts = [str(sweep.counts.get(s, 0)) for s in STATES]
        sweeps.add_row(
            mark, sweep.sweep_id, sweep.backend, *counts, str(sweep.total), pace_text(sweep), sweep.collector
        )
    jobs = Table(title=f"jobs of {current.sweep_id if current else '-'} (j/k: select, l: log, c: cancel)", expand=True)
    for col in ("", "#", "state", "host", "time", "last line / reason"):
        jobs.add_column(col, no_wrap=col != "last line / reason")
    for job in current.jobs if current else []:
        text = job.last_line if job.state == "running" else job.reason
        style = "red" if job.state == "failed" else ""
        mark = ">" if job is selected_job else ""
        jobs.add_row(mark, str(job.idx), Text(job.state, style=style), job.host or "-", duration(job.duration_s), text)
    hosts = Table(title="hosts", expand=True)
    for col in ("host", "running", "load", "GPUs"):
        hosts.add_column(col)
    for host in snapshot.hosts:
        load = "-" if host.load1 is None else f"{host.load1:.2f} / {host.cpus or '?'}"
        gpus = "\n".join([*(gpu_text(g) for g in host.gpus), *([host.note] if host.note else [])])
        gpus = gpus or (host.error or "")
        hosts.add_row(host.name, str(host.running), load, gpus)
    footer = Text(prompt or selection.message or "q: quit", style="bold" if prompt else "dim")
    return Group(sweeps, jobs, hosts, footer)


class _Keys:
    """Single key presses from the terminal (cbreak mode while in use)."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()

    @contextlib.contextmanager
    def raw(self) -> Iterator[None]:
        import termios
        import tty

        saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        try:
            yield
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def read(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
        if not ready:
            return None
        key = os.read(self.fd, 1).decode(errors="replace")
        if key == "\x1b":  # an arrow key: ESC [ A..D
            more, _, _ = select.select([self.fd], [], [], 0.05)
            if more:
                key += os.read(self.fd, 2).decode(errors="replace")
        return key


def _follow_log(job: JobView) -> None:
    """``launcher-core logs SWEEP JOB --follow`` until it ends or Ctrl-C."""
    argv = [sys.executable, "-m", "launcher_core.cli", "logs", str(job.sweep_dir), str(job.idx), "--follow"]
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(argv, check=False)


def run_live(overview: Overview, interval_s: float) -> int:
    from rich.console import Console
    from rich.live import Live

    keys = _Keys()
    selection = Selection()
    snapshot = overview.refresh()
    with keys.raw(), Live(render_live(snapshot, selection), screen=True, auto_refresh=False) as live:

        def confirm(question: str) -> bool:
            live.update(render_live(snapshot, selection, prompt=question), refresh=True)
            return keys.read(KEY_WAIT_S) in ("y", "Y")

        def open_log(job: JobView) -> None:
            live.stop()
            Console().print(f"log of {job.label} (Ctrl-C to return)")
            _follow_log(job)
            live.start()

        next_refresh = time.monotonic() + interval_s
        while True:
            live.update(render_live(snapshot, selection), refresh=True)
            key = keys.read(next_refresh - time.monotonic())
            if key is not None and not handle_key(key, selection, snapshot, confirm=confirm, open_log=open_log):
                return 0
            if key is None or time.monotonic() >= next_refresh:
                snapshot = overview.refresh()
                next_refresh = time.monotonic() + interval_s


# --- the command -----------------------------------------------------------------------------
def cmd_top(args: argparse.Namespace) -> int:
    with Overview(args.sweeps) as overview:
        if args.once or not sys.stdin.isatty() or not sys.stdout.isatty():
            sys.stdout.write(render_text(overview.refresh()))
            return 0
        return run_live(overview, args.interval)


def add_commands(sub: Any) -> None:
    """top."""
    top = sub.add_parser("top", help="a live view of every sweep with unfinished jobs, its hosts and GPUs")
    top.add_argument("sweeps", nargs="*", help="sweep dirs or ids (default: every sweep with unfinished jobs)")
    top.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes (default 5)")
    top.add_argument("--once", action="store_true", help="print one plain snapshot and exit")
    top.set_defaults(func=cmd_top)
