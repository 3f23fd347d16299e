"""Taking back array tasks that have not started (:meth:`SlurmBackend.withdraw`): the spill
launcher moves a job that waits too long in Slurm's queue to another target, so the task must be
gone from the queue without ever having run, and a task that started meanwhile must run on.

Three commands, then one query per confirmation round, whatever the number of tasks:

1. ``scontrol update JobId=<tasks> StartTime=now`` splits the tasks off their array's pending
   record. Without it, Slurm 22.05's ``scancel --state=PENDING 12_3`` cancels *every* task still
   in the record ``12_[3-9]`` (seen on the test cluster). It changes nothing else a task we keep
   would notice: Slurm refuses it for running and finished tasks, and a pending task only loses a
   ``begin`` time it had (it is cancelled next; the same call releases requeue-held tasks in a
   poll).
2. ``scancel --state=PENDING <tasks>``: Slurm applies the state filter itself, so a task that
   started after step 1 is never killed.
3. One ``sacct`` per round (``squeue`` while accounting does not answer) until every task is
   decided or the rounds are spent: a task is taken back only once it is known CANCELLED without
   a node ever assigned to it. Slurm 22.05 records the cancel time as the Start of a task
   cancelled while pending (``None`` when it was held), so the node list tells, not Start.

Safe to repeat: steps 1 and 2 do nothing to a task already cancelled (Slurm answers "already
finished" / "Invalid job id"), and step 3 finds it cancelled before start again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from launcher_core.backends.slurm.accounting import ExitInfo, SlurmAccounting, SlurmCommands, SlurmRecord
from launcher_core.backends.slurm.handle import SlurmHandle

log = logging.getLogger("launcher_core.slurm")

CONFIRM_ROUNDS = 6  # sacct queries at most, after the scancel
CONFIRM_WINDOW_S = 10.0  # and for at most this long (accounting lags behind slurmctld by a moment)
FIRST_WAIT_S = 0.2  # before the first query; doubled each round, at most MAX_WAIT_S
MAX_WAIT_S = 2.0
_QUEUED = frozenset({"PENDING", "UNKNOWN"})  # accounting has not recorded the cancellation yet


def whole_tasks(handles: Mapping[str, SlurmHandle]) -> dict[str, list[str]]:
    """``{array task: its job ids}`` of the tasks all of whose jobs are asked for. A packed task
    (``jobs_per_task > 1``) is cancelled as a whole, so one with a job not asked for is left
    alone; so is one whose handle does not say how many jobs it runs."""
    asked: dict[str, list[str]] = {}
    for job_id, handle in handles.items():
        if handle.slurm_job_id and handle.array_job_id:
            asked.setdefault(handle.slurm_job_id, []).append(job_id)
    return {task: jobs for task, jobs in asked.items() if len(jobs) >= int(handles[jobs[0]].packed or 1)}


def verdict(record: SlurmRecord | None) -> bool | None:
    """True: the task was cancelled without ever getting a node; False: it started, or ended in
    another way (it is not taken back); None: not known yet (still queued as far as the answer
    goes: accounting lags, or the task is not listed yet)."""
    if record is None or record.state in _QUEUED:
        return None
    return record.state == "CANCELLED" and record.nodes is None


def withdraw_tasks(
    commands: SlurmCommands,
    accounting: SlurmAccounting,
    exit_info: Callable[[Mapping[str, SlurmHandle]], Mapping[str, ExitInfo]],
    handles: Mapping[str, SlurmHandle],
) -> set[str]:
    """The ids of the jobs of ``handles`` whose tasks were taken back before they started (see the
    module docstring); ``exit_info`` reads the jobs' exit files (on the site)."""
    tasks = whole_tasks(handles)
    if not tasks:
        return set()
    ids = sorted(tasks)
    split = commands.run(["scontrol", "update", f"JobId={','.join(ids)}", "StartTime=now"])
    if split.returncode != 0:  # running and finished tasks refuse it: expected
        log.debug("withdraw: scontrol update %s: %s", ",".join(ids[:10]), split.stderr.strip()[:300])
    cancel = commands.run(["scancel", "--state=PENDING", *ids])
    if cancel.returncode != 0:  # tasks already gone: "Invalid job id specified"
        log.debug("withdraw: scancel %s: %s", " ".join(ids[:10]), cancel.stderr.strip()[:300])
    decided = _confirm(accounting, ids, {handles[tasks[t][0]].array_job_id for t in ids})
    gone = {task for task, (taken, _accounted) in decided.items() if taken}
    unaccounted = {j: handles[j] for task in gone if not decided[task][1] for j in tasks[task]}
    if unaccounted:  # squeue alone said so: no exit code and no result may contradict it
        files = exit_info(unaccounted)
        gone -= {handles[j].slurm_job_id for j, f in files.items() if f.code is not None or f.has_result}
    undecided = [t for t in ids if t not in decided]
    if undecided:
        log.info("withdraw: %d Slurm tasks not confirmed cancelled before start (%s ...)", len(undecided), undecided[0])
    return {job_id for task in gone for job_id in tasks[task]}


def _confirm(accounting: SlurmAccounting, ids: list[str], arrays: set[str]) -> dict[str, tuple[bool, bool]]:
    """``{task: (taken back, said by accounting)}`` of the tasks decided within the rounds."""
    decided: dict[str, tuple[bool, bool]] = {}
    deadline = time.monotonic() + CONFIRM_WINDOW_S
    wait = FIRST_WAIT_S
    for _round in range(CONFIRM_ROUNDS):
        time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        wait = min(2 * wait, MAX_WAIT_S)
        accounted, records = accounting.records(sorted(arrays))
        for task in ids:
            taken = verdict(records.get(task))
            if task not in decided and taken is not None:
                decided[task] = (taken, accounted)
        if len(decided) == len(ids) or time.monotonic() >= deadline:
            break
    return decided
