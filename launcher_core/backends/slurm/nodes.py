"""The GPUs of the Slurm nodes running our tasks, for ``launcher-core top``.

Which task holds which GPU is Slurm's own word: ``scontrol -o -d show job <array id>`` lists, per
running task and node, the ids of the GPUs it was given (``GRES=gpu:2(IDX:0-1)``), and the task's
job id, which ``srun --jobid`` needs (sacct names a task ``<array id>_<index>``). It is the one
source that holds on every cluster: a task's ``SLURM_JOB_GPUS``/``CUDA_VISIBLE_DEVICES`` are set
only where gres.conf names real devices, and the GPU lock files of :mod:`launcher_core.runtime.gpus`
are not taken under Slurm (Slurm is the allocator).

A compute node is reached only through Slurm, so a node where our running tasks hold GPUs is read
by one step inside one of them: ``srun --jobid=<its job id> --overlap --nodes=1 --ntasks=1 -w
<node>`` (``--overlap`` shares the task's CPUs, memory and GPUs, so the step starts at once
whatever the task runs). The step runs :func:`node_probe_script`: ``nvidia-smi``'s readings of
each GPU, the query and parser of the remote_ssh and local rows
(:func:`launcher_core.machines.gpu_query_script`, :func:`~launcher_core.machines.parse_probe`);
``nvidia-smi`` is found on the PATH, else on the PATH of a process of the task (its set-up lines
may bring it). A node without it has no GPU rows.

Slurm's GPU ids are matched to ``nvidia-smi``'s indices: they agree where gres.conf lists the GPUs
in ``nvidia-smi``'s (PCI bus) order. Where Slurm constrains devices (cgroup.conf
``ConstrainDevices=yes``) a step sees only the GPUs of its own task, renumbered (its
``CUDA_VISIBLE_DEVICES`` then differs from ``SLURM_STEP_GPUS``): the node's rows are then that
task's GPUs, all held by it, and the node's other GPUs are not shown.

Cost, per refresh: one ``scontrol`` per job array with a running task (through ``login_host``: per
array of the jobs asked about, riding in the ``sacct`` session), and one ``srun`` per node where a
running task of ours holds GPUs (none where none does), run side by side in one sh script where
Slurm's commands run (through ``login_host``: one remote command), each bounded by
:data:`PROBE_TIMEOUT_S`. A probe that fails or times out
leaves its node without GPU rows, with a note saying why. Each probe is one more step in its
task's accounting (``sacct`` without ``-X`` lists it, named :data:`STEP_NAME`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher_core.errors import LauncherError
from launcher_core.machines import GpuReading, gpu_query_script, parse_probe

SCONTROL_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 8.0  # nvidia-smi alone may take seconds on a node without persistence mode
KILL_AFTER_S = 2  # a probe still running this long after its timeout's SIGTERM is killed
STEP_NAME = "hrl-top"
PATHS_READ = 16  # processes of the task whose PATH is searched for nvidia-smi
SCONTROL_LINE = "HRL-SCONTROL"  # prefix of the lines kept of scontrol's answer (login node)

_PROBED, _OUT, _ERR, _STEP = "HRL-PROBED", "HRL-OUT", "HRL-ERR", "HRL-STEP"
_JOB_LINE = re.compile(r"JobId=(\d+) ArrayJobId=(\d+) ArrayTaskId=(\d+) ")
_NODES = re.compile(r"(?:^|\s)Nodes=(\S+)(.*?)(?=\sNodes=|$)")
_GPU_IDX = re.compile(r"gpu(?::[^(\s,]*)*\(IDX:([0-9,\-]+)\)")
# of a running task holding GPUs, only its ids and, from JOB_GRES on, its nodes and GPUs
_KEEP = (
    r"s/^\(JobId=[0-9]* ArrayJobId=[0-9]* ArrayTaskId=[0-9]*\) .*JobState=RUNNING .*"
    r"\( JOB_GRES=.*(IDX:[^ ]*\).*/\1\2/p"
)


def scontrol_argv(array_id: str) -> list[str]:
    """The command that lists an array's tasks with their GPUs per node."""
    return ["scontrol", "-o", "-d", "show", "job", array_id]


def arrays_of(task_ids: Iterable[str]) -> list[str]:
    """The array ids of task ids ``<array id>_<index>``."""
    return sorted({t.split("_")[0] for t in task_ids if re.fullmatch(r"\d+_\d+", t or "")}, key=int)


def scontrol_script(arrays: Sequence[str]) -> str:
    """``scontrol`` for each array, keeping a short line per running task that holds GPUs,
    prefixed :data:`SCONTROL_LINE` (to ride along with another command on the login node)."""
    keep = shlex.quote(_KEEP)
    return "\n".join(
        f"{shlex.join(scontrol_argv(a))} 2>/dev/null | sed -n {keep} | sed 's/^/{SCONTROL_LINE} /'" for a in arrays
    )


@dataclass
class TaskGpus:
    """What ``scontrol`` says of the running tasks: each one's job id and its GPU ids per node."""

    job_ids: dict[str, str] = field(default_factory=dict)  # "<array>_<index>" -> job id
    gpus: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)  # (node, task) -> ids

    def on(self, node: str, task: str) -> tuple[str, ...]:
        """The GPU ids ``task`` holds on ``node`` (scontrol may name a task's only node range-wise)."""
        if (node, task) in self.gpus:
            return self.gpus[(node, task)]
        mine = [ids for (_n, t), ids in self.gpus.items() if t == task]
        return mine[0] if len(mine) == 1 else ()


def parse_task_gpus(lines: Iterable[str]) -> TaskGpus:
    """From ``scontrol -o -d show job`` lines (whole, or as :func:`scontrol_script` keeps them)."""
    found = TaskGpus()
    for line in lines:
        match = _JOB_LINE.match(line)
        if not match or ("JobState=" in line and " JobState=RUNNING " not in line):
            continue
        job_id, array, index = match.groups()
        task = f"{array}_{index}"
        found.job_ids[task] = job_id
        for node, details in _NODES.findall(line[match.end() :]):
            ids = [i for spec in _GPU_IDX.findall(details) for i in _expand(spec)]
            if ids:
                found.gpus[(node, task)] = tuple(ids)
    return found


def _expand(spec: str) -> list[str]:
    """``0-1,3`` -> ``["0", "1", "3"]``."""
    out: list[str] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out += [str(i) for i in range(int(lo), int(hi or lo) + 1)]
    return out


@dataclass
class NodeGpus:
    """What the probes read: each probed node's GPUs (or why not), and per (node, task) the
    indices of the rows its task holds; ``commands`` run, by name."""

    gpus: dict[str, list[GpuReading]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    held: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    constrained: set[str] = field(default_factory=set)  # nodes whose step saw its own task's GPUs only


def read_node_gpus(commands: Any, tasks_by_node: Mapping[str, Sequence[str]], allocated: TaskGpus) -> NodeGpus:
    """The GPUs of each node (``{node: [task id, ...]}``: our running tasks there) where one of
    those tasks holds GPUs, by one probe step per node, all in one script where Slurm's commands
    run (``commands.shell``). Never raises: a node that could not be read gets a note instead."""
    probes: dict[str, str] = {}  # node -> the task the probe runs in
    for node, tasks in sorted(tasks_by_node.items()):
        task = next((t for t in tasks if allocated.on(node, t) and t in allocated.job_ids), None)
        if task is not None:
            probes[node] = task
    if not probes:
        return NodeGpus()
    nodes = list(probes)
    script = probes_script([(n, allocated.job_ids[probes[n]]) for n in nodes])
    timeout = PROBE_TIMEOUT_S + KILL_AFTER_S + 10.0
    try:
        answer = commands.shell(script, what="reading the nodes' GPUs", timeout_s=timeout)
    except LauncherError as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return NodeGpus(notes=dict.fromkeys(nodes, f"GPUs not read: {why}"), commands={"srun": len(nodes)})
    found = parse_probes(answer, [(n, probes[n]) for n in nodes])
    for node in set(found.gpus) - found.constrained:  # Slurm's GPU ids are the rows' indices
        found.held.update({(node, t): allocated.on(node, t) for t in tasks_by_node[node] if allocated.on(node, t)})
    return found


def node_probe_script() -> str:
    """What the step runs on the node: the step's own GPU ids and ``CUDA_VISIBLE_DEVICES`` (they
    differ where devices are constrained), then the GPU readings."""
    return f"""echo "{_STEP} gpus=${{SLURM_STEP_GPUS:-}} cuda=${{CUDA_VISIBLE_DEVICES:-}}"
hrl_path=""
for f in $(grep -a -l -z -x "SLURM_JOB_ID=$SLURM_JOB_ID" /proc/[0-9]*/environ 2>/dev/null | head -n {PATHS_READ}); do
  p=$(tr '\\000' '\\n' < "$f" 2>/dev/null | sed -n 's/^PATH=//p')
  [ -n "$p" ] && hrl_path="$hrl_path${{hrl_path:+:}}$p"
done
{gpu_query_script()}
"""


def probes_script(probes: Sequence[tuple[str, str]]) -> str:
    """One probe step per (node, job id), side by side, each bounded by :data:`PROBE_TIMEOUT_S`;
    then each one's exit code, output and the start of its errors, line by line, prefixed."""
    srun = "srun --jobid=\"$2\" --overlap --nodes=1 --ntasks=1 -w \"$1\" --job-name=" + STEP_NAME + " --quiet"
    lines = [
        'd=$(mktemp -d "${TMPDIR:-/tmp}/hrl-top.XXXXXX") || exit 1',
        "trap 'rm -rf \"$d\"' EXIT",
        "if command -v timeout >/dev/null 2>&1; then",
        f'  hrl_t() {{ timeout -k {KILL_AFTER_S} {PROBE_TIMEOUT_S:g} "$@"; }}',
        "else",
        '  hrl_t() { "$@"; }',
        "fi",
        f"hrl_node_probe={shlex.quote(node_probe_script())}",
        "hrl_probe() {",
        f'  hrl_t {srun} sh -c "$hrl_node_probe" >"$d/p$3" 2>"$d/e$3" </dev/null',
        '  echo $? >"$d/r$3"',
        "}",
    ]
    lines += [f"hrl_probe {shlex.quote(node)} {shlex.quote(job)} {i} &" for i, (node, job) in enumerate(probes)]
    lines += [
        "wait",
        f"for i in {' '.join(str(i) for i in range(len(probes)))}; do",
        f'  echo "{_PROBED} $i $(cat "$d/r$i" 2>/dev/null || echo 1)"',
        f'  sed "s/^/{_OUT} $i /" "$d/p$i" 2>/dev/null',
        f'  head -c 400 "$d/e$i" 2>/dev/null | sed "s/^/{_ERR} $i /"',
        "done",
    ]
    return "\n".join(lines) + "\n"


def parse_probes(text: str, probes: Sequence[tuple[str, str]]) -> NodeGpus:
    """What :func:`probes_script` printed for ``probes`` ((node, task), in its order); where the
    step saw its own task's GPUs only, they are that task's (``held``)."""
    codes: dict[int, int] = {}
    out: dict[int, list[str]] = {}
    err: dict[int, list[str]] = {}
    for line in text.split("\n"):
        kind, _, rest = line.partition(" ")
        number, _, rest = rest.partition(" ")
        if not number.isdigit() or int(number) >= len(probes):
            continue
        i = int(number)
        if kind == _PROBED:
            codes[i] = int(rest) if rest.strip().isdigit() else 1
        elif kind == _OUT:
            out.setdefault(i, []).append(rest)
        elif kind == _ERR:
            err.setdefault(i, []).append(rest)
    found = NodeGpus(commands={"srun": len(probes)})
    for i, (node, task) in enumerate(probes):
        code = codes.get(i, 1)
        if code != 0:
            found.notes[node] = f"GPUs not read: {_failure(code, err.get(i, []), task)}"
            continue
        answer = "\n".join(out.get(i, []))
        reading, _jobs = parse_probe(answer)
        found.gpus[node] = reading.gpus
        if _constrained(answer):  # the step sees its own task's GPUs only, renumbered
            found.constrained.add(node)
            found.held[(node, task)] = tuple(g.index for g in reading.gpus)
    return found


def _constrained(answer: str) -> bool:
    for line in answer.split("\n"):
        if line.startswith(f"{_STEP} "):
            words = dict(w.partition("=")[::2] for w in line.split()[1:])
            step, cuda = words.get("gpus", ""), words.get("cuda", "")
            return bool(step and cuda and step != cuda)
    return False


def _failure(code: int, stderr: Sequence[str], task: str) -> str:
    if code in (124, 137):
        return f"no answer within {PROBE_TIMEOUT_S:g} s (a step in task {task})"
    said = next((line.strip() for line in stderr if line.strip()), "")
    return f"a step in task {task} failed (exit {code}){': ' + said if said else ''}"
