"""``launcher-core pipeline run|status|cancel FILE``: the commands (see :mod:`launcher_core.pipeline`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from launcher_core.errors import ConfigError, LauncherError
from launcher_core.pipeline.launch import live_launches
from launcher_core.pipeline.matching import job_needs
from launcher_core.pipeline.model import Pipeline
from launcher_core.pipeline.runner import Runner, RunOptions
from launcher_core.pipeline.schedule import resolve_refs
from launcher_core.pipeline.spec import load_pipeline
from launcher_core.pipeline.state import (
    BLOCKED,
    CANCELLED,
    DONE,
    FAILED,
    FINISHED,
    NOT_STARTED,
    QUEUED,
    RUNNING,
    PipelineState,
    lock_holder,
    read_views,
    run_lock,
    stage_label,
)
from launcher_core.state import StateStore

DRIVER_LOG = "driver.log"
BLOCKED_SHOWN = 20


def add_commands(sub: Any) -> None:
    """Register ``pipeline run|status|cancel`` on the ``launcher-core`` subparsers."""
    pipeline = sub.add_parser("pipeline", help="stages of sweeps with dependencies (a pipeline file)")
    psub = pipeline.add_subparsers(dest="pipeline_command", required=True)

    run = psub.add_parser("run", help="launch the stages that are ready (a rerun resumes)")
    run.add_argument("file", help="pipeline file (YAML)")
    run.add_argument("stages", nargs="*", help="only these stages (and the stages they need)")
    run.add_argument("--wait", action="store_true", help="stay until every stage is done, launching as jobs come home")
    run.add_argument("--dry-run", action="store_true", help="print the stage graph, jobs and upstream paths")
    run.add_argument("--retry-failed", action="store_true", help="launch failed jobs again (and what they block)")
    run.add_argument("--no-driver", action="store_true", help="do not leave a background driver for later stages")
    run.add_argument("--interval", type=float, default=2.0, help="seconds between checks with --wait")
    run.add_argument("--timeout", type=float, default=7 * 24 * 3600.0, help="give up waiting after this many seconds")
    run.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    status = psub.add_parser("status", help="one row per stage: state and jobs per state; blocked jobs")
    status.add_argument("file", help="pipeline file (YAML)")
    status.add_argument("--offline", action="store_true", help="do not ask the backends, read the state stores only")
    status.set_defaults(func=cmd_status)

    cancel = psub.add_parser("cancel", help="stop the pipeline's driver and cancel its unfinished jobs")
    cancel.add_argument("file", help="pipeline file (YAML)")
    cancel.add_argument("stages", nargs="*", help="only these stages")
    cancel.set_defaults(func=cmd_cancel)


# --- run -------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    if args.interval <= 0 or args.timeout <= 0:
        raise ConfigError("--interval and --timeout must be > 0 seconds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    pipeline = load_pipeline(args.file)
    state = PipelineState.load(pipeline)
    options = RunOptions(
        stages=list(args.stages),
        wait=args.wait or args.driver,
        retry_failed=args.retry_failed,
        interval_s=args.interval,
        timeout_s=args.timeout,
        blocking=args.wait or args.driver,
    )
    runner = Runner(pipeline, options, state)
    if args.dry_run:
        runner.place()
        print_dry_run(runner)
        return 0
    with run_lock(pipeline) as locked:
        if not locked:
            if not args.driver:
                print(
                    f"pipeline {pipeline.name} is being run by process {lock_holder(pipeline) or '?'}; "
                    f"see `launcher-core pipeline status {args.file}`"
                )
            return 0
        state.cancelled_at = None
        runner.prepare()
        code = runner.run()
        left = [] if options.wait else runner.unfinished()
    if not args.driver:
        render_status(pipeline, PipelineState.load(pipeline), offline=True)
    if left and not args.no_driver and _needs_driver(runner, left):
        pid = start_driver(pipeline, args)
        print(
            f"stages {', '.join(left)} go on in the background: driver pid {pid}, log {pipeline.state_dir / DRIVER_LOG}"
        )
        return 0
    return code if options.wait else 0


def _needs_driver(runner: Runner, left: list[str]) -> bool:
    """A process must stay for stages not launched yet; stages already on Slurm need none."""
    views = read_views(runner.pipeline)
    for name in left:
        view = views[name]
        launched = runner.state.launched(name)
        if any(n not in launched for n in view.status if n not in view.blocked):
            return True
        if not runner.places[name].detached:
            return True
    return False


def start_driver(pipeline: Pipeline, args: argparse.Namespace) -> int:
    """``pipeline run FILE --wait`` in its own session (it outlives this command and its
    terminal), logging to ``<pipeline dir>/.pipeline/driver.log``."""
    argv = [sys.executable, "-m", "launcher_core", "pipeline", "run", str(pipeline.file), *args.stages, "--driver"]
    argv += ["--interval", str(args.interval), "--timeout", str(args.timeout)]
    if args.retry_failed:
        argv.append("--retry-failed")
    log_path = pipeline.state_dir / DRIVER_LOG
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc.pid


# --- dry run ---------------------------------------------------------------------------------------
def print_dry_run(runner: Runner) -> None:
    pipeline = runner.pipeline
    stages = runner.selected()
    print(f"pipeline {pipeline.name}: {len(stages)} stages in {pipeline.dir} (dry run: nothing is launched)")
    print("stage graph:")
    for stage in stages:
        print(f"  {stage.name}" + (f"  <- {', '.join(stage.needs)}" if stage.needs else ""))
    for stage in stages:
        place = runner.places[stage.name]
        cluster = f" (+cluster={stage.cluster})" if stage.cluster else ""
        print(f"\nstage {stage.name}: {len(stage.jobs)} jobs on {place.backend}{cluster}, app {stage.app}")
        print(f"  sweep dir: {pipeline.stage_dir(stage.name)}")
        for job in stage.jobs:
            refs = resolve_refs(pipeline, stage, job, runner.places)
            needs = "; ".join(
                f"{name} {'all' if len(nums) == len(pipeline.stages[name].jobs) else ' '.join(f'#{n}' for n in nums)}"
                for name, nums in job_needs(pipeline, stage, job).items()
            )
            line = " ".join([*job.overrides, *(f"{k}={v}" for k, v in refs.items())])
            print(f"  #{job.num} {line}" + (f"   [needs {needs}]" if needs else ""))


# --- status ----------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.file)
    render_status(pipeline, PipelineState.load(pipeline), offline=args.offline)
    return 0


def _refresh(pipeline: Pipeline) -> None:
    from launcher_core.sweeps import refresh_states

    for stage in pipeline.stages.values():
        sweep_dir = pipeline.stage_dir(stage.name)
        if StateStore.exists_in(sweep_dir):
            refresh_states(sweep_dir)


def render_status(pipeline: Pipeline, state: PipelineState, offline: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    if not offline:
        _refresh(pipeline)
    console = Console(width=160 if not sys.stdout.isatty() else None)
    views = read_views(pipeline)
    table = Table(title=f"pipeline {pipeline.name}")
    columns = (
        "stage",
        "needs",
        "state",
        "jobs",
        DONE,
        RUNNING,
        QUEUED,
        FINISHED,
        FAILED,
        CANCELLED,
        BLOCKED,
        NOT_STARTED,
        "backend",
    )
    for col in columns:
        table.add_column(col, justify="right" if col not in ("stage", "needs", "state", "backend") else "left")
    for stage in pipeline.stages.values():
        view = views[stage.name]
        counts = view.counts()
        table.add_row(
            stage.name,
            ", ".join(stage.needs) or "-",
            stage_label(view, state),
            str(len(stage.jobs)),
            *[str(counts.get(c, 0)) for c in columns[4:-1]],
            view.backend or "-",
        )
    console.print(table)
    blocked = [(s, n, why) for s in pipeline.stages.values() for n, why in views[s.name].blocked.items()]
    for stage, num, why in blocked[:BLOCKED_SHOWN]:
        console.print(f"blocked: {stage.name} #{num} ({' '.join(stage.jobs[num].overrides)}): {why}", markup=False)
    if len(blocked) > BLOCKED_SHOWN:
        console.print(f"... and {len(blocked) - BLOCKED_SHOWN} more blocked jobs")
    holder = lock_holder(pipeline)
    if holder:
        console.print(f"run by process {holder} (driver log: {pipeline.state_dir / DRIVER_LOG})", markup=False)
    console.print(f"dir: {pipeline.dir}", markup=False)


# --- cancel ----------------------------------------------------------------------------------------
def cmd_cancel(args: argparse.Namespace) -> int:
    from launcher_core.sweeps import cancel_jobs

    pipeline = load_pipeline(args.file)
    names = args.stages or list(pipeline.stages)
    for name in names:
        if name not in pipeline.stages:
            raise ConfigError(f"no stage {name!r} in {pipeline.file}; stages: {', '.join(pipeline.stages)}")
    _stop_driver(pipeline)
    state = PipelineState.load(pipeline)
    state.cancelled_at = time.time()
    state.save()
    total = 0
    for name in names:
        stage = pipeline.stages[name]
        for pid in live_launches(pipeline, stage):  # a launch in progress stops its own jobs on SIGINT
            _signal(pid, signal.SIGINT)
        sweep_dir = pipeline.stage_dir(name)
        if StateStore.exists_in(sweep_dir):
            cancelled = cancel_jobs(sweep_dir, [])
            total += len(cancelled)
            if cancelled:
                print(f"stage {name}: cancelled {len(cancelled)} jobs")
    print(f"cancelled {total} jobs; `launcher-core pipeline run {args.file}` goes on from here")
    return 0


def _stop_driver(pipeline: Pipeline, timeout_s: float = 30.0) -> None:
    holder = lock_holder(pipeline)
    if holder is None or holder == os.getpid():
        return
    _signal(holder, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while lock_holder(pipeline) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"stopped the pipeline's driver (pid {holder})")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> int:
    """``python -m launcher_core.pipeline.cli run FILE`` (same as ``launcher-core pipeline ...``)."""
    parser = argparse.ArgumentParser(prog="launcher-core")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pipeline", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.func(args) or 0)
    except LauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
