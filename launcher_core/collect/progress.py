"""Live progress on stderr (a rich bar on a TTY, rate-limited log lines otherwise) and the
end-of-sweep summary table."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from launcher_core.jobs import JobState

log = logging.getLogger("launcher_core")

_DONE = (JobState.COMPLETED, JobState.PULLED)


def _counts_line(counts: Mapping[JobState, int], total: int) -> str:
    done = sum(counts.get(s, 0) for s in _DONE)
    failed = counts.get(JobState.FAILED, 0)
    cancelled = counts.get(JobState.CANCELLED, 0)
    running = counts.get(JobState.RUNNING, 0)
    queued = counts.get(JobState.SUBMITTED, 0) + counts.get(JobState.PENDING, 0)
    parts = [f"{done + failed + cancelled}/{total} finished", f"{done} done", f"{failed} failed"]
    if cancelled:
        parts.append(f"{cancelled} cancelled")
    parts += [f"{running} running", f"{queued} queued"]
    return ", ".join(parts)


class SweepProgress:
    """Shows how far a sweep is. No background thread: the controller forks jobs, and a
    thread holding a lock at fork time could deadlock the child."""

    def __init__(self, total: int, label: str, stream: Any = None, interval_s: float = 5.0) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._last_line = ""
        self._last_emit = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._detail_tasks: list[Any] = []
        if total and getattr(self.stream, "isatty", lambda: False)():
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=self.stream)
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, detail="")

    def update(self, counts: Mapping[JobState, int], details: Sequence[str] = ()) -> None:
        """Show the counts; each of ``details`` (one per spill target) on a line of its own."""
        line = _counts_line(counts, self.total)
        finished = sum(counts.get(s, 0) for s in (*_DONE, JobState.FAILED, JobState.CANCELLED))
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, completed=finished, detail=line)
            self._show_details(details)
            if now - self._last_emit >= 0.1 or finished == self.total:  # redrawing costs ~1 ms
                self._bar.refresh()
                self._last_emit = now
            return
        shown = "\n".join([line, *details])
        if shown != self._last_line and (now - self._last_emit >= self.interval_s or finished == self.total):
            log.info("%s: %s", self.label, line)
            for detail in details:
                log.info("  %s", detail)
            self._last_line, self._last_emit = shown, now

    def _show_details(self, details: Sequence[str]) -> None:
        """One row under the bar per detail line (the spill launcher's targets)."""
        for i, detail in enumerate(details):
            if i == len(self._detail_tasks):
                self._detail_tasks.append(self._bar.add_task("", total=None, detail=""))
            name, _, rest = detail.partition(": ")
            self._bar.update(self._detail_tasks[i], description=f"  {name}", detail=rest)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def print_summary(
    *,
    label: str,
    sweep_dir: str,
    rows: Sequence[tuple[int, str, str, float | None, str]],
    elapsed_s: float,
    stream: Any = None,
) -> None:
    """End-of-sweep table: counts, wall time, sweep dir, then one line per failed job.

    ``rows`` are ``(job_num, overrides, state, duration_s, reason)`` for every job.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stderr, width=120)
    states = [r[2] for r in rows]
    ok = sum(s in ("completed", "pulled") for s in states)
    failed = [r for r in rows if r[2] in ("failed", "cancelled")]
    table = Table(title=f"{label}: sweep summary", show_header=False, box=None)
    table.add_row("jobs", str(len(rows)))
    table.add_row("done", str(ok))
    table.add_row("failed", str(sum(s == "failed" for s in states)))
    if any(s == "cancelled" for s in states):
        table.add_row("cancelled", str(sum(s == "cancelled" for s in states)))
    other = len(rows) - ok - len(failed)
    if other:
        table.add_row("not finished", str(other))
    table.add_row("wall time", f"{elapsed_s:.1f} s")
    table.add_row("sweep dir", sweep_dir)
    console.print(table)
    if failed:
        fail_table = Table(title="failed jobs", show_lines=False)
        for col in ("#", "overrides", "state", "duration", "reason"):
            fail_table.add_column(col)
        for num, overrides, state, duration, reason in failed:
            dur = "-" if duration is None else f"{duration:.1f} s"
            fail_table.add_row(str(num), overrides, state, dur, reason)
        console.print(fail_table)
