"""``launcher-core``: the command line. Each command module registers its sub-commands with an
``add_commands(sub)`` (sweep state: :mod:`.sweep_commands`; clusters, pull, results and pipelines
in their own packages); the work they do to a sweep is :mod:`launcher_core.sweeps`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from launcher_core.errors import LauncherError


def build_parser() -> argparse.ArgumentParser:
    """The ``launcher-core`` parser, every sub-command registered (what :func:`main` parses)."""
    from launcher_core.cli import sweep_commands, top
    from launcher_core.clusters import add_parser as add_cluster_commands
    from launcher_core.collect import pull
    from launcher_core.pipeline.cli import add_commands as add_pipeline_commands
    from launcher_core.results.commands import add_commands as add_results_commands

    parser = argparse.ArgumentParser(prog="launcher-core", description="Inspect and control sweeps.")
    sub = parser.add_subparsers(dest="command", required=True)
    sweep_commands.add_commands(sub)  # status, list, diff, logs, cancel, clean
    add_cluster_commands(sub)  # cluster list|show|add|test
    pull.add_command(sub)  # pull: the same arguments as python -m launcher_core.pull
    add_results_commands(sub)  # results, report, link, files
    add_pipeline_commands(sub)  # pipeline run|status|cancel
    top.add_commands(sub)  # top: every running sweep, its hosts and GPUs
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
