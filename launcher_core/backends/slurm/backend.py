"""``slurm``: each job of a sweep is one task of a Slurm job array, run from sbatch scripts we
render ourselves (hydra-submitit-launcher's settings), polled with batched ``sacct``; with
``login_host``, submitted from another machine over SSH.

Design: docs/slurm.md; why not submitit's executor: README, "Design choices".
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from launcher_core.backends.base import Backend
from launcher_core.container import (
    Container,
    container_from_config,
    job_binds,
    python_for,
    wrap_command,
)
from launcher_core.errors import BackendError, ConfigError, SubmitError
from launcher_core.jobs import (
    LAUNCHER_DIR,
    RESULT_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    JobSpec,
    JobState,
    JobStatus,
    SweepInfo,
)
from launcher_core.runtime.worker import RANKS_DIR_ENV
from launcher_core.validation import check_optional_positive, check_positive

log = logging.getLogger("launcher_core.slurm")

SLURM_DIR = "slurm"
JOB_PAYLOAD_FILE = "job.pkl"
EXIT_FILE = "slurm_exit"
TIMEOUTS_FILE = "slurm_timeouts"
RANKS_DIR = "ranks"  # in a job's launcher dir: results of the tasks (ranks) that failed
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
LOST_AFTER_S = 120.0  # a job unknown to sacct and squeue this long after submission is lost
# slurmctld checks time limits every 30 s and sends the --signal up to 30 s early (so that it is
# never late); a SIGUSR2 within this many seconds of signal_delay_s before the limit is a timeout
SIGNAL_EARLY_S = 35
SACCT_LAG_S = 30.0  # how far accounting may lag behind slurmctld before squeue is asked
REQUEUE_HOLD_S = 60.0  # Eligible this long after Submit: held by a requeue's BeginTime

_PENDING = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED"}
)
_RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})
_FAILED_REASONS = {
    "OUT_OF_MEMORY": "out of memory (raise hydra.launcher.mem_gb)",
    "NODE_FAIL": "node failure",
    "PREEMPTED": "preempted and not requeued",
    "BOOT_FAIL": "node boot failure",
    "DEADLINE": "deadline reached",
    "REVOKED": "revoked",
    "SPECIAL_EXIT": "special exit",
}
_JOB_TOKEN = "\0JOB_PAYLOAD\0"  # stands for the per-task job payload path in the job argv
_OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_SBATCH_TEXT_KEYS = (
    "partition",
    "qos",
    "comment",
    "constraint",
    "exclude",
    "gres",
    "mem_per_gpu",
    "mem_per_cpu",
    "account",
)


# --- options ------------------------------------------------------------------------------------
@dataclass
class SlurmOptions:
    """Validated ``hydra.launcher`` settings of ``hydra/launcher=slurm`` (names as in
    hydra-submitit-launcher where they exist there)."""

    timeout_min: int = 60
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int = 1
    mem_gb: float | None = None
    nodes: int = 1
    name: str = "hydra"
    stderr_to_stdout: bool = False
    partition: str | None = None
    qos: str | None = None
    comment: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    gres: str | None = None
    cpus_per_gpu: int | None = None
    gpus_per_task: int | None = None
    mem_per_gpu: str | None = None
    mem_per_cpu: str | None = None
    account: str | None = None
    signal_delay_s: int = 120
    max_num_timeout: int = 0
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    array_parallelism: int = 256
    setup: list[str] = field(default_factory=list)
    srun_args: list[str] = field(default_factory=list)
    use_srun: bool = True
    modules: list[str] = field(default_factory=list)
    cuda_module: str | None = None
    prepare_commands: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    container: Container | None = None
    login_host: str | None = None
    ssh_config: str | None = None
    login_setup: list[str] = field(default_factory=list)
    remote_dir: str | None = None
    python: str | None = None
    dry_run: bool = False
    wait: bool = True
    skip_completed: bool = False
    poll_interval_s: float = 5.0
    max_array_size: int | None = None
    command_timeout_s: float = 60.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any], prefix: str = "hydra.launcher") -> SlurmOptions:
        """Check every setting; raise ``ConfigError`` naming the bad key before anything is launched."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known}
        opts = cls(**values)
        opts._validate(prefix)
        return opts

    def _validate(self, p: str) -> None:
        check_positive(f"{p}.timeout_min", self.timeout_min, integer=True)
        for key in ("cpus_per_task", "cpus_per_gpu", "gpus_per_task"):
            check_optional_positive(f"{p}.{key}", getattr(self, key), integer=True)
        if self.gpus_per_node is not None:
            check_positive(f"{p}.gpus_per_node", self.gpus_per_node, integer=True, allow_zero=True)
        check_optional_positive(f"{p}.mem_gb", self.mem_gb)
        for key in ("tasks_per_node", "nodes", "array_parallelism"):
            check_positive(f"{p}.{key}", getattr(self, key), integer=True)
        check_positive(f"{p}.signal_delay_s", self.signal_delay_s, integer=True, allow_zero=True)
        if self.signal_delay_s > 65535:
            raise ConfigError(f"{p}.signal_delay_s must be <= 65535 (Slurm's limit), got {self.signal_delay_s}")
        check_positive(f"{p}.max_num_timeout", self.max_num_timeout, integer=True, allow_zero=True)
        check_positive(f"{p}.poll_interval_s", self.poll_interval_s)
        check_positive(f"{p}.command_timeout_s", self.command_timeout_s)
        check_optional_positive(f"{p}.max_array_size", self.max_array_size, integer=True)
        _line(f"{p}.name", self.name)
        for key in (*_SBATCH_TEXT_KEYS, "cuda_module", "python", "remote_dir", "ssh_config"):
            if getattr(self, key) is not None:
                _line(f"{p}.{key}", getattr(self, key))
        for key in ("setup", "srun_args", "modules", "prepare_commands", "login_setup"):
            value = getattr(self, key) or []
            setattr(
                self, key, [_line(f"{p}.{key}", v, allow_empty=key == "setup") for v in _as_list(f"{p}.{key}", value)]
            )
        _check_srun_args(f"{p}.srun_args", self.srun_args)
        self.additional_parameters = _sbatch_parameters(f"{p}.additional_parameters", self.additional_parameters)
        self.env = dict(_env_vars(f"{p}.env", self.env))
        self.container = container_from_config(self.container, f"{p}.container")
        if self.login_host is not None:
            host = _line(f"{p}.login_host", self.login_host)
            if host.startswith("-") or any(c.isspace() for c in host):
                raise ConfigError(f"{p}.login_host must be an SSH host or alias, got {host!r}")

    @property
    def gpus_requested(self) -> bool:
        return bool(self.gpus_per_node or self.gpus_per_task or (self.gres and "gpu" in self.gres))

    @property
    def requeue_grace_s(self) -> int:
        """How long a task may take to stop (and checkpoint) after SIGTERM before a requeue."""
        return max(5, min(60, self.signal_delay_s // 2))

    def sbatch_options(self) -> dict[str, Any]:
        """``#SBATCH`` options (long names without ``--``) every chunk shares."""
        opts: dict[str, Any] = {
            "job-name": self.name,
            "time": self.timeout_min,
            "nodes": self.nodes,
            "ntasks-per-node": self.tasks_per_node,
            "requeue": True,
            "open-mode": "append",
        }
        if self.signal_delay_s:  # 0: no notice before the time limit (Slurm would send none for @0 either)
            opts["signal"] = f"B:USR2@{self.signal_delay_s}"
        optional = {
            "cpus-per-task": self.cpus_per_task,
            "gpus-per-node": self.gpus_per_node,
            "cpus-per-gpu": self.cpus_per_gpu,
            "gpus-per-task": self.gpus_per_task,
            "mem": None if self.mem_gb is None else _mem(self.mem_gb),
        }
        optional.update({k.replace("_", "-"): getattr(self, k) for k in _SBATCH_TEXT_KEYS})
        opts.update({k: v for k, v in optional.items() if v is not None})
        opts.update({k.replace("_", "-"): v for k, v in self.additional_parameters.items()})
        return opts


def _line(key: str, value: Any, allow_empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    text = str(value)
    if (not text and not allow_empty) or any(c in text for c in "\n\r\0"):
        raise ConfigError(f"{key} must be a non-empty single line, got {value!r}")
    return text


def _as_list(key: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    return list(value)


def _sbatch_parameters(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of sbatch options, got {value!r}")
    out: dict[str, Any] = {}
    for name, val in value.items():
        if not isinstance(name, str) or not _OPTION_NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not an sbatch option name")
        reserved = _abbreviates(name.replace("_", "-"), ("array", "output", "error", "chdir", "signal"))
        if reserved == "signal":
            raise ConfigError(f"{key}.{name}: {_SIGNAL_IS_OURS}")
        if reserved:
            raise ConfigError(f"{key}.{name} is set by the launcher and cannot be overridden")
        out[name] = val if val is True else _line(f"{key}.{name}", val)
    return out


_SIGNAL_IS_OURS = (
    "the launcher sets the signal itself (SIGUSR2 to the batch shell, signal_delay_s before the time "
    "limit: its timeout requeue and preemption handling depend on it); set hydra.launcher.signal_delay_s instead"
)


def _abbreviates(name: str, options: Sequence[str]) -> str | None:
    """The option of ``options`` that ``name`` spells or abbreviates (Slurm's commands take unambiguous
    prefixes of long options, ``--sig`` is ``--signal``), or None."""
    return next((o for o in options if o == name or (len(name) >= 3 and o.startswith(name))), None)


def _check_srun_args(key: str, args: Sequence[str]) -> None:
    """Refuse an srun ``--signal``: Slurm would signal the tasks themselves before the time limit, next to
    (and racing with) the batch shell's SIGUSR2 that drives timeouts and preemption."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and _abbreviates(arg[2:].partition("=")[0], ("signal",)):
            raise ConfigError(f"{key}[{i}] ({arg!r}): {_SIGNAL_IS_OURS}")


def _env_vars(key: str, value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping NAME: value, got {value!r}")
    out = []
    for name, val in value.items():
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ConfigError(f"{key}: {name!r} is not a valid environment variable name")
        if val is None or isinstance(val, (Mapping, list)) or "\0" in str(val):
            raise ConfigError(f"{key}.{name} must be a plain value, got {val!r}")
        out.append((name, str(val).lower() if isinstance(val, bool) else str(val)))
    return out


def _mem(mem_gb: float) -> str:
    """``--mem`` value as submitit writes it: whole GB, else MB."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


# --- sbatch scripts -------------------------------------------------------------------------------
@dataclass
class Chunk:
    """Jobs submitted by one ``sbatch`` call: array index ``i`` runs ``specs[i]`` (sweep position ``offset + i``)."""

    number: int  # 0-based
    total: int
    offset: int
    specs: list[JobSpec]

    @property
    def script_name(self) -> str:
        return f"jobs{self.specs[0].idx}-{self.specs[-1].idx}.sbatch"


def plan_chunks(specs: Sequence[JobSpec], max_array_size: int) -> list[Chunk]:
    """Split jobs into arrays of at most ``max_array_size`` tasks (indices 0..max_array_size-1)."""
    size = max(1, int(max_array_size))
    starts = range(0, len(specs), size)
    return [Chunk(n, len(starts), start, list(specs[start : start + size])) for n, start in enumerate(starts)]


def _sbatch_line(name: str, value: Any) -> str:
    if value is True:
        return f"#SBATCH --{name}"
    return f"#SBATCH --{name}={shlex.quote(str(value))}"


def render_argv(argv: Sequence[str]) -> str:
    """A shell command line for ``argv``; the job payload placeholder becomes ``"$LAUNCHER_DIR"/job.pkl``."""
    parts = []
    for arg in argv:
        parts.append(f'"$LAUNCHER_DIR"/{JOB_PAYLOAD_FILE}' if arg == _JOB_TOKEN else shlex.quote(arg))
    return " ".join(parts)


def job_argv(
    options: SlurmOptions,
    sweep_payload: str,
    binds: Sequence[str],
    host_python: str,
    worker_module: str = "launcher_core.runtime.worker",
) -> list[str]:
    """What one array task runs (after ``srun``): the worker, inside the container if one is set."""
    python = python_for(options.container, options.python or host_python)
    argv = [python, "-m", worker_module, sweep_payload, _JOB_TOKEN]
    return wrap_command(argv, options.container, binds, gpus_requested=options.gpus_requested)


def render_script(
    *,
    options: SlurmOptions,
    chunk: Chunk,
    sweep_id: str,
    code_dir: str,
    log_dir: str,
    launcher_dirs: Sequence[str],
    argv: Sequence[str],
    pythonpath: Sequence[str] = (),
) -> str:
    """The sbatch script of one chunk (a job array).

    Every value that comes from the config is either an ``#SBATCH`` option (validated to be a
    single line, quoted) or quoted with ``shlex.quote``; ``setup`` lines are shell by design.
    """
    first, last = chunk.specs[0].idx, chunk.specs[-1].idx
    n = len(chunk.specs)
    sbatch = dict(options.sbatch_options())
    sbatch["array"] = f"0-{n - 1}%{min(n, options.array_parallelism)}"
    sbatch["output"] = f"{log_dir}/%A.log"
    sbatch["chdir"] = code_dir
    lines = [
        "#!/bin/bash",
        f"# hydra-remote-launcher: sweep {sweep_id}, jobs #{first}-#{last}",
        f"# (array chunk {chunk.number + 1} of {chunk.total}: array index i runs the job at sweep position "
        f"{chunk.offset} + i)",
        *(_sbatch_line(k, v) for k, v in sbatch.items()),
        "",
        "trap '_hrl_usr2=1' USR2  # a notice during the set-up below is acted on once the task is about to start",
        "_hrl_dirs=(",
        *(f"  {shlex.quote(d)}" for d in launcher_dirs),
        ")",
        "_hrl_umask=$(umask)",
        "umask 077  # the launcher's own files (logs, exit code, timeouts) are private; the task keeps the umask",
        f'chmod 600 {shlex.quote(log_dir)}/"$SLURM_ARRAY_JOB_ID".log 2>/dev/null',
        'LAUNCHER_DIR="${_hrl_dirs[$SLURM_ARRAY_TASK_ID]}"',
        "export LAUNCHER_DIR",
        f'exec >>"$LAUNCHER_DIR"/{STDOUT_FILE} 2>>"$LAUNCHER_DIR"/'
        + (STDOUT_FILE if options.stderr_to_stdout else STDERR_FILE),
        f'rm -rf "$LAUNCHER_DIR"/{EXIT_FILE} "$LAUNCHER_DIR"/{RANKS_DIR}',
        'echo "[hydra-remote-launcher] slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname)'
        ' (restart ${SLURM_RESTART_COUNT:-0}) at $(date -Is)" >&2',
        'umask "$_hrl_umask"',
    ]
    lines += _environment_lines(options, pythonpath)
    if options.setup:
        lines += ["# setup", *options.setup]
    lines += _run_lines(options, argv)
    return "\n".join(lines) + "\n"


def _environment_lines(options: SlurmOptions, pythonpath: Sequence[str]) -> list[str]:
    lines: list[str] = []
    modules = [*options.modules, *([options.cuda_module] if options.cuda_module else [])]
    if modules:
        lines.append("# modules")
        lines += [f"module load {shlex.quote(m)}" for m in modules]
    if pythonpath:
        joined = shlex.quote(":".join(pythonpath))
        lines.append(f'export PYTHONPATH={joined}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    lines += [f"export {name}={shlex.quote(value)}" for name, value in options.env.items()]
    return lines


def _run_lines(options: SlurmOptions, argv: Sequence[str]) -> list[str]:
    """Start the task in the background, requeue on SIGUSR2 (see module doc), pick the job's result
    when a task failed (see :func:`_failed_rank_function`), record the exit code."""
    srun = ""
    if options.use_srun:
        # --kill-on-bad-exit: a failed task stops its peers (which would wait for it in a collective
        # until the time limit); srun_args come after it, so "--kill-on-bad-exit=0" there wins
        args = ["srun", "--unbuffered", "--kill-on-bad-exit=1", *(shlex.quote(a) for a in options.srun_args)]
        srun = " ".join(args) + " "
    return [
        *_requeue_function(options),
        "trap _hrl_requeue USR2",
        'if [ -n "${_hrl_usr2:-}" ]; then _hrl_requeue; fi',
        *_failed_rank_function(),
        f'export {RANKS_DIR_ENV}="$LAUNCHER_DIR"/{RANKS_DIR}',
        f"{srun}{render_argv(argv)} &",
        "_hrl_child=$!",
        "while :; do",
        '  wait "$_hrl_child"',
        "  _hrl_code=$?",
        '  kill -0 "$_hrl_child" 2>/dev/null || break',
        "done",
        "umask 077",
        'if [ "$_hrl_code" != 0 ]; then _hrl_failed_rank; fi',
        f'echo "$_hrl_code" >"$LAUNCHER_DIR"/{EXIT_FILE}',
        'exit "$_hrl_code"',
    ]


def _requeue_function(options: SlurmOptions) -> list[str]:
    """``_hrl_requeue``, the SIGUSR2 handler: a timeout (the signal came ``signal_delay_s`` before the
    limit) requeues while fewer than ``max_num_timeout`` timeout requeues happened, a preemption
    notice (earlier) always; the running task (if any yet) gets SIGTERM first."""
    limit_s = options.timeout_min * 60
    return [
        "_hrl_requeue() {",
        "  local kind=preemption n=0",
        "  umask 077",
        f"  if [ $((SECONDS + {SIGNAL_EARLY_S})) -ge {limit_s - options.signal_delay_s} ]; then kind=timeout; fi",
        '  if [ "$kind" = timeout ]; then',
        f'    n=$(cat "$LAUNCHER_DIR"/{TIMEOUTS_FILE} 2>/dev/null || echo 0)',
        f'    if [ "$n" -ge {options.max_num_timeout} ]; then',
        '      echo "[hydra-remote-launcher] time limit near: not requeued'
        f' ($n requeues after timeouts, max_num_timeout={options.max_num_timeout}; $SECONDS s into the run)" >&2',
        "      return",
        "    fi",
        f'    echo $((n + 1)) >"$LAUNCHER_DIR"/{TIMEOUTS_FILE}',
        "  fi",
        '  echo "[hydra-remote-launcher] $kind: stopping the task and requeueing it ($SECONDS s into the run)" >&2',
        '  if [ -n "${_hrl_child:-}" ]; then',
        '    kill -TERM "$_hrl_child" 2>/dev/null',
        f'    ( sleep {options.requeue_grace_s}; kill -KILL "$_hrl_child" 2>/dev/null ) &',
        '    wait "$_hrl_child"',
        "  fi",
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" && exit 0',
        '  echo "[hydra-remote-launcher] scontrol requeue failed" >&2',
        "}",
    ]


def _failed_rank_function() -> list[str]:
    """``_hrl_failed_rank``, run when srun (or the worker) exited non-zero.

    Every task (rank) of a job runs the worker; rank 0 writes ``result.pkl``, a rank that fails also
    writes its result to ``ranks/failed.<rank>.pkl`` (:func:`launcher_core.runtime.worker.run_ranked`). The
    failure of the lowest failed rank becomes the job's result, so Hydra gets that exception even when
    rank 0 completed. If no rank left one (a task was killed), rank 0's result is moved aside: a
    failed job never comes back COMPLETED.
    """
    ranks = f'"$LAUNCHER_DIR"/{RANKS_DIR}'
    return [
        "_hrl_failed_rank() {",
        "  local f r best=",
        f"  for f in {ranks}/failed.*.pkl; do",
        "    r=${f##*/failed.}; r=${r%.pkl}",
        '    case "$r" in "" | *[!0-9]*) continue ;; esac',
        '    if [ -z "$best" ] || [ "$r" -lt "$best" ]; then best=$r; fi',
        "  done",
        '  if [ -n "$best" ]; then',
        f'    mv -f {ranks}/failed."$best".pkl "$LAUNCHER_DIR"/{RESULT_FILE}',
        f'  elif [ -f "$LAUNCHER_DIR"/{RESULT_FILE} ]; then',
        f'    mkdir -p {ranks} && mv -f "$LAUNCHER_DIR"/{RESULT_FILE} {ranks}/result.0.pkl',
        "  fi",
        "}",
    ]


# --- talking to Slurm -------------------------------------------------------------------------------
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


def read_max_array_size(commands: SlurmCommands) -> int:
    """``MaxArraySize`` from ``scontrol show config`` (array indices must stay below it)."""
    proc = commands.run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise BackendError(f"could not read MaxArraySize from `scontrol show config`: {proc.stderr.strip()}")
    return int(match.group(1))


# --- where the cluster is: this machine's file system, or a login node over SSH --------------------------
@dataclass
class ExitInfo:
    """What a job's launcher dir says: the worker's exit code (None: not finished) and the result."""

    code: int | None
    has_result: bool


class LocalSite:
    """The launching machine is a login node: it runs the Slurm commands and shares the file
    system with the compute nodes, so job files are written and read in place."""

    def __init__(self, options: SlurmOptions) -> None:
        self.options = options
        self.commands = SlurmCommands(options.command_timeout_s)
        self.sweep_dir = ""
        self.code_dir = ""
        self.pythonpath: list[str] = []
        self.worker_module = "launcher_core.runtime.worker"
        self.default_python = sys.executable

    def prepare(self, sweep: SweepInfo, script_dirs: Sequence[str], dry_run: bool) -> None:
        self.sweep_dir, self.code_dir = str(sweep.sweep_dir), str(sweep.code_dir)
        self.pythonpath = list(script_dirs)
        if not dry_run:
            for command in self.options.prepare_commands:
                log.info("prepare command: %s", command)
                proc = subprocess.run(
                    ["bash", "-c", command], cwd=sweep.code_dir, capture_output=True, text=True, timeout=3600
                )
                if proc.returncode != 0:
                    raise BackendError(_prepare_failed(command, proc.returncode, proc.stderr))

    def cluster_job_dir(self, spec: JobSpec) -> tuple[str, str]:
        """(output dir on the cluster, path relative to the sweep dir or "")."""
        return str(spec.output_dir), ""

    @contextmanager
    def job_config(self, spec: JobSpec, job_dir: str, rel: str) -> Iterator[Any]:
        yield spec.config

    def upload(self, paths: Sequence[Path], cluster_dirs: Sequence[str]) -> None:
        """Nothing to upload: the files already are where the cluster reads them."""

    def exit_info(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, ExitInfo]:
        out = {}
        for job_id, handle in handles.items():
            ldir = Path(str(handle.get("launcher_dir", "")))
            try:
                code: int | None = int((ldir / EXIT_FILE).read_text().strip())
            except (OSError, ValueError):
                code = None
            out[job_id] = ExitInfo(code, (ldir / RESULT_FILE).exists())
        return out

    def fetch(self, jobs: Mapping[str, dict[str, Any]], local_dirs: Mapping[str, Path], pull_filter: Any) -> None:
        """Nothing to fetch: the cluster wrote the results into the shared sweep dir."""

    def read_log(self, handle: Mapping[str, Any], name: str, offset: int) -> bytes:
        try:
            with open(Path(str(handle.get("launcher_dir", ""))) / name, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def close(self) -> None:
        self.commands.close()


class RemoteSlurmCommands(SlurmCommands):
    """Slurm's commands on the login node: each one is a session on the one SSH master connection
    (:mod:`launcher_core.remote.ssh`), after the ``login_setup`` lines (PATH, SLURM_CONF, module load)."""

    def __init__(self, conn: Any, setup: Sequence[str], timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.conn = conn
        self.setup = list(setup)

    def run(self, argv: Sequence[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        self.calls[argv[0]] += 1
        script = "\n".join(
            [
                *self.setup,
                'e="${TMPDIR:-/tmp}/hrl-err.$$"',
                f'{shlex.join(argv)} 2>"$e"',
                "rc=$?",
                'printf "\\n%s %s\\n" __HRL_RC__ "$rc"',
                'cat "$e"; rm -f "$e"',
            ]
        )
        out = self.script(script, what=argv[0], timeout_s=timeout_s)
        stdout, sep, rest = out.rpartition("\n__HRL_RC__ ")
        if not sep:
            raise BackendError(f"{argv[0]} on {self.conn.label}: unexpected answer {out[-300:]!r}")
        code, _, stderr = rest.partition("\n")
        return subprocess.CompletedProcess(list(argv), int(code.strip() or 1), stdout, stderr)

    def script(self, text: str, *, what: str, timeout_s: float | None = None) -> str:
        """Run a sh script on the login node (bounded, retried on transport errors)."""
        timeout = timeout_s or self.timeout_s
        return self.conn.call(what, lambda: self.conn.run_script(text, what=what, timeout_s=timeout))


class LoginSite:
    """``login_host``: code and job files are rsynced to the login node, every Slurm command runs
    there over one SSH connection, results come back with rsync (``fetch``).

    The remote layout is remote_ssh's (:mod:`launcher_core.backends.remote_ssh`): a code snapshot
    per launch under ``<remote_dir>/snapshots``, the sweep dir mirrored under ``<remote_dir>/runs``;
    jobs run ``launcher_core.runtime.remote_worker`` from the shipped modules, so the cluster needs only
    hydra-core, omegaconf and cloudpickle.
    """

    def __init__(self, options: SlurmOptions) -> None:
        from launcher_core.remote.ssh import ConnectionPool, HostAddress, SSHOptions

        assert options.login_host is not None
        self.options = options
        self.address = HostAddress.parse(options.login_host, "hydra.launcher.login_host")
        ssh = SSHOptions(ssh_config=options.ssh_config, command_timeout_s=options.command_timeout_s)
        self.pool = ConnectionPool(ssh)
        self.conn = self.pool.get(self.address)
        self.commands = RemoteSlurmCommands(self.conn, options.login_setup, options.command_timeout_s)
        self.sweep_dir = self.code_dir = self.local_sweep_dir = ""
        self.pythonpath: list[str] = []
        self.worker_module = "launcher_core.runtime.remote_worker"
        self.default_python = "python3"

    def prepare(self, sweep: SweepInfo, script_dirs: Sequence[str], dry_run: bool) -> None:
        from launcher_core.remote.scripts import parse_kv, prepare_script
        from launcher_core.remote.workspace import new_snapshot_tag

        self.local_sweep_dir = str(sweep.sweep_dir)
        tag = new_snapshot_tag()
        remote_dir = self.options.remote_dir or f"~/hydra-remote-launcher/{Path(sweep.code_dir).name}"
        rel_sweep = _relative_to(sweep.sweep_dir, sweep.code_dir)
        if dry_run:  # no connection: the layout prepare_script would claim, on a host where it is free
            shown = _home_relative(remote_dir)
            if not shown.startswith("/"):
                log.warning(
                    "dry run: remote_dir %r is in the home dir on %s, shown as ~", remote_dir, self.address.label
                )
            sweep_dir = f"{shown}/runs/{rel_sweep}" if rel_sweep else f"{shown}/runs/by-id/{sweep.sweep_id}"
            self._set_layout(sweep, script_dirs, shown, sweep_dir, tag)
            return
        script = prepare_script(
            remote_dir=remote_dir, sweep_id=sweep.sweep_id, tag=tag, rel_sweep=rel_sweep, host_key="slurm"
        )
        info = parse_kv(self.commands.script(script, what="preparing the remote dirs"))
        if "remote_dir" not in info or "sweep_dir" not in info:
            raise BackendError(f"login host {self.address.label}: unexpected answer while preparing: {info}")
        self._set_layout(sweep, script_dirs, info["remote_dir"], info["sweep_dir"], tag)
        self._sync_code(sweep, info["remote_dir"], info.get("latest"), tag)
        self._ship_pylib(sweep.sweep_dir)
        for command in self.options.prepare_commands:
            log.info("prepare command on %s: %s", self.address.label, command)
            body = "\n".join([*self.options.login_setup, f"cd {shlex.quote(self.code_dir)}", command])
            self.commands.script(body, what=f"prepare command {command!r}", timeout_s=3600)

    def _set_layout(
        self, sweep: SweepInfo, script_dirs: Sequence[str], remote_dir: str, sweep_dir: str, tag: str
    ) -> None:
        """Cluster paths of the sweep dir, the code snapshot and the jobs' PYTHONPATH."""
        self.sweep_dir = sweep_dir
        self.code_dir = f"{remote_dir}/snapshots/{sweep.sweep_id}/{tag}"
        pylib = f"{self.sweep_dir}/{LAUNCHER_DIR}/{SLURM_DIR}/pylib"
        rel_scripts = [_relative_to(Path(d), sweep.code_dir) for d in script_dirs]
        self.pythonpath = [pylib, self.code_dir, *(f"{self.code_dir}/{r}" for r in rel_scripts if r)]

    def _sync_code(self, sweep: SweepInfo, remote_dir: str, latest: str | None, tag: str) -> None:
        from launcher_core.remote.codesync import (
            DEFAULT_EXCLUDES,
            excludes_for_local_outputs,
            filter_args,
            git_state,
            sync_snapshot,
            write_git_state,
        )

        code_dir = Path(sweep.code_dir)
        write_git_state(git_state(code_dir), sweep.sweep_dir / LAUNCHER_DIR / SLURM_DIR / "code")
        filters = filter_args((), DEFAULT_EXCLUDES, excludes_for_local_outputs(code_dir, sweep.sweep_dir))
        self.conn.call(
            "code sync",
            lambda: sync_snapshot(self.conn, code_dir, self.code_dir, filters=filters, link_dest=latest),
        )
        latest_file = f"{remote_dir}/snapshots/LATEST"
        done = (
            f"touch {shlex.quote(self.code_dir + '.complete')}\n"
            f"printf '%s\\n' {shlex.quote(f'{sweep.sweep_id}/{tag}')} > {shlex.quote(latest_file)}.$$\n"
            f"mv -f {shlex.quote(latest_file)}.$$ {shlex.quote(latest_file)}\n"
        )
        self.commands.script(done, what="finishing the code snapshot")

    def _ship_pylib(self, sweep_dir: Path) -> None:
        """Copy the job-side package (:mod:`launcher_core.runtime`) into the local sweep dir;
        ``upload`` sends it along and it comes first on the jobs' PYTHONPATH (the cluster needs no
        install of ours)."""
        from launcher_core.runtime import copy_runtime

        copy_runtime(sweep_dir / LAUNCHER_DIR / SLURM_DIR / "pylib")

    def cluster_job_dir(self, spec: JobSpec) -> tuple[str, str]:
        rel = _relative_to(spec.output_dir, Path(self.local_sweep_dir))
        if not rel:
            raise BackendError(
                f"job #{spec.idx}: with login_host the sweep dir is mirrored on the cluster, so the job's "
                f"output dir {spec.output_dir} must be inside the sweep dir {self.local_sweep_dir}"
            )
        return f"{self.sweep_dir}/{rel}", rel

    @contextmanager
    def job_config(self, spec: JobSpec, job_dir: str, rel: str) -> Iterator[Any]:
        from launcher_core.remote.workspace import remote_job_config

        with remote_job_config(spec.config, self.sweep_dir, rel) as cfg:
            yield cfg

    def upload(self, paths: Sequence[Path], cluster_dirs: Sequence[str]) -> None:
        """One rsync of the files (local sweep dir -> remote sweep dir); stale results of earlier
        attempts in ``cluster_dirs`` (launcher dirs) are removed first."""
        import tempfile

        local_root = Path(self.local_sweep_dir)
        pylib = local_root / LAUNCHER_DIR / SLURM_DIR / "pylib"
        files = [str(p.relative_to(local_root)) for p in paths]
        files += [str(p.relative_to(local_root)) for p in pylib.rglob("*.py")]
        names = (RESULT_FILE, EXIT_FILE, TIMEOUTS_FILE, RANKS_DIR)
        stale = " ".join(shlex.quote(f"{d}/{name}") for d in cluster_dirs for name in names)
        logs = shlex.quote(f"{self.sweep_dir}/{LAUNCHER_DIR}/{SLURM_DIR}/logs")
        self.commands.script(f"mkdir -p {logs}\nrm -rf {stale}", what="preparing the job dirs")
        with tempfile.NamedTemporaryFile("w", prefix="hrl-files-", suffix=".txt") as listing:
            listing.write("".join(f"{f}\n" for f in files))
            listing.flush()
            args = ["-a", f"--files-from={listing.name}", f"{local_root}/", self.conn.remote(self.sweep_dir + "/")]
            self.conn.call("upload of job files", lambda: self.conn.rsync(args, what="job file upload"))

    def exit_info(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, ExitInfo]:
        """One ssh session: ``JOB_ID CODE|- 0|1`` per job."""
        lines = []
        for job_id, handle in handles.items():
            ldir = shlex.quote(str(handle.get("launcher_dir", "")))
            lines.append(
                f"c=-; [ -s {ldir}/{EXIT_FILE} ] && read -r c < {ldir}/{EXIT_FILE}; "
                f'r=0; [ -f {ldir}/{RESULT_FILE} ] && r=1; echo {shlex.quote(job_id)} "$c" "$r"'
            )
        out = self.commands.script("\n".join(lines), what="reading exit codes") if lines else ""
        info = {}
        for line in out.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] in handles:
                code = int(words[1]) if words[1].lstrip("-").isdigit() and words[1] != "-" else None
                info[words[0]] = ExitInfo(code, words[2] == "1")
        return info

    def fetch(self, jobs: Mapping[str, dict[str, Any]], local_dirs: Mapping[str, Path], pull_filter: Any) -> None:
        from launcher_core.remote.workspace import fetch_job_dirs

        fetch_job_dirs(self.conn, jobs, local_dirs, pull_filter)

    def clean(
        self,
        handles: Mapping[str, dict[str, Any]],
        *,
        sweep_id: str,
        sweep_handles: Mapping[str, dict[str, Any]] | None = None,
        dry_run: bool = False,
    ) -> Any:
        """Delete the mirrored job dirs (and, with ``sweep_handles``, the mirrored sweep dir and the
        sweep's snapshots) on the login node, with remote_ssh's checked paths and script."""
        from launcher_core.backends.base import CleanReport
        from launcher_core.remote.paths import plan_remote, plan_targets
        from launcher_core.remote.workspace import clean_host

        label = self.address.label
        plans = plan_remote(
            handles,
            sweep_id=sweep_id,
            sweep_handles=sweep_handles,
            host_of=lambda _h: label,
            remote_dir_of=lambda h: login_remote_dir(h, sweep_id),
        )
        report = CleanReport()
        plan_targets(report, plans)
        if dry_run or not plans:
            report.sweep_cleaned = not dry_run and sweep_handles is not None
            return report
        cleaned, notes, sweeps_done = clean_host(self.conn, sweep_id, plans[label])
        report.cleaned, report.notes = cleaned, [f"{label}: {n}" for n in notes]
        report.sweep_cleaned = sweep_handles is not None and sweeps_done
        return report

    def read_log(self, handle: Mapping[str, Any], name: str, offset: int) -> bytes:
        path = shlex.quote(f"{handle.get('launcher_dir', '')}/{name}")
        script = f"if [ -f {path} ]; then tail -c +{int(offset) + 1} {path}; fi\n"
        return self.conn.call("reading a job log", lambda: self.conn.run_script_bytes(script, what="log read"))

    def close(self) -> None:
        self.pool.close()


def login_remote_dir(handle: Mapping[str, Any], sweep_id: str) -> str:
    """The ``remote_dir`` of a login_host job, from its snapshot path
    ``<remote_dir>/snapshots/<sweep_id>/<tag>`` (handles do not store it); checked for cleaning."""
    from launcher_core.remote.paths import CleanRefused, check_root

    snapshot = handle.get("remote_cwd")
    parts = str(snapshot or "").rstrip("/").split("/")
    if len(parts) < 4 or parts[-3] != "snapshots" or parts[-2] != sweep_id or not parts[-1]:
        raise CleanRefused(
            f"refusing to clean: the snapshot path {snapshot!r} of a job handle is not "
            f"<remote_dir>/snapshots/{sweep_id}/<tag>"
        )
    return check_root("/".join(parts[:-3]), f"the remote_dir of the snapshot path {snapshot!r}, i.e.")


def _private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) and make it owner-only: it holds payloads, results or logs."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _home_relative(remote_dir: str) -> str:
    """``remote_dir`` as the login host resolves it (see ``remote_path_expr``), with ``~`` for the home
    dir there, which a dry run cannot ask for."""
    if remote_dir.startswith(("/", "~/")):
        return remote_dir
    return "~" if remote_dir in ("", "~") else f"~/{remote_dir}"


def _relative_to(path: Path, base: Path | str) -> str:
    """``path`` relative to ``base`` as a POSIX string, or "" when it is not strictly inside."""
    try:
        rel = Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except (ValueError, OSError):
        return ""
    return "" if rel in ("", ".") or "\n" in rel else rel


def _prepare_failed(command: str, code: int, stderr: str) -> str:
    return f"hydra.launcher.prepare_commands: {command!r} failed with code {code}: {stderr.strip()[-2000:]}"


# --- the backend ------------------------------------------------------------------------------------
class SlurmBackend(Backend):
    """Submits job arrays with ``sbatch``; polls with one ``sacct`` per poll; cancels with ``scancel``."""

    name = "slurm"
    detached = True  # jobs run on without us; a relaunch re-attaches instead of resubmitting

    def __init__(self, options: SlurmOptions, *, task_function: Any = None, hydra_context: Any = None) -> None:
        self.options = options
        self.poll_interval_s = options.poll_interval_s
        self.site: LocalSite | LoginSite = LoginSite(options) if options.login_host else LocalSite(options)
        self.commands = self.site.commands
        self._task_function = task_function
        self._hydra_context = hydra_context
        self._sweep: SweepInfo | None = None
        self._sweep_payload: Path | None = None
        self._max_array_size: int | None = options.max_array_size
        self._sacct_down_until = 0.0
        self._failing_since: float | None = None

    # --- contract -------------------------------------------------------------------------------------
    @property
    def calls(self) -> Counter[str]:
        """Slurm command calls so far, by command name (``sbatch``, ``sacct``, ...)."""
        return self.commands.calls

    def stored_config(self) -> dict[str, Any]:
        """What ``status``/``pull``/``cancel`` need to rebuild this backend (no env values, no secrets)."""
        return {
            "poll_interval_s": self.options.poll_interval_s,
            "command_timeout_s": self.options.command_timeout_s,
            "timeout_min": self.options.timeout_min,
            "login_host": self.options.login_host,
            "ssh_config": self.options.ssh_config,
            "login_setup": self.options.login_setup,
        }

    def prepare(self, sweep: SweepInfo) -> None:
        """Write the sweep payload (content-addressed: requeued tasks of earlier batches keep theirs);
        with ``login_host`` also sync the code; run ``prepare_commands`` once, in the code dir."""
        from launcher_core.runtime.worker import atomic_write_bytes, sweep_payload_bytes

        self._sweep = sweep
        for d in (self.slurm_dir.parent, self.slurm_dir, self.slurm_dir / "logs"):  # payloads, scripts, logs
            _private_dir(d)
        data = sweep_payload_bytes(self._task_function, self._hydra_context)
        path = self.slurm_dir / f"sweep-{hashlib.sha256(data).hexdigest()[:16]}.pkl"
        if not path.exists():
            atomic_write_bytes(path, data)
        self._sweep_payload = path
        self.site.prepare(sweep, _script_dirs(self._task_function, sweep.code_dir), self.options.dry_run)

    def submit(self, jobs: Sequence[JobSpec]) -> Mapping[str, dict[str, Any]]:
        """One ``sbatch`` per chunk of at most MaxArraySize jobs; handles of every job submitted.

        If a later chunk cannot be submitted, :class:`SubmitError` carries the handles of the
        chunks that were (they run and are tracked; a relaunch submits only the rest).
        """
        if not jobs:
            return {}
        chunks = self.write_scripts(jobs)
        files = [self._sweep_payload, *(p for _c, p in chunks), *(s.launcher_dir / JOB_PAYLOAD_FILE for s in jobs)]
        self.site.upload([f for f in files if f is not None], [self._cluster_dirs(s)[1] for s in jobs])
        throttle = len(chunks) > 1 and len(jobs) > self.options.array_parallelism
        handles: dict[str, dict[str, Any]] = {}
        previous: str | None = None
        for chunk, script in chunks:
            try:
                array_id = self._sbatch(self._on_cluster(script), after=previous if throttle else None)
            except BackendError as exc:
                if not handles:
                    raise
                raise SubmitError(f"{exc}; {len(handles)} of {len(jobs)} jobs were submitted before", handles) from exc
            previous = array_id
            handles.update(self._handles(chunk, array_id))
        return handles

    def poll(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, JobStatus]:
        """One ``sacct`` for all jobs (``squeue`` + exit files for what it does not know)."""
        if not handles:
            return {}
        records = self._query(handles)
        self._release_requeued(handles, records)
        need_files = {
            j: h for j, h in handles.items() if _record(records, h).state in ("UNKNOWN", "FAILED")
        }  # exit codes and results tell why, or whether a job unknown to Slurm finished
        files = self.site.exit_info(need_files) if need_files else {}
        return {j: self._status(h, _record(records, h), files.get(j)) for j, h in handles.items()}

    def fetch(
        self, jobs: Mapping[str, dict[str, Any]], local_dirs: Mapping[str, Path], pull_filter: Any = None
    ) -> None:
        """Nothing on a shared file system; with ``login_host`` one rsync back (incremental)."""
        if jobs:
            self.site.fetch(jobs, local_dirs, pull_filter)

    def cancel(self, handles: Mapping[str, dict[str, Any]]) -> None:
        ids = sorted({str(h["slurm_job_id"]) for h in handles.values() if h and h.get("slurm_job_id")})
        if not ids:
            return
        proc = self.commands.run(["scancel", *ids])
        if proc.returncode != 0:
            log.warning("scancel %s: %s", " ".join(ids[:10]), proc.stderr.strip())

    def close(self) -> None:
        self.site.close()

    def clean(
        self,
        handles: Mapping[str, dict[str, Any]],
        *,
        sweep_id: str,
        sweep_handles: Mapping[str, dict[str, Any]] | None = None,
        dry_run: bool = False,
    ) -> Any:
        """With ``login_host``: delete the mirrored job files on the login node. Without it the
        cluster wrote into the local sweep dir itself: there is no other copy to delete."""
        from launcher_core.backends.base import CleanReport

        if isinstance(self.site, LoginSite):
            return self.site.clean(handles, sweep_id=sweep_id, sweep_handles=sweep_handles, dry_run=dry_run)
        return CleanReport(nothing_to_clean="slurm on a shared file system: the sweep dir is the only copy")

    def read_log(self, handle: Mapping[str, Any], stream: str, offset: int = 0) -> bytes:
        """Live bytes of a job's stdout/stderr from ``offset`` on."""
        return self.site.read_log(handle, STDOUT_FILE if stream == "stdout" else STDERR_FILE, offset)

    # --- scripts --------------------------------------------------------------------------------------
    @property
    def slurm_dir(self) -> Path:
        if self._sweep is None:
            raise BackendError("SlurmBackend.prepare() was not called")
        return self._sweep.sweep_dir / LAUNCHER_DIR / SLURM_DIR

    def _on_cluster(self, local_path: Path) -> str:
        """Where a file of the local sweep dir is on the cluster."""
        assert self._sweep is not None
        rel = local_path.relative_to(self._sweep.sweep_dir).as_posix()
        return f"{self.site.sweep_dir}/{rel}"

    def _cluster_dirs(self, spec: JobSpec) -> tuple[str, str]:
        """(job output dir, job launcher dir) on the cluster."""
        job_dir, _rel = self.site.cluster_job_dir(spec)
        return job_dir, f"{job_dir}/{LAUNCHER_DIR}"

    def max_array_size(self) -> int:
        if self._max_array_size is None and self.options.dry_run and self.options.login_host:
            log.warning(
                "dry run: not connecting to %s, assuming MaxArraySize=%d (set hydra.launcher.max_array_size "
                "to the cluster's for the exact chunks)",
                self.options.login_host,
                DEFAULT_MAX_ARRAY_SIZE,
            )
            self._max_array_size = DEFAULT_MAX_ARRAY_SIZE
        if self._max_array_size is None:
            try:
                self._max_array_size = read_max_array_size(self.commands)
            except BackendError:
                if not self.options.dry_run:
                    raise
                log.warning("dry run: cannot ask Slurm for MaxArraySize, assuming %d", DEFAULT_MAX_ARRAY_SIZE)
                self._max_array_size = DEFAULT_MAX_ARRAY_SIZE
        return self._max_array_size

    def write_scripts(self, jobs: Sequence[JobSpec]) -> list[tuple[Chunk, Path]]:
        """Write every job payload and one sbatch script per chunk (cluster paths); submit nothing."""
        from launcher_core.runtime.worker import atomic_write_bytes

        assert self._sweep is not None and self._sweep_payload is not None, "prepare() first"
        for spec in jobs:
            self._write_job_payload(spec, atomic_write_bytes)
        argv = job_argv(
            self.options,
            self._on_cluster(self._sweep_payload),
            self._binds(jobs),
            self.site.default_python,
            self.site.worker_module,
        )
        out = []
        for chunk in plan_chunks(jobs, self.max_array_size()):
            text = render_script(
                options=self.options,
                chunk=chunk,
                sweep_id=self._sweep.sweep_id,
                code_dir=self.site.code_dir,
                log_dir=self._on_cluster(self.slurm_dir / "logs"),
                launcher_dirs=[self._cluster_dirs(s)[1] for s in chunk.specs],
                argv=argv,
                pythonpath=self.site.pythonpath,
            )
            path = self.slurm_dir / chunk.script_name
            atomic_write_bytes(path, text.encode(), mode=0o600)  # may hold `env` values: owner-only
            out.append((chunk, path))
        return out

    def dry_run(self, specs: Sequence[JobSpec]) -> dict[str, Any]:
        """``dry_run=true``: write payloads and sbatch scripts into the sweep dir, submit nothing;
        per job the script and array index that would run it."""
        chunks = self.write_scripts(specs)
        host = self.options.login_host
        where = f" (with the paths on {host}; nothing was copied there)" if host else ""
        log.info(
            "dry run: %d sbatch scripts for %d jobs written to %s%s; nothing was submitted. "
            "Submit one with `sbatch %s`.",
            len(chunks),
            len(specs),
            self.slurm_dir,
            where,
            chunks[0][1] if chunks else "SCRIPT",
        )
        return {
            spec.job_id: DryRunResult(str(script), i, str(spec.output_dir))
            for chunk, script in chunks
            for i, spec in enumerate(chunk.specs)
        }

    def _write_job_payload(self, spec: JobSpec, write: Any) -> None:
        from launcher_core.runtime.worker import job_payload_bytes

        ldir = spec.launcher_dir
        _private_dir(ldir)
        for stale in (RESULT_FILE, EXIT_FILE, TIMEOUTS_FILE):  # from an earlier attempt of this job
            (ldir / stale).unlink(missing_ok=True)
        shutil.rmtree(ldir / RANKS_DIR, ignore_errors=True)
        job_dir, rel = self.site.cluster_job_dir(spec)
        with self.site.job_config(spec, job_dir, rel) as cfg:
            data = job_payload_bytes(cfg, spec.idx, f"{job_dir}/{LAUNCHER_DIR}/{RESULT_FILE}")
        spec.release_config()  # it is in the payload now: do not hold thousands of configs
        write(ldir / JOB_PAYLOAD_FILE, data)

    def _binds(self, jobs: Sequence[JobSpec]) -> list[str]:
        """Container binds: code dir, sweep dir, the script dirs and any job dir outside the sweep."""
        paths = [self.site.code_dir, self.site.sweep_dir, *self.site.pythonpath]
        paths += [self._cluster_dirs(s)[0] for s in jobs]
        return job_binds(p for p in paths if p)

    def _sbatch(self, script: str, after: str | None = None) -> str:
        argv = ["sbatch", "--parsable"]
        if after:
            argv.append(f"--dependency=afterany:{after}")
        proc = self.commands.run([*argv, script])
        array_id = proc.stdout.strip().split(";")[0]
        if proc.returncode != 0 or not array_id.isdigit():
            raise BackendError(f"sbatch {script} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return array_id

    def _handles(self, chunk: Chunk, array_id: str) -> dict[str, dict[str, Any]]:
        now = time.time()
        out = {}
        for i, spec in enumerate(chunk.specs):
            job_dir, rel = self.site.cluster_job_dir(spec)
            handle: dict[str, Any] = {
                "slurm_job_id": f"{array_id}_{i}",
                "array_job_id": array_id,
                "array_index": i,
                "chunk_offset": chunk.offset,
                "launcher_dir": f"{job_dir}/{LAUNCHER_DIR}",
                "submitted_at": now,
                "timeout_min": self.options.timeout_min,
            }
            if self.options.login_host:  # what fetch and localize_result need
                handle.update(
                    login_host=self.options.login_host,
                    rel=rel,
                    remote_sweep_dir=self.site.sweep_dir,
                    remote_job_dir=job_dir,
                    remote_cwd=self.site.code_dir,
                    local_cwd=str(self._sweep.code_dir) if self._sweep else None,
                    local_sweep_dir=str(self._sweep.sweep_dir) if self._sweep else None,
                )
            out[spec.job_id] = handle
        return out

    # --- status ---------------------------------------------------------------------------------------
    def _query(self, handles: Mapping[str, dict[str, Any]]) -> dict[str, SlurmRecord]:
        """Records of the handled array tasks: one sacct; squeue only when sacct fails or has
        lacked a job for longer than accounting lags behind (``SACCT_LAG_S``)."""
        now = time.time()
        arrays = sorted({str(h.get("array_job_id")) for h in handles.values() if h.get("array_job_id")})
        records: dict[str, SlurmRecord] = {}
        ok = False
        if arrays and now >= self._sacct_down_until:
            ok, records = self._sacct(arrays)
            _pending_unsplit_arrays(records, handles.values())
        lagging = [
            h
            for h in handles.values()
            if str(h.get("slurm_job_id")) not in records and now - float(h.get("submitted_at") or 0) > SACCT_LAG_S
        ]
        if not ok or lagging:
            squeue_ok, queued = self._squeue()
            for task_id, record in queued.items():
                records.setdefault(task_id, record)
            ok = ok or squeue_ok
        self._note_health(ok)
        return records

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

    def _release_requeued(self, handles: Mapping[str, dict[str, Any]], records: Mapping[str, SlurmRecord]) -> None:
        """Start requeued tasks now instead of after Slurm's ~120 s requeue hold."""
        if "begin" in self.options.additional_parameters:
            return  # the user asked for a begin time: do not override it
        held = sorted({str(h["slurm_job_id"]) for h in handles.values() if _record(records, h).held_by_requeue})
        if held:
            proc = self.commands.run(["scontrol", "update", f"JobId={','.join(held)}", "StartTime=now"])
            if proc.returncode != 0:
                log.debug("releasing requeued jobs %s: %s", held, proc.stderr.strip())

    def _status(self, handle: Mapping[str, Any], record: SlurmRecord, files: ExitInfo | None) -> JobStatus:
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
            minutes = handle.get("timeout_min", self.options.timeout_min)
            return JobStatus(JobState.FAILED, f"timeout: Slurm time limit ({minutes} min) reached", record.nodes)
        if state == "FAILED":
            return JobStatus(JobState.FAILED, _failure_reason(record, files), record.nodes)
        return JobStatus(JobState.FAILED, _FAILED_REASONS.get(state, state.lower()), record.nodes)


def _failure_reason(record: SlurmRecord, files: ExitInfo | None) -> str:
    code = record.exit_code if record.exit_code is not None else (files.code if files else None)
    if record.signal:
        return f"killed by signal {record.signal}"
    has_result = bool(files and files.has_result)
    if code == 1 and has_result:
        return "task raised an exception"
    return f"exited with code {code}" + ("" if has_result else " without writing a result")


def _status_from_files(handle: Mapping[str, Any], files: ExitInfo | None) -> JobStatus:
    """Neither sacct nor squeue knows the job: its exit file tells, or it is lost after a while."""
    code = files.code if files else None
    if code == 0:
        return JobStatus(JobState.COMPLETED)
    if code is not None:
        return JobStatus(JobState.FAILED, _failure_reason(SlurmRecord("FAILED", exit_code=code), files))
    if time.time() - float(handle.get("submitted_at") or 0) > LOST_AFTER_S:
        return JobStatus(
            JobState.FAILED,
            "left Slurm without an exit code (cancelled, timed out or killed; sacct unavailable to tell)",
        )
    return JobStatus(JobState.SUBMITTED)


def _pending_unsplit_arrays(records: dict[str, SlurmRecord], handles: Any) -> None:
    """sacct lists an array none of whose tasks started yet as the bare array id ("12|PENDING"):
    its tasks are pending."""
    for handle in handles:
        task_id, array_id = str(handle.get("slurm_job_id")), str(handle.get("array_job_id"))
        bare = records.get(array_id)
        if task_id not in records and bare is not None and bare.state in _PENDING:
            records[task_id] = SlurmRecord("PENDING")


def _record(records: Mapping[str, SlurmRecord], handle: Mapping[str, Any]) -> SlurmRecord:
    return records.get(str(handle.get("slurm_job_id"))) or SlurmRecord("UNKNOWN")


def _script_dirs(task_function: Any, code_dir: Path) -> list[str]:
    """The dir of the app's main script when the task function lives there and it is not the code
    dir: the function is pickled by value, but the modules it imports from beside it must import."""
    if getattr(task_function, "__module__", None) != "__main__":
        return []
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main or not os.path.isfile(main):
        return []
    script_dir = os.path.dirname(os.path.abspath(main))
    return [] if Path(script_dir) == Path(code_dir) else [script_dir]


def from_config(config: Mapping[str, Any]) -> SlurmBackend:
    """A backend that polls, cancels and reads logs of a sweep's jobs from another process
    (``status``, ``pull``, ``cancel``); it cannot submit (it has no task function)."""
    known = {f.name for f in fields(SlurmOptions)}
    return SlurmBackend(SlurmOptions.from_params({k: v for k, v in config.items() if k in known}))


@dataclass(frozen=True)
class DryRunResult:
    """Return value of a job in a dry run: the script and array index that would run it."""

    script: str
    array_index: int
    output_dir: str

    def __str__(self) -> str:
        return f"<dry run: array index {self.array_index} of {self.script} -> {self.output_dir}>"
