"""Asking Slurm: its commands (bounded in time, counted), ``sacct``/``squeue`` output, and a
job's state from what they say (or from its exit file when they know nothing); see
docs/slurm.md ("Polling")."""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from launcher_core.backends.base import Handle
from launcher_core.backends.slurm.handle import SlurmHandle
from launcher_core.backends.slurm.options import SlurmOptions
from launcher_core.errors import BackendError
from launcher_core.jobs import Ending, JobState, JobStatus, LossCause

log = logging.getLogger("launcher_core.slurm")

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
LOST_AFTER_S = 120.0  # a job unknown to sacct and squeue this long after submission is lost
SACCT_LAG_S = 30.0  # how far accounting may lag behind slurmctld before squeue is asked
REQUEUE_HOLD_S = 60.0  # Eligible this long after Submit: held by a requeue's BeginTime
NAME_LOOKUP_MARGIN_S = 86400  # arrays looked up by name: this much earlier too (clock skew, time zones)

_PENDING = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED"}
)
_RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})
_FAILED_REASONS = {
    "OUT_OF_MEMORY": "out of memory (raise hydra.launcher.mem_gb, or retry_on=[out_of_memory])",
    "NODE_FAIL": "node failure",
    "PREEMPTED": "preempted and not requeued",
    "BOOT_FAIL": "node boot failure",
    "DEADLINE": "deadline reached",
    "REVOKED": "revoked",
    "SPECIAL_EXIT": "special exit",
}

# end states of a task lost to the machine (not its own doing): retried (launcher_core.retry)
_LOST = {
    "NODE_FAIL": LossCause.NODE_FAILURE,
    "BOOT_FAIL": LossCause.BOOT_FAILURE,
    "PREEMPTED": LossCause.PREEMPTED,
}


class SlurmCommands:
    """Runs Slurm's commands (bounded in time) and counts the calls per command."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.calls: Counter[str] = Counter()

    def run(self, argv: Sequence[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv``; never raises for a non-zero exit, raises ``BackendError`` if it cannot run."""
        self.calls[argv[0]] += 1
        try:
            return subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=timeout_s or self.timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as exc:
            raise BackendError(f"{argv[0]} not found: is this a Slurm login node (or set login_host)?") from exc
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"{argv[0]} did not answer within {timeout_s or self.timeout_s:g} s") from exc

    def shell(self, text: str, *, what: str, timeout_s: float | None = None) -> str:
        """Run a POSIX sh script where Slurm's commands run (here); its stdout. Raises
        ``BackendError`` when it cannot run, fails or does not finish in time."""
        timeout = timeout_s or self.timeout_s
        try:
            proc = subprocess.run(
                ["sh", "-s"], input=text, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BackendError(f"{what}: no answer within {timeout:g} s") from exc
        except OSError as exc:
            raise BackendError(f"{what}: cannot run sh: {exc}") from exc
        if proc.returncode != 0:
            raise BackendError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def close(self) -> None:
        """Nothing to release for local commands."""


@dataclass
class SlurmRecord:
    """One array task as ``sacct``/``squeue`` report it."""

    state: str
    exit_code: int | None = None
    signal: int | None = None
    nodes: str | None = None
    held_by_requeue: bool = False


def expand_job_ids(text: str) -> list[str]:
    """``12_[0-3%4]`` -> ``12_0 .. 12_3``; ``12_[1,5-6]`` -> ``12_1 12_5 12_6``; ``12_7`` -> ``12_7``."""
    match = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", text)
    if not match:
        return [text]
    base, ranges = match.groups()
    out = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


SACCT_FORMAT = "JobID,State,ExitCode,NodeList,Submit,Eligible"
SQUEUE_FORMAT = "%i|%T|%N|%r"


def parse_sacct(text: str) -> dict[str, SlurmRecord]:
    """``sacct -X -n -P -o JobID,State,ExitCode,NodeList,Submit,Eligible`` output by array task id."""
    out: dict[str, SlurmRecord] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        job_id, state, exit_code, nodes, submit, eligible = parts[:6]
        code, _, sig = exit_code.partition(":")
        state = state.split()[0] if state.strip() else "UNKNOWN"
        record = SlurmRecord(
            state=state,
            exit_code=int(code) if code.isdigit() else None,
            signal=int(sig) if sig.isdigit() else None,
            nodes=nodes if nodes and nodes not in ("None assigned", "(null)") else None,
            held_by_requeue=state == "PENDING" and _held(submit, eligible),
        )
        for task_id in expand_job_ids(job_id.strip()):
            out[task_id] = record
    return out


def _held(submit: str, eligible: str) -> bool:
    try:
        fmt = "%Y-%m-%dT%H:%M:%S"
        return (datetime.strptime(eligible, fmt) - datetime.strptime(submit, fmt)).total_seconds() > REQUEUE_HOLD_S
    except ValueError:
        return False


def parse_squeue(text: str) -> dict[str, SlurmRecord]:
    """``squeue -h -r -t all -o '%i|%T|%N|%r'`` output by array task id."""
    out: dict[str, SlurmRecord] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        job_id, state, nodes, reason = parts[:4]
        record = SlurmRecord(
            state=state.strip() or "UNKNOWN",
            nodes=nodes or None,
            held_by_requeue=state == "PENDING" and reason.strip() == "BeginTime",
        )
        for task_id in expand_job_ids(job_id.strip()):
            out[task_id] = record
    return out


def parse_named_arrays(text: str, names: Sequence[str]) -> dict[str, str]:
    """``JobID|JobName`` lines (sacct ``12_3``/``12_[4-7]``, squeue ``%F``) -> ``{name: array id}``;
    a name seen on two arrays (never, as names carry a random key) keeps the first."""
    wanted = set(names)
    found: dict[str, str] = {}
    for line in text.splitlines():
        job_id, sep, name = line.strip().partition("|")
        match = re.match(r"(\d+)", job_id)
        if sep and match and name in wanted:
            found.setdefault(name, match.group(1))
    return found


def read_max_array_size(commands: SlurmCommands) -> int:
    """``MaxArraySize`` from ``scontrol show config`` (array indices must stay below it)."""
    proc = commands.run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise BackendError(f"could not read MaxArraySize from `scontrol show config`: {proc.stderr.strip()}")
    return int(match.group(1))


@dataclass
class ExitInfo:
    """What a job's launcher dir says: the worker's exit code (None: not finished), the result,
    and the node the batch script ran on (it writes ``CODE NODE``: accounting may lag behind)."""

    code: int | None
    has_result: bool
    node: str | None = None


def exit_info_of(words: Sequence[str], has_result: bool) -> ExitInfo:
    """An exit file's words (``CODE [NODE]``; ``-`` or nothing: no code yet) as :class:`ExitInfo`."""
    code = int(words[0]) if words and words[0].lstrip("-").isdigit() else None
    node = words[1] if code is not None and len(words) > 1 else None
    return ExitInfo(code, has_result, node)


class SlurmAccounting:
    """Job states of array tasks: one ``sacct`` per poll, ``squeue`` only when sacct fails or lags,
    exit files for what neither knows; requeue-held tasks are released on the way."""

    def __init__(self, commands: SlurmCommands, options: SlurmOptions) -> None:
        self.commands = commands
        self.options = options
        self._sacct_down_until = 0.0
        self._failing_since: float | None = None

    def statuses(
        self,
        stored: Mapping[str, Handle],
        exit_info: Callable[[Mapping[str, SlurmHandle]], Mapping[str, ExitInfo]],
    ) -> dict[str, JobStatus]:
        """The state of every handled job; ``exit_info`` reads the exit files (on the site)."""
        handles = SlurmHandle.typed(stored)
        records = self._query(handles)
        self._confirm_lost(handles, records)
        self._release_requeued(handles, records)
        need_files = {
            j: h for j, h in handles.items() if _needs_exit_file(h, _record(records, h))
        }  # exit codes and results tell why, or whether a job unknown to Slurm finished
        files = exit_info(need_files) if need_files else {}
        return {
            j: (self._packed_status if h.is_packed else self._status)(h, _record(records, h), files.get(j))
            for j, h in handles.items()
        }

    def _query(self, handles: Mapping[str, SlurmHandle]) -> dict[str, SlurmRecord]:
        """Records of the handled array tasks: one sacct; squeue only when sacct fails or has
        lacked a job for longer than accounting lags behind (``SACCT_LAG_S``)."""
        now = time.time()
        arrays = sorted({h.array_job_id for h in handles.values() if h.array_job_id})
        records: dict[str, SlurmRecord] = {}
        ok = False
        if arrays and now >= self._sacct_down_until:
            ok, records = self._sacct(arrays)
            _pending_unsplit_arrays(records, handles.values())
        lagging = [
            h
            for h in handles.values()
            if h.slurm_job_id not in records
            and (now - float(h.submitted_at or 0) > SACCT_LAG_S or h.array_job_id in records)
        ]  # a task missing while its array is listed: accounting has not split it off yet (lag)
        if not ok or lagging:
            squeue_ok, queued = self._squeue()
            for task_id, record in queued.items():
                records.setdefault(task_id, record)
            ok = ok or squeue_ok
        self._note_health(ok)
        return records

    def records(self, arrays: Sequence[str]) -> tuple[bool, dict[str, SlurmRecord]]:
        """(whether accounting answered, the records of these arrays' tasks): one ``sacct``, or,
        while it fails, one ``squeue`` (what slurmctld still holds: finished tasks for
        ``MinJobAge`` only). ``(False, {})`` when neither answers."""
        if arrays and time.time() >= self._sacct_down_until:
            ok, records = self._sacct(arrays)
            if ok:
                return True, records
        _ok, queued = self._squeue()
        return False, queued

    def _confirm_lost(self, handles: Mapping[str, SlurmHandle], records: dict[str, SlurmRecord]) -> None:
        """A task sacct reports NODE_FAIL, BOOT_FAIL or PREEMPTED may already be requeued (our
        scripts carry ``--requeue``; accounting records the failed run before the requeue): the
        controller's own view (squeue) decides. Only a task it does not show queued or running
        again is lost (and run again by us): never both Slurm's requeue and our retry."""
        ids = {h.slurm_job_id for h in handles.values() if _record(records, h).state in _LOST}
        if not ids:
            return
        ok, live = self._squeue()
        if not ok:  # cannot tell yet: as pending until squeue answers
            records.update({i: SlurmRecord("PENDING") for i in ids})
            return
        for task_id in ids:
            now = live.get(task_id)
            if now is not None and (now.state in _PENDING or now.state in _RUNNING):
                records[task_id] = now

    def _sacct(self, arrays: Sequence[str]) -> tuple[bool, dict[str, SlurmRecord]]:
        proc = self.commands.run(["sacct", "-X", "-n", "-P", "-o", SACCT_FORMAT, "-j", ",".join(arrays)])
        if proc.returncode == 0:
            return True, parse_sacct(proc.stdout)
        # without accounting: use squeue + exit files, and try sacct again in a minute
        log.warning("sacct failed (%s); using squeue and result files", proc.stderr.strip()[:300])
        self._sacct_down_until = time.time() + 60.0
        return False, {}

    def _squeue(self) -> tuple[bool, dict[str, SlurmRecord]]:
        proc = self.commands.run(["squeue", "--me", "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT])
        if proc.returncode != 0:
            log.warning("squeue failed: %s", proc.stderr.strip()[:300])
            return False, {}
        return True, parse_squeue(proc.stdout)

    def arrays_named(self, names: Sequence[str], since: float) -> dict[str, str]:
        """``{job name: array id}`` of this user's arrays with these names: one ``squeue`` (what
        slurmctld holds: accounting may lag behind it) and one ``sacct`` (what it no longer holds),
        since ``since`` (a timestamp here; a margin covers a login node's clock and time zone).
        Raises when neither answers: what was accepted must not be guessed."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        queued = self.commands.run(["squeue", "--me", "-h", "-t", "all", "-o", "%F|%j", f"--name={','.join(wanted)}"])
        back_s = int(max(0.0, time.time() - since)) + NAME_LOOKUP_MARGIN_S
        accounted = self.commands.run(
            ["sacct", "-X", "-n", "-P", "-S", f"now-{back_s}", "-o", "JobID,JobName", f"--name={','.join(wanted)}"]
        )
        if queued.returncode != 0 and accounted.returncode != 0:
            raise BackendError(
                "neither squeue nor sacct could say which arrays an interrupted launch submitted: "
                f"{queued.stderr.strip()[:300]} / {accounted.stderr.strip()[:300]}"
            )
        if accounted.returncode != 0:
            log.warning("sacct failed (%s): only squeue tells what was submitted", accounted.stderr.strip()[:300])
        answers = [p.stdout for p in (queued, accounted) if p.returncode == 0]
        return parse_named_arrays("\n".join(answers), wanted)

    def _note_health(self, ok: bool) -> None:
        """Raise if Slurm could not be asked for a long time: waiting on would hang forever."""
        now = time.monotonic()
        if ok:
            self._failing_since = None
            return
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > max(10 * self.options.command_timeout_s, 300.0):
            raise BackendError(
                "neither sacct nor squeue answered for "
                f"{now - self._failing_since:.0f} s; the jobs may still run: check them later with "
                "`python -m launcher_core status`"
            )

    def _release_requeued(self, handles: Mapping[str, SlurmHandle], records: Mapping[str, SlurmRecord]) -> None:
        """Start requeued tasks now instead of after Slurm's ~120 s requeue hold."""
        if "begin" in self.options.additional_parameters:
            return  # the user asked for a begin time: do not override it
        held = sorted({h.slurm_job_id for h in handles.values() if _record(records, h).held_by_requeue})
        if held:
            proc = self.commands.run(["scontrol", "update", f"JobId={','.join(held)}", "StartTime=now"])
            if proc.returncode != 0:
                log.debug("releasing requeued jobs %s: %s", held, proc.stderr.strip())

    def _status(self, handle: SlurmHandle, record: SlurmRecord, files: ExitInfo | None) -> JobStatus:
        state = record.state
        if state == "UNKNOWN":
            return _status_from_files(handle, files)
        if state in _PENDING:
            return JobStatus(JobState.SUBMITTED)
        if state in _RUNNING:
            return JobStatus(JobState.RUNNING, host=record.nodes)
        if state == "COMPLETED":
            return JobStatus(JobState.COMPLETED, host=record.nodes)
        if state == "CANCELLED":
            return JobStatus(JobState.CANCELLED, "cancelled in Slurm (scancel)", host=record.nodes)
        if state == "TIMEOUT":
            minutes = self.options.timeout_min if "timeout_min" in handle.absent else handle.timeout_min
            return JobStatus(JobState.FAILED, f"timeout: Slurm time limit ({minutes} min) reached", record.nodes)
        if state == "FAILED":
            return JobStatus(JobState.FAILED, _failure_reason(record, files), record.nodes)
        reason = _FAILED_REASONS.get(state, state.lower())
        if state in _LOST:  # Slurm did not requeue it (a requeued task is PENDING again)
            return JobStatus.lost(_LOST[state], reason, record.nodes)
        return JobStatus(JobState.FAILED, reason, record.nodes)

    def _packed_status(self, handle: SlurmHandle, record: SlurmRecord, files: ExitInfo | None) -> JobStatus:
        """A job of a packed task (``jobs_per_task``): its own exit file says how it ended; until
        then it is as pending or running as its task, and lost if the task ended without it."""
        if files is not None and files.code is not None:
            node = record.nodes or files.node
            if files.code == 0:
                return JobStatus(JobState.COMPLETED, host=node)
            reason = _failure_reason(SlurmRecord("FAILED", exit_code=files.code), files)
            return JobStatus(JobState.FAILED, reason, node)
        task = self._status(handle, record, files)
        if record.state == "UNKNOWN" or not task.state.is_terminal:
            return task
        if task.state is JobState.CANCELLED:
            return JobStatus(JobState.CANCELLED, "cancelled in Slurm (scancel of its packed task)", host=record.nodes)
        reason = f"its packed task ended before the job did ({task.exit_reason or record.state.lower()})"
        if task.ending is Ending.LOST and task.cause is not None:
            return JobStatus.lost(task.cause, reason, record.nodes)
        return JobStatus(JobState.FAILED, reason, record.nodes)


def _needs_exit_file(handle: SlurmHandle, record: SlurmRecord) -> bool:
    if handle.is_packed:  # jobs of a running task finish one by one: only their files tell
        return record.state not in _PENDING
    return record.state in ("UNKNOWN", "FAILED")


def _failure_reason(record: SlurmRecord, files: ExitInfo | None) -> str:
    code = record.exit_code if record.exit_code is not None else (files.code if files else None)
    if record.signal:
        return f"killed by signal {record.signal}"
    has_result = bool(files and files.has_result)
    if code == 1 and has_result:
        return "task raised an exception"
    return f"exited with code {code}" + ("" if has_result else " without writing a result")


def _status_from_files(handle: SlurmHandle, files: ExitInfo | None) -> JobStatus:
    """Neither sacct nor squeue knows the job: its exit file tells, or it is lost after a while.
    Exit code 0 counts only with the job's result: the worker writes it before it exits 0, and a
    batch script whose ``srun`` lost its node (a node failure) records 0 without one."""
    code = files.code if files else None
    node = files.node if files else None
    if code == 0 and files is not None and files.has_result:
        return JobStatus(JobState.COMPLETED, host=node)
    if code is not None and code != 0:
        return JobStatus(JobState.FAILED, _failure_reason(SlurmRecord("FAILED", exit_code=code), files), node)
    if time.time() - float(handle.submitted_at or 0) > LOST_AFTER_S:
        what = "an exit code" if code is None else "a result (exit code 0)"
        return JobStatus(
            JobState.FAILED,
            f"left Slurm without {what} (cancelled, timed out or killed; sacct unavailable to tell)",
        )
    return JobStatus(JobState.SUBMITTED)


def _pending_unsplit_arrays(records: dict[str, SlurmRecord], handles: Iterable[SlurmHandle]) -> None:
    """sacct lists an array none of whose tasks started yet as the bare array id ("12|PENDING"):
    its tasks are pending."""
    for handle in handles:
        task_id, array_id = handle.slurm_job_id, handle.array_job_id
        bare = records.get(array_id)
        if task_id not in records and bare is not None and bare.state in _PENDING:
            records[task_id] = SlurmRecord("PENDING")


def _record(records: Mapping[str, SlurmRecord], handle: SlurmHandle) -> SlurmRecord:
    return records.get(handle.slurm_job_id) or SlurmRecord("UNKNOWN")


NODE_LOAD_ARGS = ("-h", "-N", "-o", "%N %O %c")  # sinfo: each node's name, CPU load and CPUs


def parse_node_loads(text: str) -> dict[str, Any]:
    """``{node: HostReading}`` from ``sinfo -h -N -o '%N %O %c'`` output (a node in several
    partitions is listed once per partition: the first line counts)."""
    from launcher_core.machines import HostReading

    loads: dict[str, Any] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3:
            load = float(words[1]) if words[1].replace(".", "", 1).isdigit() else None
            loads.setdefault(words[0], HostReading(load, int(words[2]) if words[2].isdigit() else None))
    return loads
