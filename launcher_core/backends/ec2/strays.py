"""Stray instances: tagged instances no active job of this machine needs, and the
``python -m launcher_core.backends.ec2 cleanup`` command that lists or terminates them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher_core.backends.ec2.aws import ACTIVE_INSTANCE_STATES, TAG_SWEEP
from launcher_core.backends.ec2.backend import Ec2Backend
from launcher_core.backends.ec2.handle import Ec2Handle
from launcher_core.backends.ec2.settings import Ec2Settings
from launcher_core.jobs import JobState


@dataclass
class StrayInstance:
    """An instance of this launcher still alive although no job of ours needs it."""

    instance_id: str
    sweep_id: str
    state: str
    launch_time: str
    why: str


def find_stray_instances(backend: Ec2Backend, home: Path | None = None) -> list[StrayInstance]:
    """Instances tagged by this launcher that belong to an unknown sweep or run no active job.

    An instance is needed while its sweep's state store shows an active (pending, submitted or
    running) job on it; everything else (sweep finished, sweep dir deleted, never recorded in
    this machine's sweep index) is reported.
    """
    from launcher_core.state import SweepIndex

    index = SweepIndex(home)
    try:
        sweep_dirs = {sweep_id: sweep_dir for sweep_id, sweep_dir, _b, _t in index.sweeps()}
    finally:
        index.close()
    active: dict[str, set[str] | None] = {}
    stray = []
    for iid, inst in sorted(backend.describe_sweep_instances().items()):
        state = inst.get("State", {}).get("Name", "unknown")
        sweep_id = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get(TAG_SWEEP, "")
        if state not in ACTIVE_INSTANCE_STATES:
            continue
        if sweep_id not in active:
            active[sweep_id] = _instances_with_active_jobs(sweep_dirs.get(sweep_id))
        needed_by = active[sweep_id]
        if needed_by is not None and iid in needed_by:
            continue
        why = _stray_reason(sweep_id in sweep_dirs, needed_by is not None)
        stray.append(StrayInstance(iid, sweep_id, state, str(inst.get("LaunchTime", "")), why))
    return stray


def _stray_reason(known_sweep: bool, has_store: bool) -> str:
    if not known_sweep:
        return "unknown sweep (not in this machine's sweep index)"
    if not has_store:
        return "the sweep has no state store any more"
    return "no active job of the sweep runs on it"


def _instances_with_active_jobs(sweep_dir: Path | None) -> set[str] | None:
    """Instance ids of the sweep's active jobs; None when there is no state store to ask."""
    from launcher_core.state import StateStore

    if sweep_dir is None or not StateStore.exists_in(sweep_dir):
        return None
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        job_rows = store.jobs(states=[JobState.PENDING, JobState.SUBMITTED, JobState.RUNNING])
    return {iid for r in job_rows if r.handle and (iid := Ec2Handle.instance_of(r.handle))}


def cleanup(backend: Ec2Backend, *, terminate: bool = False, home: Path | None = None) -> list[StrayInstance]:
    """Report (and with ``terminate`` also terminate) stray instances; see :func:`find_stray_instances`."""
    stray = find_stray_instances(backend, home)
    if terminate and stray:
        backend.terminate_instances([s.instance_id for s in stray])
    return stray


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m launcher_core.backends.ec2 cleanup [--terminate]``: list (or end) stray instances."""
    parser = argparse.ArgumentParser(prog="python -m launcher_core.backends.ec2")
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser("cleanup", help="list instances still running for finished or unknown sweeps")
    clean.add_argument("--terminate", action="store_true", help="terminate them too")
    clean.add_argument("--region", default=None)
    clean.add_argument("--endpoint-url", default=None)
    args = parser.parse_args(argv)
    settings = Ec2Settings(region=args.region, endpoint_url=args.endpoint_url)
    backend = Ec2Backend(settings)
    try:
        stray = cleanup(backend, terminate=args.terminate)
    finally:
        backend.close()
    for s in stray:
        print(f"{s.instance_id}\t{s.state}\t{s.sweep_id}\t{s.launch_time}\t{s.why}")
    verb = "terminated" if args.terminate else "found"
    print(f"{verb} {len(stray)} stray instance{'s' if len(stray) != 1 else ''}", file=sys.stderr)
    return 0
