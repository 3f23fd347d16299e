"""The sbatch script of a job array (one per chunk of at most MaxArraySize jobs) and the
files it keeps in each job's launcher dir; see docs/slurm.md ("The batch script")."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.backends.slurm.handle import SlurmHandle
from launcher_core.backends.slurm.settings import SlurmSettings
from launcher_core.backends.slurm.syntax import BLOCKS as BLOCKS
from launcher_core.backends.slurm.template import render_template
from launcher_core.container import python_for, wrap_command
from launcher_core.jobs import RESULT_FILE, STDERR_FILE, STDOUT_FILE, JobSpec
from launcher_core.runtime.markers import EXIT_FILE as EXIT_FILE
from launcher_core.runtime.worker import RANKS_DIR_ENV

SLURM_DIR = "slurm"
TASKS_DIR = "tasks"  # in the slurm dir: the launcher files of packed tasks (jobs_per_task > 1)
TIMEOUTS_FILE = "slurm_timeouts"
SETUP_FAILED_FILE = "setup_failed"  # in the launcher dir: the set-up line that failed and its message
SETUP_FAILED_RC = 97  # the batch script's exit code when a set-up line failed (the task never started)
RANKS_DIR = "ranks"  # in a job's launcher dir: results of the tasks (ranks) that failed
# slurmctld checks time limits every 30 s and sends the --signal up to 30 s early (so that it is
# never late); a SIGUSR2 within this many seconds of signal_delay_s before the limit is a timeout
SIGNAL_EARLY_S = 35
_FIRST_TOKEN = "\0FIRST\0"  # stands for the task's first entry in the job table, in the job argv


@dataclass
class Chunk:
    """Jobs submitted by one ``sbatch`` call. Array index ``i`` runs ``specs[i * jobs_per_task]``
    and the ``jobs_per_task - 1`` after it: entries ``offset + i * jobs_per_task`` on of the job
    table of the jobs submitted together."""

    number: int  # 0-based
    total: int
    offset: int
    specs: list[JobSpec]
    jobs_per_task: int = 1
    group: int = 0  # 0-based resource group (jobs with the same ``resources_from`` values)
    resources: dict[str, Any] = field(default_factory=dict)  # the group's per-job resources

    @property
    def name(self) -> str:
        return f"jobs{self.specs[0].idx}-{self.specs[-1].idx}"

    @property
    def script_name(self) -> str:
        return f"{self.name}.sbatch"

    @property
    def tasks(self) -> int:
        return -(-len(self.specs) // self.jobs_per_task)

    def jobs_in_task(self, task: int) -> int:
        """How many jobs array index ``task`` runs (the last one may run fewer)."""
        return min(self.jobs_per_task, len(self.specs) - task * self.jobs_per_task)

    def task_of(self, position: int) -> int:
        """The array index that runs ``specs[position]``."""
        return position // self.jobs_per_task


def plan_chunks(specs: Sequence[JobSpec], max_array_size: int, jobs_per_task: int = 1) -> list[Chunk]:
    """Split jobs into arrays of at most ``max_array_size`` tasks (indices 0..max_array_size-1),
    each task running ``jobs_per_task`` jobs."""
    per_task = max(1, int(jobs_per_task))
    size = max(1, int(max_array_size)) * per_task
    starts = range(0, len(specs), size)
    return [
        Chunk(n, len(starts), start, list(specs[start : start + size]), per_task) for n, start in enumerate(starts)
    ]


def plan_grouped_chunks(
    groups: Sequence[tuple[dict[str, Any], Sequence[JobSpec]]],
    max_array_size: int,
    jobs_per_task: Callable[[int], int],
) -> list[Chunk]:
    """One array (or more, split at ``max_array_size``) per resource group; the job table lists
    the groups one after the other, so each chunk's offset counts the groups before it."""
    chunks: list[Chunk] = []
    offset = 0
    for number, (resources, specs) in enumerate(groups):
        for chunk in plan_chunks(specs, max_array_size, jobs_per_task(len(specs))):
            chunk.offset += offset
            chunk.group, chunk.resources = number, dict(resources)
            chunks.append(chunk)
        offset += len(specs)
    for number, chunk in enumerate(chunks):
        chunk.number, chunk.total = number, len(chunks)
    return chunks


def _sbatch_line(name: str, value: Any) -> str:
    if value is True:
        return f"#SBATCH --{name}"
    return f"#SBATCH --{name}={shlex.quote(str(value))}"


def render_argv(argv: Sequence[str]) -> str:
    """A shell command line for ``argv``; the first-entry placeholder becomes ``"$_hrl_first"``."""
    return " ".join('"$_hrl_first"' if arg == _FIRST_TOKEN else shlex.quote(arg) for arg in argv)


def job_argv(
    options: SlurmSettings,
    sweep_payload: str,
    job_table: str,
    binds: Sequence[str],
    host_python: str,
    worker_module: str = "launcher_core.runtime.worker",
    jobs_per_task: int = 1,
) -> list[str]:
    """What one array task runs (after ``srun``): the worker on its entries of the chunk's job
    table, inside the container if one is set."""
    python = python_for(options.container, options.python or host_python)
    argv = [python, "-m", worker_module, sweep_payload, job_table, _FIRST_TOKEN]
    if jobs_per_task > 1:
        argv.append(str(jobs_per_task))
    return wrap_command(argv, options.container, binds, gpus_requested=options.gpus_requested)


def render_script(
    *,
    options: SlurmSettings,
    chunk: Chunk,
    sweep_id: str,
    code_dir: str,
    log_dir: str,
    launcher_dirs: Sequence[str],
    argv: Sequence[str],
    pythonpath: Sequence[str] = (),
    job_env: Mapping[str, str] | None = None,
    template_vars: Mapping[str, Any] | None = None,
) -> str:
    """The sbatch script of one chunk (a job array).

    Every value that comes from the config is either an ``#SBATCH`` option (validated to be a
    single line, quoted) or quoted with ``shlex.quote``; ``setup`` lines are shell by design.
    With ``sbatch_template`` the site's Jinja2 template renders it from the same blocks and the
    result is checked to keep the launcher's own parts (:mod:`.template`).
    """
    sbatch = dict(options.sbatch_options())
    sbatch["array"] = f"0-{chunk.tasks - 1}%{min(chunk.tasks, options.array_parallelism)}"
    sbatch["output"] = f"{log_dir}/%A.log"
    sbatch["chdir"] = code_dir
    parts = script_parts(options, chunk, sweep_id, sbatch, log_dir, launcher_dirs, argv, pythonpath, job_env or {})
    if not options.sbatch_template:
        return "".join(parts.values())
    variables = {
        "sweep_id": sweep_id,
        "sbatch_options": sbatch,
        "array": sbatch["array"],
        "resources": options.resources_view(),
        "job_resources": dict(chunk.resources),
        "chunk": {
            "number": chunk.number,
            "total": chunk.total,
            "group": chunk.group,
            "tasks": chunk.tasks,
            "jobs_per_task": chunk.jobs_per_task,
            "first_job": chunk.specs[0].idx,
            "last_job": chunk.specs[-1].idx,
            "offset": chunk.offset,
        },
        "code_dir": code_dir,
        "log_dir": log_dir,
        "command": run_command(options, argv),
        **(template_vars or {}),
    }
    return render_template(options.sbatch_template, parts, variables)


def probe_template(options: SlurmSettings) -> None:
    """Render the template once for a stand-in array of one job (placeholder paths), so a syntax
    error, an unknown variable or a refused script stops the launch before anything is written."""
    probe = "/hydra-remote-launcher/template-probe"
    spec = JobSpec(job_id="probe", idx=0, overrides=[], output_dir=Path(probe, "0"))
    render_script(
        options=options,
        chunk=Chunk(0, 1, 0, [spec], resources={k: getattr(options, k) for k in options.resources_from}),
        sweep_id="template-probe",
        code_dir=probe,
        log_dir=f"{probe}/logs",
        launcher_dirs=[f"{probe}/0/.launcher"],
        argv=["python3", "-m", "launcher_core.runtime.worker", f"{probe}/sweep.pkl", f"{probe}/jobs.json"],
        template_vars={"job_table": f"{probe}/jobs.json", "sweep_payload": f"{probe}/sweep.pkl"},
    )


def script_parts(
    options: SlurmSettings,
    chunk: Chunk,
    sweep_id: str,
    sbatch: Mapping[str, Any],
    log_dir: str,
    launcher_dirs: Sequence[str],
    argv: Sequence[str],
    pythonpath: Sequence[str],
    job_env: Mapping[str, str],
) -> dict[str, str]:
    """The script's text by block (:data:`BLOCKS`), each ending with a newline (or empty)."""
    first, last = chunk.specs[0].idx, chunk.specs[-1].idx
    group = f", resource group {chunk.group + 1}: {resource_text(chunk.resources)}" if chunk.resources else ""
    comment = [
        f"# hydra-remote-launcher: sweep {sweep_id}, jobs #{first}-#{last}{group}",
        f"# (array chunk {chunk.number + 1} of {chunk.total}: array index i runs "
        + (
            f"the job of job table entry {chunk.offset} + i)"
            if chunk.jobs_per_task == 1
            else f"the {chunk.jobs_per_task} jobs from job table entry {chunk.offset} + i * {chunk.jobs_per_task} on)"
        ),
    ]
    job_dir = [
        "_hrl_dirs=(",
        *(f"  {shlex.quote(d)}" for d in launcher_dirs),
        ")",
        f"_hrl_first=$(({chunk.offset} + SLURM_ARRAY_TASK_ID * {chunk.jobs_per_task}))  # its first job table entry",
        'LAUNCHER_DIR="${_hrl_dirs[$SLURM_ARRAY_TASK_ID]}"',
        "export LAUNCHER_DIR",
        'mkdir -p "${LAUNCHER_DIR%/*}"  # the job dir, with the task\'s umask (nothing was created before submission)',
        "_hrl_umask=$(umask)",
        "umask 077  # the launcher's own files (logs, exit code, timeouts) are private; the task keeps the umask",
        'mkdir -p "$LAUNCHER_DIR"',
        f'chmod 600 {shlex.quote(log_dir)}/"$SLURM_ARRAY_JOB_ID".log 2>/dev/null',
        f'exec >>"$LAUNCHER_DIR"/{STDOUT_FILE} 2>>"$LAUNCHER_DIR"/'
        + (STDOUT_FILE if options.stderr_to_stdout else STDERR_FILE),
        f'rm -rf "$LAUNCHER_DIR"/{EXIT_FILE} "$LAUNCHER_DIR"/{RANKS_DIR}'
        + (f' "$LAUNCHER_DIR"/{SETUP_FAILED_FILE}' if _has_set_up(options) else ""),
        'echo "[hydra-remote-launcher] slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname)'
        ' (restart ${SLURM_RESTART_COUNT:-0}) at $(date -Is)" >&2',
        'umask "$_hrl_umask"',
        *(set_up_functions(batch=True) if _has_set_up(options) else []),
    ]
    return {
        "shebang": "#!/bin/bash\n",
        "comment": _text(comment),
        "sbatch": _text(_sbatch_line(k, v) for k, v in sbatch.items()),
        "trap": "\n" + TRAP_LINE + "\n",
        "job_dir": _text(job_dir),
        "environment": _text(_environment_lines(options, pythonpath, job_env)),
        "setup": _text(["# setup", *setup_lines(options)] if options.job_setup else []),
        "run": _text(_run_lines(options, argv)),
    }


TRAP_LINE = "trap '_hrl_usr2=1' USR2  # a notice during the set-up below is acted on once the task is about to start"


def _text(lines: Any) -> str:
    lines = list(lines)
    return "".join(f"{line}\n" for line in lines)


def resource_text(resources: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(resources.items()))


def run_command(options: SlurmSettings, argv: Sequence[str]) -> str:
    """The line that starts the task (in the background): ``srun ... <worker>``, or the worker."""
    srun = ""
    if options.use_srun:
        # --kill-on-bad-exit: a failed task stops its peers (which would wait for it in a collective
        # until the time limit); srun_args come after it, so "--kill-on-bad-exit=0" there wins
        args = ["srun", "--unbuffered", "--kill-on-bad-exit=1", *(shlex.quote(a) for a in options.srun_args)]
        srun = " ".join(args) + " "
    return f"{srun}{render_argv(argv)} &"


def _environment_lines(options: SlurmSettings, pythonpath: Sequence[str], job_env: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    modules = [*options.modules, *([options.cuda_module] if options.cuda_module else [])]
    if modules:
        lines.append("# modules")
        lines += module_lines(options)
    if pythonpath:
        joined = shlex.quote(":".join(pythonpath))
        lines.append(f'export PYTHONPATH={joined}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    lines += [f"export {name}={shlex.quote(value)}" for name, value in {**options.env_vars, **job_env}.items()]
    return lines


def _run_lines(options: SlurmSettings, argv: Sequence[str]) -> list[str]:
    """Start the task in the background, requeue on SIGUSR2 (:func:`_requeue_function`), pick the job's result
    when a task failed (see :func:`failed_rank_function`), record the exit code."""
    return [
        *_requeue_function(options),
        "trap _hrl_requeue USR2",
        'if [ -n "${_hrl_usr2:-}" ]; then _hrl_requeue; fi',
        *failed_rank_function(),
        f'export {RANKS_DIR_ENV}="$LAUNCHER_DIR"/{RANKS_DIR}',
        run_command(options, argv),
        "_hrl_child=$!",
        "while :; do",
        '  wait "$_hrl_child"',
        "  _hrl_code=$?",
        '  kill -0 "$_hrl_child" 2>/dev/null || break',
        "done",
        "umask 077",
        'if [ "$_hrl_code" != 0 ]; then _hrl_failed_rank; fi',
        f'echo "$_hrl_code ${{SLURMD_NODENAME:-}}" >"$LAUNCHER_DIR"/{EXIT_FILE}',  # the node: sacct may lag
        'exit "$_hrl_code"',
    ]


def _requeue_function(options: SlurmSettings) -> list[str]:
    """``_hrl_requeue``, the SIGUSR2 handler (docs/slurm.md, "Timeouts, preemption, requeue")."""
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


def failed_rank_function() -> list[str]:
    """``_hrl_failed_rank``, run when srun (or the worker) exited non-zero: the lowest failed rank's
    result becomes the job's (docs/slurm.md, "Several tasks per job")."""
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


# --- set-up lines: each checked, the first failure stops the job before its task starts ------------
def _has_set_up(options: SlurmSettings) -> bool:
    return bool(options.modules or options.cuda_module or options.job_setup)


def set_up_functions(*, batch: bool) -> list[str]:
    """``_hrl_module_init`` and ``_hrl_setup_failed``, for :func:`module_lines` and :func:`setup_lines`.

    ``module`` is a shell function that a login shell gets from the site's profile scripts; a
    batch script is no login shell, so where the submitting environment did not pass it on, the
    module system's own init scripts are read (Lmod, Environment Modules), as a login shell would.

    In the batch script (``batch``) a failed line writes its setting, text, exit code and stderr
    to the job's ``setup_failed`` file (the job's reason), exits :data:`SETUP_FAILED_RC` (the exit
    file too) and the task never starts; in the pre-flight it prints ``HRL`` lines and exits."""
    init = [
        "_hrl_module_init() {",
        "  type module >/dev/null 2>&1 && return 0",
        "  local f",
        "  for f in /etc/profile.d/lmod.sh /etc/profile.d/z00_lmod.sh /etc/profile.d/modules.sh \\",
        "      /usr/share/lmod/lmod/init/bash /usr/share/Modules/init/bash /etc/profile.d/env-modules.sh; do",
        '    [ -r "$f" ] && . "$f" >/dev/null 2>&1',
        "    type module >/dev/null 2>&1 && return 0",
        "  done",
        "  return 0  # `module load` then fails with bash's \"module: command not found\", named as any failure",
        "}",
    ]
    message = "m=$(tail -c 1500 \"$_hrl_err\" 2>/dev/null | tr -s '\\n' ' ' | sed 's/ *$//'); rm -f \"$_hrl_err\""
    if batch:
        failed = [
            "_hrl_setup_failed() {  # $1 the setting, $2 its line, $3 the exit code: the task is not started",
            "  local m",
            f"  {message}",
            "  umask 077",
            "  printf '%s `%s` failed (exit %s)%s\\n' \"$1\" \"$2\" \"$3\" \"${m:+: $m}\""
            f' >"$LAUNCHER_DIR"/{SETUP_FAILED_FILE}',
            '  echo "[hydra-remote-launcher] set-up failed, the task was not started:'
            f' $(cat "$LAUNCHER_DIR"/{SETUP_FAILED_FILE})" >&2',
            f'  echo "{SETUP_FAILED_RC} ${{SLURMD_NODENAME:-}}" >"$LAUNCHER_DIR"/{EXIT_FILE}',
            f"  exit {SETUP_FAILED_RC}",
            "}",
        ]
    else:
        failed = [
            "_hrl_setup_failed() {",
            "  local m",
            f"  {message}",
            "  printf 'HRL setup_failed=%s\\nHRL setup_line=%s\\nHRL setup_rc=%s\\nHRL setup_msg=%s\\n' "
            '"$1" "$2" "$3" "$m"',
            f"  exit {SETUP_FAILED_RC}",
            "}",
        ]
    # each line's stderr, kept for the message (owner-only: it may show what the line set up)
    temp = ['_hrl_err=$(mktemp "${TMPDIR:-/tmp}/hrl-setup.XXXXXX")']
    return [*init, *failed, *temp]


def _checked(name: str, line: str) -> list[str]:
    """``line`` in the batch shell itself (``source``/``export`` last), its stderr passed on to the
    log and kept for the message; a non-zero status calls ``_hrl_setup_failed``."""
    from launcher_core.remote.scripts import one_line

    return [
        "{",
        line,
        '} 2>"$_hrl_err"; _hrl_rc=$?; cat "$_hrl_err" >&2',
        f'[ "$_hrl_rc" = 0 ] || _hrl_setup_failed {shlex.quote(name)} {shlex.quote(one_line(line))} "$_hrl_rc"',
    ]


def module_lines(options: SlurmSettings) -> list[str]:
    """``module load`` of ``modules`` and ``cuda_module``, each checked (:func:`set_up_functions`)."""
    named = [(f"hydra.launcher.modules[{n}]", m) for n, m in enumerate(options.modules)]
    if options.cuda_module:
        named.append(("hydra.launcher.cuda_module", options.cuda_module))
    lines = ["_hrl_module_init"]
    for name, module in named:
        lines += _checked(name, f"module load {shlex.quote(module)}")
    return [*lines, 'rm -f "$_hrl_err"'] if not options.job_setup else lines  # else after the setup lines


def setup_lines(options: SlurmSettings) -> list[str]:
    """The ``setup_commands`` (or ``setup``) lines (the user's own shell, by design), each checked."""
    lines: list[str] = []
    for n, line in enumerate(options.job_setup):
        lines += _checked(f"hydra.launcher.{options.job_setup_key}[{n}]", line)
    return [*lines, 'rm -f "$_hrl_err"'] if lines else []


def with_setup_reasons(
    statuses: Mapping[str, Any],
    handles: Mapping[str, SlurmHandle],
    read: Callable[[SlurmHandle, str, int], bytes],
) -> dict[str, Any]:
    """Statuses where a job that failed with :data:`SETUP_FAILED_RC` says which set-up line
    stopped it and why (its ``setup_failed`` file, read with ``read(handle, name, offset)``)."""
    import dataclasses

    from launcher_core.jobs import JobState

    out = dict(statuses)
    for job_id, status in statuses.items():
        reason = status.exit_reason or ""
        if status.state is not JobState.FAILED or f"code {SETUP_FAILED_RC} " not in reason + " ":
            continue
        handle = handles.get(job_id)
        if handle is None or handle.is_packed:  # a packed task's file: its jobs keep the task's reason
            continue
        try:
            text = read(handle, SETUP_FAILED_FILE, 0).decode(errors="replace").strip()
        except Exception:  # noqa: BLE001 - the exit code stands as the reason
            text = ""
        if text:
            out[job_id] = dataclasses.replace(status, exit_reason=f"set-up failed before the task started: {text}")
    return out
