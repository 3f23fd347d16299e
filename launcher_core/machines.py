"""What the machines running a sweep's jobs show right now, for ``launcher-core top``: CPU load,
each GPU (utilisation, memory, which processes use it), and per job the last line of its stdout
and the GPUs it was given.

One reading per host costs one command there: :func:`probe_script` is a POSIX sh script a backend
appends to the poll it already sends (so a refresh stays one remote command per host), and
:func:`parse_probe` reads its answer. :func:`read_this_machine` and :func:`read_local_job` read
the same things here, in Python. Which of our jobs holds a GPU comes from the GPU lock files
(``gpu-<id>``, :mod:`launcher_core.runtime` locking) its leader holds open, else its
``CUDA_VISIBLE_DEVICES`` as it started, and from the processes ``nvidia-smi`` lists on each GPU
(by process group: a job's processes share its leader's).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launcher_core.jobs import STDOUT_FILE, JobStatus

GPU_FIELDS = "index,uuid,utilization.gpu,memory.used,memory.total"
APP_FIELDS = "pid,gpu_uuid"
NVIDIA_SMI_FORMAT = "--format=csv,noheader,nounits"
TAIL_BYTES = 400  # of a job's stdout read per refresh: enough for its last line
LOCAL_HOST = "localhost"  # the name this machine has among the hosts (local_pool jobs' host)
NVIDIA_SMI_TIMEOUT_S = 10.0

TAIL_CHUNK = 200  # logs per ``tail`` command: one process per chunk, argv well under its limit

# line prefixes and section markers of the probe's answer (a poll's own lines start with a job key)
_PROBE, _LOAD, _GPU, _APP, _JOB, _LOG = "HRL-PROBE", "HRL-LOAD", "HRL-GPU", "HRL-APP", "HRL-JOB", "HRL-LOG"
_ENV, _FD, _TAILS = "HRL-ENV", "HRL-FD", "HRL-TAILS"


@dataclass(frozen=True)
class GpuReading:
    """One GPU as ``nvidia-smi --query-gpu`` reports it (None: not reported)."""

    index: str
    uuid: str
    utilization_pct: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None


@dataclass
class HostReading:
    """A machine: its 1-minute load, CPUs, GPUs (none without ``nvidia-smi``), the process
    group of each process using a GPU (``{gpu uuid: {pgid, ...}}``), and why its GPUs could not
    be read when that failed (``note``: the rest of the reading stands)."""

    load1: float | None = None
    cpus: int | None = None
    gpus: list[GpuReading] = field(default_factory=list)
    gpu_groups: dict[str, set[int]] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True)
class JobReading:
    """A running job: the last line its stdout shows, the GPUs its environment names
    (``CUDA_VISIBLE_DEVICES``: indices or UUIDs; None when unknown), its process (group) id."""

    last_line: str | None = None
    visible_gpus: tuple[str, ...] | None = None
    pid: int | None = None


@dataclass
class Observation:
    """What :meth:`launcher_core.backends.base.Backend.observe` returns: the jobs' states (as
    ``poll``), and what ``top`` shows of the machines running them, by host, and of each job.
    ``commands`` counts what it took, by kind (``ssh <host>``, ``sacct``, ``nvidia-smi``...);
    ``errors``: what could not be read, by host (its jobs are left out of ``statuses``)."""

    statuses: dict[str, JobStatus] = field(default_factory=dict)
    hosts: dict[str, HostReading] = field(default_factory=dict)
    jobs: dict[str, JobReading] = field(default_factory=dict)
    commands: Counter[str] = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)


# --- the shell probe -------------------------------------------------------------------------
def probe_script(jobs: Iterable[tuple[str, str]], pid_file: str) -> str:
    """Lines to append to a host's poll script: its load, the PID and GPUs of each running job
    (from ``<launcher dir>/<pid_file>``, "PID START"; the GPU lock files it holds open, else its
    ``CUDA_VISIBLE_DEVICES``), ``nvidia-smi`` (on the PATH, else on a running job's PATH: set-up lines
    may bring it) and the tail of each job's stdout. ``jobs``: (key, the job's launcher dir). Needs
    the poll script's ``st`` function (a process's start time). A fixed number of processes
    whatever the number of jobs: the per-job part is shell builtins only."""
    jobs = list(jobs)
    calls = "\n".join(f"hrl_job {shlex.quote(k)} {shlex.quote(d)}" for k, d in jobs)
    return f"""
echo {_PROBE}
read -r hrl_l _ < /proc/loadavg 2>/dev/null || hrl_l=-
echo "{_LOAD} $hrl_l $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo -)"
hrl_pids=""
hrl_job() {{
  [ -s "$2/{pid_file}" ] || return 0
  read -r p t < "$2/{pid_file}"
  st "$p"
  if [ -n "$S" ] && [ "$S" = "$t" ]; then echo "{_JOB} $1 $p"; hrl_pids="$hrl_pids $p"; fi
}}
{calls}
hrl_path=""
if [ -n "$hrl_pids" ]; then
  echo {_ENV}
  (set --; for p in $hrl_pids; do set -- "$@" "/proc/$p/environ"; done
   grep -a -z -H '^CUDA_VISIBLE_DEVICES=' "$@" 2>/dev/null | tr '\\000' '\\n')
  echo {_FD}
  (set --; for p in $hrl_pids; do set -- "$@" "/proc/$p/fd"; done
   ls -l "$@" 2>/dev/null | grep -e '^/proc/' -e '/gpu-[0-9]*$')
  set -- $hrl_pids
  hrl_path=$(tr '\\000' '\\n' < "/proc/$1/environ" 2>/dev/null | sed -n 's/^PATH=//p')
fi
{gpu_query_script()}
{tail_script(jobs)}
"""


def gpu_query_script() -> str:
    """The GPU part of a probe: ``nvidia-smi``'s readings of each GPU and the process group of each
    process on one (:func:`parse_probe` reads them). ``nvidia-smi`` is looked up on the PATH, else
    on ``$hrl_path`` (a running job's PATH: set-up lines may bring it); without it, nothing."""
    query = f"--query-gpu={GPU_FIELDS} {NVIDIA_SMI_FORMAT}"
    apps = f"--query-compute-apps={APP_FIELDS} {NVIDIA_SMI_FORMAT}"
    return f"""hrl_smi=$(command -v nvidia-smi 2>/dev/null) || hrl_smi=""
if [ -z "$hrl_smi" ] && [ -n "${{hrl_path:-}}" ]; then
  hrl_smi=$(PATH=$hrl_path; command -v nvidia-smi 2>/dev/null) || hrl_smi=""
fi
if [ -n "$hrl_smi" ]; then
  "$hrl_smi" {query} 2>/dev/null | sed 's/^/{_GPU} /'
  "$hrl_smi" {apps} 2>/dev/null | while IFS=', ' read -r ap au; do
    [ -r "/proc/$ap/stat" ] || continue
    read -r s < "/proc/$ap/stat"; s=${{s##*) }}; set -- $s
    echo "{_APP} $au $3"
  done
fi"""


def tail_script(jobs: Sequence[tuple[str, str]]) -> str:
    """The tail of each job's stdout (key, launcher dir): the last part of the probe, or alone.
    One ``tail`` per :data:`TAIL_CHUNK` logs (GNU tail's ``==> file <==`` headers frame them)."""
    paths = [(k, f"{d}/{STDOUT_FILE}") for k, d in jobs]
    lines = [f"echo {_LOG} {shlex.quote(k)} {shlex.quote(p)}" for k, p in paths]
    lines.append(f"echo {_TAILS}")
    for start in range(0, len(paths), TAIL_CHUNK):
        chunk = " ".join(shlex.quote(p) for _k, p in paths[start : start + TAIL_CHUNK])
        lines.append(f"tail -v -c {TAIL_BYTES} -- {chunk} 2>/dev/null")
    return "\n".join(lines)


def poll_answer(output: str) -> str:
    """The part of a poll script's output before the probe's (whose log tails may say anything)."""
    return output.partition(f"\n{_PROBE}\n")[0]


def parse_probe(output: str) -> tuple[HostReading, dict[str, JobReading]]:
    """The host's reading and each job's (by key) from the probe's part of ``output``."""
    head, _, tails = output.partition(f"{_TAILS}\n")
    host = HostReading()
    pids: dict[str, int] = {}
    logs: dict[str, str] = {}
    visible: dict[int, tuple[str, ...]] = {}
    locks: dict[int, list[str]] = {}
    section, fd_pid = "", 0
    for line in head.split("\n"):
        kind, _, rest = line.partition(" ")
        if line in (_ENV, _FD):
            section = line
        elif kind in (_LOAD, _GPU, _APP, _JOB, _LOG):
            section = ""
            _read_line(kind, rest, host, pids, logs)
        elif section == _ENV and line.startswith("/proc/"):
            pid, _, value = line[len("/proc/") :].partition("/environ:CUDA_VISIBLE_DEVICES=")
            if pid.isdigit() and _visible(value) is not None:
                visible[int(pid)] = _visible(value) or ()
        elif section == _FD and line.startswith("/proc/") and line.endswith("/fd:"):
            fd_pid = int(line[len("/proc/") : -len("/fd:")] or 0)
        elif section == _FD and fd_pid and "/gpu-" in line:
            index = line.rsplit("/gpu-", 1)[1]
            if index.isdigit():
                locks.setdefault(fd_pid, []).append(index)
    by_path = _tails_by_path(tails)
    jobs = {}
    for key in {*pids, *logs}:
        pid = pids.get(key)
        gpus = (tuple(locks.get(pid, ())) or visible.get(pid)) if pid else None
        jobs[key] = JobReading(last_line(by_path.get(logs.get(key, ""), "")), gpus, pid)
    return host, jobs


def _read_line(kind: str, rest: str, host: HostReading, pids: dict[str, int], logs: dict[str, str]) -> None:
    if kind == _LOAD:
        host.load1, host.cpus = _load(rest.split())
    elif kind == _GPU:
        gpu = parse_gpu_row(rest)
        if gpu is not None:
            host.gpus.append(gpu)
    elif kind == _APP:
        uuid, _, pgid = rest.partition(" ")
        if pgid.strip().isdigit():
            host.gpu_groups.setdefault(uuid, set()).add(int(pgid))
    elif kind == _JOB:
        key, _, pid = rest.partition(" ")
        if pid.strip().isdigit():
            pids[key] = int(pid)
    elif kind == _LOG:
        key, _, path = rest.partition(" ")
        logs[key] = path


_TAIL_HEADER = re.compile(r"(?:^|\n)==> (.*) <==\n")


def _tails_by_path(text: str) -> dict[str, str]:
    """``{path: its tail}`` from ``tail -v`` output."""
    parts = _TAIL_HEADER.split(text)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _load(words: Sequence[str]) -> tuple[float | None, int | None]:
    load = _number(words[0]) if words else None
    cpus = words[1] if len(words) > 1 else ""
    return load, int(cpus) if cpus.isdigit() else None


def _visible(text: str) -> tuple[str, ...] | None:
    text = text.strip()
    return tuple(v.strip() for v in text.split(",") if v.strip()) if text else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "-", "[Not Supported]"


def parse_gpu_row(row: str) -> GpuReading | None:
    """One line of ``nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used,memory.total
    --format=csv,noheader,nounits``."""
    cells = [c.strip() for c in row.split(",")]
    if len(cells) < 5 or not cells[0].isdigit():
        return None
    return GpuReading(cells[0], cells[1], _number(cells[2]), _number(cells[3]), _number(cells[4]))


def last_line(text: str) -> str | None:
    """The last non-empty line (a progress bar's last state: ``\\r`` ends a line too)."""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    shown = [line for line in lines if line]
    return shown[-1] if shown else None


# --- this machine ------------------------------------------------------------------------------
def read_this_machine() -> HostReading:
    """This machine's load, CPUs and GPUs: one local ``nvidia-smi`` per query (none without it)."""
    try:
        load1: float | None = os.getloadavg()[0]
    except OSError:
        load1 = None
    reading = HostReading(load1=load1, cpus=os.cpu_count())
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return reading
    gpus = _run_nvidia_smi([smi, f"--query-gpu={GPU_FIELDS}", NVIDIA_SMI_FORMAT])
    reading.gpus = [g for g in (parse_gpu_row(r) for r in gpus) if g is not None]
    for row in _run_nvidia_smi([smi, f"--query-compute-apps={APP_FIELDS}", NVIDIA_SMI_FORMAT]):
        pid, _, uuid = (c.strip() for c in row.partition(","))
        group = process_group(int(pid)) if pid.isdigit() else None
        if group is not None:
            reading.gpu_groups.setdefault(uuid, set()).add(group)
    return reading


def _run_nvidia_smi(argv: Sequence[str]) -> list[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def process_group(pid: int) -> int | None:
    """The process group of a live process (None: gone)."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def read_local_job(launcher_dir: Path, pid: int | None) -> JobReading:
    """A job on this machine: the last line of its stdout and the GPUs its environment names."""
    return JobReading(_local_tail(launcher_dir / STDOUT_FILE), _environ_gpus(pid) if pid else None, pid)


def _local_tail(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            return last_line(f.read().decode(errors="replace"))
    except OSError:
        return None


def _environ_gpus(pid: int) -> tuple[str, ...] | None:
    """The GPU lock files (``gpu-<index>``) the job holds open (its leader keeps them for the job's
    life), else ``CUDA_VISIBLE_DEVICES`` of the process as it started (a forked job's own setting
    of it is not visible there: the locks come first)."""
    held = held_gpu_locks(pid)
    if held:
        return held
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in data.split(b"\0"):
        if item.startswith(b"CUDA_VISIBLE_DEVICES="):
            return _visible(item.split(b"=", 1)[1].decode(errors="replace"))
    return None


def held_gpu_locks(pid: int) -> tuple[str, ...] | None:
    """The indices of the GPU lock files (``.../gpu-<index>``) the process holds open."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None
    found = []
    for fd in fds:
        try:
            name = os.readlink(fd).rsplit("/", 1)[-1]
        except OSError:
            continue
        if name.startswith("gpu-") and name[4:].isdigit():
            found.append(name[4:])
    return tuple(sorted(found, key=int)) or None


def holders(gpu: GpuReading, reading: HostReading, jobs: Mapping[str, JobReading]) -> list[str]:
    """The keys of the jobs that hold ``gpu``: its index or UUID in their ``CUDA_VISIBLE_DEVICES``,
    or a process of their group on it as ``nvidia-smi`` lists it."""
    groups = reading.gpu_groups.get(gpu.uuid, set())
    found = []
    for key, job in jobs.items():
        named = job.visible_gpus is not None and (gpu.index in job.visible_gpus or gpu.uuid in job.visible_gpus)
        if named or (job.pid is not None and job.pid in groups):
            found.append(key)
    return sorted(found)
