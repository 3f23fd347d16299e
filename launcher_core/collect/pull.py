"""``python -m launcher_core.pull``: collect the results of detached sweeps.

Each cycle, for every watched sweep: one batched poll of the backend for the jobs still active,
then one batched fetch of the jobs that finished (completed or failed: failed jobs bring their
logs and traceback home too), then those jobs are marked ``pulled``. A job is marked pulled only
after its fetch returned, and fetches are incremental and atomic per file (rsync, S3 downloads
to a temp name), so a kill -9 at any point leaves every finished job either pulled with complete
files or still to pull — the next run finishes it, and never pulls a pulled job again.

One pull process per sweep at a time: a sweep is locked (``flock`` on
``<sweep>/.launcher/pull.lock``) while it is processed; a second daemon skips locked sweeps.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.backends.registry import capabilities_of
from launcher_core.collect import autopull
from launcher_core.errors import ConfigError, LauncherError
from launcher_core.jobs import LAUNCHER_DIR, PullFilter
from launcher_core.state import JobRow, JobState, StateStore
from launcher_core.sweeps import fetch_rows, poll_into_store, resolve_sweeps, sweep_lock, try_lock

log = logging.getLogger("launcher_core.pull")

_UNPULLED = (JobState.COMPLETED, JobState.FAILED)


@dataclass
class PullOptions:
    once: bool = False
    interval_s: float = 60.0
    pull_filter: PullFilter = field(default_factory=PullFilter)
    dry_run: bool = False
    notify: str | None = None
    max_cycles: int | None = None  # bound for tests and scripts; None = until done
    clean: bool = False  # delete the backend-side files of each job once pulled (launcher_core.clean)
    give_up_h: float | None = None  # stop collecting a sweep whose backend was unreachable this long


@dataclass
class SweepReport:
    sweep_dir: Path
    skipped: str | None = None  # why nothing was done (locked, local sweep, ...)
    pulled: int = 0
    cleaned: int = 0
    would_pull: list[int] = field(default_factory=list)
    finished: bool = False  # every job terminal and pulled
    error: str | None = None  # the cycle failed (the backend could not be asked, a fetch failed)
    unreachable: list[str] = field(default_factory=list)  # hosts the backend rode out an outage with


# --- one sweep, one cycle --------------------------------------------------------------------
def _needs_fetch(row: JobRow, pull_filter: PullFilter) -> bool:
    if row.state in _UNPULLED:
        return True
    # a job pulled "bare" earlier gets its large files now that a full pull runs (unless its
    # backend-side files were cleaned with --include-bare: there is nothing left to get)
    bare = row.state is JobState.PULLED and row.pull_mode == "bare" and row.cleaned_at is None
    return bare and not pull_filter.is_bare


def pull_sweep_once(sweep_dir: Path, options: PullOptions) -> SweepReport:
    report = SweepReport(sweep_dir)
    with sweep_lock(sweep_dir) as locked:
        if not locked:
            report.skipped = "another pull process holds this sweep"
            return report
        with StateStore.for_sweep_dir(sweep_dir) as store:
            meta = store.meta()
            if not capabilities_of(meta).detached:  # its jobs ended with the launching process
                report.skipped = "local sweep: results are already here"
                report.finished = True
                return report
            from launcher_core.backends import backend_for_meta

            backend = backend_for_meta(meta)
            try:
                poll_into_store(backend, store)
                report.unreachable = backend.unreachable()
                rows = [r for r in store.jobs() if _needs_fetch(r, options.pull_filter)]
                if options.dry_run:
                    report.would_pull = [r.idx for r in rows]
                else:
                    report.pulled = fetch_rows(backend, store, rows, options.pull_filter)
                    if options.clean:
                        report.cleaned = _clean_pulled(backend, store, meta)
            finally:
                backend.close()
            counts = store.counts()
            report.finished = set(counts) <= {JobState.PULLED, JobState.CANCELLED} and not options.dry_run
            if report.finished:
                _notify_once(store, meta, counts, options.notify)
    return report


def _clean_pulled(backend: object, store: StateStore, meta: dict) -> int:
    """``--clean``: delete the backend-side files of the jobs pulled (full) so far. A failure is
    logged and retried next cycle; it never stops pulling."""
    from launcher_core.collect.clean import clean_after_pull

    try:
        return clean_after_pull(backend, store, meta)
    except LauncherError as exc:
        log.error("%s: clean failed: %s (will retry)", store.path.parent.parent, exc)
        return 0


def _notify_once(store: StateStore, meta: dict, counts: dict[JobState, int], command: str | None) -> None:
    """Run the user's notification command once per finished sweep: a shell command line
    (``sh -c``, so ``"$SWEEP_ID"`` and redirections work), with the sweep's facts only in its
    environment (:func:`notify_env`), never pasted into the command."""
    if not command or meta.get("notified_at"):
        return
    failed = sum(1 for r in store.jobs(states=[JobState.PULLED]) if r.outcome is JobState.FAILED)
    env = {**os.environ, **notify_env(meta, sum(counts.values()), failed)}
    try:
        subprocess.run(["sh", "-c", command], env=env, timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("notification command %r failed: %s", command, exc)
    store.set_meta({"notified_at": time.time()})


def notify_env(meta: dict, jobs: int, failed: int) -> dict[str, str]:
    """What a ``--notify`` command gets in its environment."""
    return {
        "SWEEP_ID": str(meta.get("sweep_id", "")),
        "SWEEP_DIR": str(meta.get("sweep_dir", "")),
        "SWEEP_JOBS": str(jobs),
        "SWEEP_FAILED": str(failed),
    }


# --- the loop --------------------------------------------------------------------------------
def run(targets: Sequence[str], options: PullOptions) -> int:
    """Pull until every watched sweep is finished (or once); return a process exit code."""
    explicit = bool(targets)
    cycles = 0
    stop = _StopFlag()
    outages = _Outages(options.give_up_h)
    while not stop.requested:
        cycles += 1
        sweeps = [d for d in resolve_sweeps(targets) if d not in outages.given_up]
        reports = [_safe_pull(d, options) for d in sweeps]
        for r in reports:
            _log_report(r, options)
            outages.note(r)
        all_done = all(r.finished or r.sweep_dir in outages.given_up for r in reports)
        if explicit and outages.given_up and all_done:
            return 1  # the sweeps it could reach are home; the others wait for a resumed collection
        if options.once or options.dry_run or (explicit and all_done):
            return 0 if all(r.skipped is None or r.finished for r in reports) else 1
        if options.max_cycles is not None and cycles >= options.max_cycles:
            return 0
        stop.wait(options.interval_s)
    return 0


def _safe_pull(sweep_dir: Path, options: PullOptions) -> SweepReport:
    try:
        return pull_sweep_once(sweep_dir, options)
    except LauncherError as exc:
        log.error("%s: %s (will retry)", sweep_dir, exc)
        return SweepReport(sweep_dir, skipped=str(exc), error=str(exc))


class _Outages:
    """Since when each sweep's backend could not be reached (a cycle that failed, or hosts riding
    out an outage); a sweep unreachable for ``give_up_h`` is given up: why is recorded in its meta
    (:func:`~launcher_core.collect.autopull.record_gave_up`) and it is no longer collected."""

    def __init__(self, give_up_h: float | None) -> None:
        self.give_up_h = give_up_h
        self.since: dict[Path, float] = {}
        self.given_up: set[Path] = set()

    def note(self, report: SweepReport) -> None:
        if report.error is None and not report.unreachable:
            self.since.pop(report.sweep_dir, None)
            return
        since = self.since.setdefault(report.sweep_dir, time.time())
        if self.give_up_h is None or time.time() - since < self.give_up_h * 3600:
            return
        hosts = ", ".join(report.unreachable)
        what = f"{hosts} unreachable" if hosts else f"the backend could not be asked ({_first_line(report.error)})"
        text = autopull.record_gave_up(report.sweep_dir, since, f"{what} for longer than {self.give_up_h:g} h")
        log.error("%s: %s", report.sweep_dir, text)
        self.given_up.add(report.sweep_dir)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "no answer"


def _log_report(report: SweepReport, options: PullOptions) -> None:
    if report.skipped:
        log.info("%s: skipped: %s", report.sweep_dir, report.skipped)
    elif options.dry_run:
        print(f"{report.sweep_dir}: would pull {len(report.would_pull)} jobs: {report.would_pull}")
    elif report.pulled or report.finished:
        log.info(
            "%s: %d jobs pulled%s%s",
            report.sweep_dir,
            report.pulled,
            f", {report.cleaned} cleaned on the backend" if report.cleaned else "",
            " — sweep finished" if report.finished else "",
        )


class _StopFlag:
    """SIGTERM/SIGINT end the loop between cycles (never in the middle of a fetch)."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.requested = True

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


# --- daemon mode -----------------------------------------------------------------------------
def daemonize(log_path: Path, pid_path: Path) -> int | None:
    """Detach (double fork); returns None in the daemon, the daemon's PID in the caller."""
    read_end, write_end = os.pipe()
    first_child = os.fork()
    if first_child > 0:
        os.close(write_end)
        pid = int(os.read(read_end, 32).decode() or 0)
        os.close(read_end)
        os.waitpid(first_child, 0)
        return pid
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.write(write_end, str(os.getpid()).encode())
    os.close(write_end)
    return None


def stop_daemon(pid_path: Path) -> int:
    try:
        pid = int(pid_path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        print("no pull daemon is running", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"pull daemon {pid} is not running", file=sys.stderr)
        return 1
    print(f"asked pull daemon {pid} to stop")
    return 0


# --- command line ----------------------------------------------------------------------------
def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500k, 20M, 1G)") from None


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 hours, got {text!r}")
    return value


PROG = "python -m launcher_core.pull"
DESCRIPTION = "Collect results of sweeps launched with wait=false (all known sweeps by default)."


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m launcher_core.pull`` (``launcher-core pull`` adds the same
    arguments to its sub-command with :func:`add_arguments`)."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every argument of the pull command, added to ``parser``."""
    parser.add_argument("sweeps", nargs="*", help="sweep dirs or sweep ids (default: every known sweep)")
    parser.add_argument("--once", action="store_true", help="one cycle, then exit")
    parser.add_argument("--interval", type=float, default=60.0, metavar="SECONDS", help="seconds between cycles")
    parser.add_argument("--bare", action="store_true", help="skip large files (see --bare-size, --bare-exclude)")
    parser.add_argument(
        "--bare-size",
        type=_size,
        default=_size("10M"),
        metavar="SIZE",
        help="with --bare: skip files larger than this (default 10M)",
    )
    parser.add_argument(
        "--bare-exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="with --bare: skip files matching this rsync pattern (repeatable), e.g. '*.ckpt'",
    )
    parser.add_argument("--dry-run", action="store_true", help="poll and show what would be pulled; change nothing")
    parser.add_argument(
        "--notify",
        metavar="COMMAND",
        help="run the shell command COMMAND (sh -c) when a sweep finishes, with SWEEP_ID, SWEEP_DIR, SWEEP_JOBS "
        "and SWEEP_FAILED in its environment",
    )
    parser.add_argument(
        "--daemon", action="store_true", help="run in the background (PID file and log in the launcher home)"
    )
    parser.add_argument("--stop", action="store_true", help="stop the background daemon")
    parser.add_argument(
        "--sweep-daemon",
        action="store_true",
        help="be the one pull daemon of the given sweep until it is collected (what auto_pull starts)",
    )
    parser.add_argument(
        "--give-up-h",
        type=_hours,
        default=None,
        metavar="HOURS",
        help="stop collecting a sweep whose backend stayed unreachable this many hours (recorded; see `status`)",
    )
    parser.add_argument(
        "--resume-auto-pull",
        action="store_true",
        help="start the given sweep's pull daemon again in the background, with the settings it had (after it gave up)",
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="delete each job's files on the backend once it is pulled (full pulls only; see `launcher-core clean`)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")


def options_from_args(args: argparse.Namespace) -> PullOptions:
    pull_filter = PullFilter(args.bare_size, tuple(args.bare_exclude)) if args.bare else PullFilter()
    if args.interval <= 0:
        raise ConfigError(f"--interval must be > 0 seconds, got {args.interval}")
    return PullOptions(
        once=args.once,
        interval_s=args.interval,
        pull_filter=pull_filter,
        dry_run=args.dry_run,
        notify=args.notify,
        clean=args.clean,
        give_up_h=args.give_up_h,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run the pull command for parsed arguments (of :func:`build_parser` or ``launcher-core pull``)."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    pid_path, log_path = autopull.daemon_paths()
    if args.stop:
        return stop_daemon(pid_path)
    try:
        options = options_from_args(args)
        resolve_sweeps(args.sweeps)  # fail now, in the foreground, on an unknown sweep
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume_auto_pull:
        return _resume_auto_pull(args.sweeps)
    if args.sweep_daemon:
        return _sweep_daemon(args.sweeps, options)
    if args.daemon:
        pid = daemonize(log_path, pid_path)
        if pid is not None:
            print(f"pull daemon started (pid {pid}); log: {log_path}; stop with: python -m launcher_core.pull --stop")
            return 0
        with try_lock(pid_path) as locked:
            if not locked:
                log.error("another pull daemon is running (see %s); exiting", pid_path)
                os._exit(1)
            autopull.record_targets(pid_path, resolve_sweeps(args.sweeps) if args.sweeps else [])
            code = run(args.sweeps, options)
        os._exit(code)
    return run(args.sweeps, options)


def _sweep_daemon(targets: Sequence[str], options: PullOptions) -> int:
    """``--sweep-daemon SWEEP``: hold the sweep's daemon lock while collecting it, so a second
    one (another launch's auto_pull) exits at once; see :mod:`launcher_core.autopull`."""
    sweeps = resolve_sweeps(targets)
    if len(sweeps) != 1:
        print("error: --sweep-daemon takes exactly one sweep", file=sys.stderr)
        return 2
    with try_lock(sweeps[0] / LAUNCHER_DIR / autopull.DAEMON_LOCK) as locked:
        if not locked:
            log.info("%s is already collected by another pull daemon; exiting", sweeps[0])
            return 0
        autopull.clear_gave_up(sweeps[0])
        log.info("pull daemon %d collects %s every %g s", os.getpid(), sweeps[0], options.interval_s)
        code = run([str(sweeps[0])], options)
        if code == 0:
            log.info("pull daemon %d: %s is collected; exiting", os.getpid(), sweeps[0])
        else:
            log.info("pull daemon %d: stopped collecting %s; exiting", os.getpid(), sweeps[0])
        return code


def _resume_auto_pull(targets: Sequence[str]) -> int:
    """``--resume-auto-pull SWEEP``: start the sweep's own pull daemon again (see
    :func:`launcher_core.collect.autopull.resume`)."""
    sweeps = resolve_sweeps(targets)
    if len(sweeps) != 1:
        print("error: --resume-auto-pull takes exactly one sweep", file=sys.stderr)
        return 2
    found = autopull.resume(sweeps[0])
    if found is None:
        log_path = sweeps[0] / LAUNCHER_DIR / autopull.DAEMON_LOG
        print(f"error: the pull daemon of {sweeps[0]} did not start; see {log_path}", file=sys.stderr)
        return 1
    print(f"{sweeps[0]} is collected by {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def add_command(sub: Any) -> None:
    """``launcher-core pull``: the same arguments as ``python -m launcher_core.pull``."""
    pull = sub.add_parser("pull", help="same as python -m launcher_core.pull", description=DESCRIPTION)
    add_arguments(pull)
    pull.set_defaults(func=run_from_args)
