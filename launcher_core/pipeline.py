"""Pipelines: stages of Hydra multiruns with dependencies between them (``launcher-core pipeline``).

A pipeline file (YAML) names stages; each is a Hydra multirun of an app (its overrides, paired
groups and cluster preset) that ``needs`` other stages. A stage override may hold
``${stage:NAME,output_dir}`` (the matched upstream job's output dir) or ``${stage:NAME,sweep_dir}``.
The runner resolves these itself, per job, before it launches a stage: a downstream job is matched
with the one upstream job that has the same values of the keys both stages sweep (or ``match``),
or needs the whole upstream stage when they share none. The app only ever sees literal paths.

A stage launch is a real multirun of the stage's app in a subprocess (``python APP -m ...
hydra.sweep.dir=<pipeline dir>/<stage> hydra.launcher.wait=false``): every backend and the
exactly-once rules of the launch loop apply unchanged. Its jobs are listed explicitly, as one
paired group (:func:`job_group_override`), with ``hydra.job.num`` and ``hydra.sweep.subdir`` set to
the job's number in the stage's full plan, so a job keeps its number, dir and id whichever jobs are
launched with it (a job whose upstream failed is left out: *blocked*).

The pipeline's own state (``<pipeline dir>/.pipeline/state.json``, written atomically) records
only which jobs each stage launch was given, before the launch starts; everything else (job
states, handles) is read from the stages' state stores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError, LauncherError
from launcher_core.jobs import JobState
from launcher_core.state import JobRow, StateStore

log = logging.getLogger("launcher_core.pipeline")

PIPELINE_DIR = ".pipeline"
STATE_FILE = "state.json"
STAGE_REF = re.compile(r"\$\{stage:\s*([^,}\s]+)\s*,\s*([^}\s]+)\s*\}")
REF_KEYS = ("output_dir", "sweep_dir")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_GROUP_KEY = re.compile(r"[+~]{0,2}[A-Za-z_][A-Za-z0-9_.\-]*")
_STAGE_KEYS = {"app", "overrides", "paired", "cluster", "needs", "match", "paths", "python", "cwd"}
_TOP_KEYS = {"name", "dir", "cluster", "python", "stages"}
_RESERVED = ("hydra.sweep.", "hydra.sweeper.", "hydra/sweeper", "hydra.launcher.wait", "hydra.launcher.dependency")
MAX_ATTEMPTS = 4  # launches of the same jobs (the first and resumes) before the runner gives up
MAX_GROUP_BYTES = 100_000  # Linux caps one argument at 128 KiB
LAUNCHERS = {
    "LocalPoolLauncher": "local_pool",
    "RemoteSSHLauncher": "remote_ssh",
    "SlurmArrayLauncher": "slurm",
    "Ec2Launcher": "ec2",
}
DETACHED = ("remote_ssh", "slurm", "ec2")  # have hydra.launcher.wait


# --- the file ------------------------------------------------------------------------------------
@dataclass
class JobPlan:
    """One job of a stage: its number in the stage's plan (= its subdir) and swept overrides."""

    num: int
    overrides: list[str]
    values: dict[str, str]  # bare key -> canonical value, for matching


@dataclass
class Stage:
    name: str
    app: Path
    cwd: Path
    python: str
    overrides: list[str]
    paired: list[Any]
    cluster: str | None
    needs: list[str]
    match: list[str] | None
    paths: str  # auto | local
    constants: list[str] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # override key -> value template
    swept: list[str] = field(default_factory=list)  # bare keys
    jobs: list[JobPlan] = field(default_factory=list)


@dataclass
class Pipeline:
    file: Path
    name: str
    dir: Path
    stages: dict[str, Stage]  # in dependency order
    needs_cache: dict[tuple[str, int], dict[str, list[int]]] = field(default_factory=dict, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.dir / PIPELINE_DIR

    def stage_dir(self, name: str) -> Path:
        return self.dir / name


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline file and plan every stage's jobs; raise ``ConfigError`` naming
    the stage and key on anything wrong (nothing is launched before this returns)."""
    import yaml

    file = Path(path).expanduser().resolve()
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read pipeline file {file}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise ConfigError(f"{file}: a pipeline file needs a 'stages' mapping: name -> {{app, overrides, needs}}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{file}: unknown keys {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    base = file.parent
    name = str(data.get("name") or file.stem)
    pdir = _path(base, data.get("dir") or f"multirun/pipeline-{name}")
    stages = {
        str(n): _stage(str(n), s, base, data.get("cluster"), data.get("python")) for n, s in data["stages"].items()
    }
    order = _topological(stages)
    pipeline = Pipeline(file=file, name=name, dir=pdir, stages={n: stages[n] for n in order})
    for stage in pipeline.stages.values():
        _plan(stage, pipeline)
    for stage in pipeline.stages.values():
        for job in stage.jobs:
            job_needs(pipeline, stage, job)  # ambiguous or missing matches fail here, before anything runs
    return pipeline


def _path(base: Path, value: Any) -> Path:
    return (base / os.path.expanduser(str(value))).resolve()


def _stage(name: str, raw: Any, base: Path, cluster: Any, python: Any) -> Stage:
    where = f"stage {name}"
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: a stage name must be letters, digits, '_' or '-' (starting with a letter)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with at least 'app', got {raw!r}")
    unknown = set(raw) - _STAGE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_STAGE_KEYS)}")
    if not raw.get("app"):
        raise ConfigError(f"{where}: 'app' (the Hydra app's script) is required")
    app = _path(base, raw["app"])
    if not app.is_file():
        raise ConfigError(f"{where}: app {app} does not exist")
    overrides = _strings(f"{where}.overrides", raw.get("overrides") or [])
    for text in overrides:
        if text.startswith("-") or any(text.startswith(r) or text.lstrip("+~").startswith(r) for r in _RESERVED):
            raise ConfigError(f"{where}: override {text!r} is set by the pipeline (sweep dir, sweeper, wait)")
    paths = str(raw.get("paths", "auto"))
    if paths not in ("auto", "local"):
        raise ConfigError(f"{where}.paths must be auto or local, got {paths!r}")
    match = raw.get("match")
    return Stage(
        name=name,
        app=app,
        cwd=_path(base, raw.get("cwd") or "."),
        python=str(raw.get("python") or python or sys.executable),
        overrides=overrides,
        paired=list(raw.get("paired") or []),
        cluster=None if raw.get("cluster", cluster) is None else str(raw.get("cluster", cluster)),
        needs=_strings(f"{where}.needs", raw.get("needs") or []),
        match=None if match is None else _strings(f"{where}.match", match),
        paths=paths,
    )


def _strings(key: str, value: Any) -> list[str]:
    if (
        isinstance(value, str)
        or not isinstance(value, list)
        or not all(isinstance(v, (str, int, float)) for v in value)
    ):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def _topological(stages: Mapping[str, Stage]) -> list[str]:
    """Stage names, every stage after the stages it needs; a cycle or an unknown name is an error."""
    for stage in stages.values():
        for need in stage.needs:
            if need not in stages:
                raise ConfigError(f"stage {stage.name} needs stage {need!r}, which the file does not define")
            if need == stage.name:
                raise ConfigError(f"stage {stage.name} needs itself")
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name) :] + [name]
            raise ConfigError(f"stages depend on each other in a cycle: {' -> '.join(cycle)}")
        visiting.append(name)
        for need in stages[name].needs:
            visit(need)
        visiting.pop()
        order.append(name)

    for name in stages:
        visit(name)
    return order


# --- planning a stage's jobs -----------------------------------------------------------------------
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _plan(stage: Stage, pipeline: Pipeline) -> None:
    """Split the stage's overrides into constants, stage references and swept keys; expand the
    sweep (grid and paired groups, as the paired sweeper does) into numbered jobs."""
    from launcher_core.sweep import bare_key, expand, grid_dimensions, paired_dimensions

    parser = _parser()
    where = f"stage {stage.name}"
    grouped = _paired_keys(stage.paired)
    swept_overrides = []
    for text in stage.overrides:
        if STAGE_REF.search(text):
            _add_ref(stage, text, pipeline)
            continue
        override = _parse(parser, text, where)
        key = override.get_key_element()
        if key.startswith(("hydra.", "hydra/")):
            if override.is_sweep_override():
                raise ConfigError(f"{where}: override {text!r} sweeps a hydra key, which a pipeline cannot plan")
            stage.constants.append(text)
        elif override.is_sweep_override() or bare_key(key) in grouped:
            swept_overrides.append(override)
        else:
            stage.constants.append(text)
    try:
        grid, groups = paired_dimensions(stage.paired, grid_dimensions(swept_overrides), parser)
        dims = [*grid, *groups]
    except LauncherError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    stage.swept = [bare_key(k) for d in dims for k in d.keys]
    for ref_key in stage.refs:
        if bare_key(ref_key) in stage.swept:
            raise ConfigError(f"{where}: key {bare_key(ref_key)!r} is both swept and set from another stage")
    values_cache: dict[str, str] = {}
    for num, overrides in enumerate(expand(dims)):
        values = {bare_key(o.split("=", 1)[0]): _canonical(parser, o, values_cache, where) for o in overrides}
        stage.jobs.append(JobPlan(num, overrides, values))


def _paired_keys(groups: Sequence[Any]) -> set[str]:
    from launcher_core.sweep import bare_key

    keys: set[str] = set()
    for group in groups:
        if isinstance(group, (dict, list, tuple)):
            keys.update(bare_key(str(k)) for k in group)
    return keys


def _parse(parser: Any, text: str, where: str) -> Any:
    from hydra.errors import HydraException

    try:
        return parser.parse_override(text)
    except HydraException as exc:
        raise ConfigError(f"{where}: override {text!r}: {str(exc).splitlines()[0]}") from exc


def _canonical(parser: Any, override_text: str, cache: dict[str, str], where: str) -> str:
    """A value as Hydra reads it (``1e-3`` and ``0.001`` are one value), as text to compare."""
    if override_text not in cache:
        value = _parse(parser, override_text, where).value()
        cache[override_text] = json.dumps(value, sort_keys=True, default=str)
    return cache[override_text]


def _add_ref(stage: Stage, text: str, pipeline: Pipeline) -> None:
    where = f"stage {stage.name}"
    key, sep, value = text.partition("=")
    if not sep or not _GROUP_KEY.fullmatch(key):
        raise ConfigError(f"{where}: {text!r} must be KEY=VALUE to use ${{stage:...}}")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    for upstream, ref_key in STAGE_REF.findall(value):
        if upstream not in stage.needs:
            raise ConfigError(f"{where}: {key} refers to stage {upstream!r}, which is not in its needs")
        if ref_key not in REF_KEYS:
            raise ConfigError(f"{where}: {key} asks for {ref_key!r} of stage {upstream}; known: {', '.join(REF_KEYS)}")
    stage.refs[key] = value


# --- matching downstream jobs with upstream jobs -----------------------------------------------------
def shared_keys(pipeline: Pipeline, stage: Stage, upstream: Stage) -> list[str]:
    """The keys a job of ``stage`` is matched on with the jobs of ``upstream``."""
    from launcher_core.sweep import bare_key

    if stage.match is not None:
        keys = [bare_key(k) for k in stage.match]
        for key in keys:
            if key not in stage.swept or key not in upstream.swept:
                raise ConfigError(
                    f"stage {stage.name}: match key {key!r} must be swept by both {stage.name} "
                    f"and {upstream.name} (swept: {stage.swept} and {upstream.swept})"
                )
        return keys
    return [k for k in stage.swept if k in upstream.swept]


def job_needs(pipeline: Pipeline, stage: Stage, job: JobPlan) -> dict[str, list[int]]:
    """Upstream stage -> the numbers of its jobs this job needs (all of them when no key is
    shared or the stage is only named in ``needs``)."""
    cached = pipeline.needs_cache.get((stage.name, job.num))
    if cached is not None:
        return cached
    per_ref = _ref_targets(pipeline, stage, job)
    needs: dict[str, list[int]] = {}
    for name in stage.needs:
        upstream = pipeline.stages[name]
        needs[name] = per_ref.get(name, [j.num for j in upstream.jobs])
    pipeline.needs_cache[(stage.name, job.num)] = needs
    return needs


def _ref_targets(pipeline: Pipeline, stage: Stage, job: JobPlan) -> dict[str, list[int]]:
    targets: dict[str, list[int]] = {}
    for template in stage.refs.values():
        for name, key in STAGE_REF.findall(template):
            upstream = pipeline.stages[name]
            if key == "sweep_dir":
                targets[name] = [j.num for j in upstream.jobs]
                continue
            targets.setdefault(name, [])
            match = matched_job(pipeline, stage, job, upstream)
            if match is None:
                targets[name] = [j.num for j in upstream.jobs]
            elif match.num not in targets[name]:
                targets[name].append(match.num)
    return targets


def matched_job(pipeline: Pipeline, stage: Stage, job: JobPlan, upstream: Stage) -> JobPlan | None:
    """The one upstream job with this job's values of the shared keys; None when no key is
    shared (the job reads the whole upstream sweep dir). Refuses no match and several matches."""
    keys = shared_keys(pipeline, stage, upstream)
    if not keys:
        return None
    wanted = {k: job.values[k] for k in keys}
    found = [u for u in upstream.jobs if all(u.values.get(k) == v for k, v in wanted.items())]
    shown = " ".join(f"{k}={json.loads(v)}" for k, v in wanted.items())
    if not found:
        raise ConfigError(
            f"stage {stage.name} job #{job.num} ({shown}): no job of stage {upstream.name} has "
            f"{shown} (matched on keys {', '.join(keys)})"
        )
    if len(found) > 1 and all(u.overrides == found[0].overrides for u in found):
        nums = ", ".join(f"#{u.num}" for u in found[:5])
        raise ConfigError(
            f"stage {stage.name} job #{job.num} ({shown}) matches {len(found)} jobs of stage {upstream.name} "
            f"that have the same values ({nums}: {' '.join(found[0].overrides)}): repeated runs of one config "
            f"cannot be told apart. Sweep a key that differs between them (a seed, say) in both stages"
        )
    if len(found) > 1:
        nums = ", ".join(f"#{u.num} ({' '.join(u.overrides)})" for u in found[:5])
        raise ConfigError(
            f"stage {stage.name} job #{job.num} ({shown}) matches {len(found)} jobs of stage "
            f"{upstream.name} on keys {', '.join(keys)}: {nums}. Sweep the keys that tell them apart "
            f"in {stage.name} too, or name the keys with 'match'"
        )
    return found[0]


# --- where a stage runs (from its Hydra config) -------------------------------------------------------
@dataclass
class Placement:
    """The launcher of a stage, as its app composes it."""

    backend: str
    launcher: dict[str, Any]

    @property
    def login_host(self) -> str | None:
        return self.launcher.get("login_host") if self.backend == "slurm" else None

    @property
    def shares_local_files(self) -> bool:
        """Its jobs see this machine's paths (local processes, or slurm on a shared file system)."""
        return self.backend == "local_pool" or (self.backend == "slurm" and not self.login_host)

    def same_remote(self, other: Placement) -> bool:
        """Both stages run on the same one remote_ssh host (same remote_dir) or slurm login_host."""
        if self.backend != other.backend:
            return False
        if self.backend == "slurm":
            return bool(self.login_host) and self.login_host == other.login_host
        if self.backend == "remote_ssh":
            hosts = self.launcher.get("hosts") or []
            return (
                len(hosts) == 1
                and hosts == (other.launcher.get("hosts") or [])
                and (self.launcher.get("remote_dir") == other.launcher.get("remote_dir"))
            )
        return False


def placement(pipeline: Pipeline, stage: Stage, state: PipelineState) -> Placement:
    """Compose the stage's ``hydra.launcher`` with its app (``--cfg hydra``): checks the app takes
    its overrides, and tells where the jobs run. Cached in the state per command line."""
    argv = [stage.python, str(stage.app), *stage.constants, *_cluster(stage)]
    if stage.jobs:
        argv += [o for o in stage.jobs[0].overrides]
    argv += [f"{k}={_render_path(str(pipeline.stage_dir(stage.name)))}" for k in stage.refs]
    argv += ["--cfg", "hydra", "--package", "hydra.launcher"]
    digest = hashlib.sha256(json.dumps([argv, _mtime(stage.app)]).encode()).hexdigest()[:16]
    cached = state.placements.get(stage.name)
    if cached and cached.get("digest") == digest:
        return Placement(cached["backend"], cached["launcher"])
    launcher = _compose_launcher(stage, argv)
    target = str(launcher.get("_target_", ""))
    backend = LAUNCHERS.get(target.rsplit(".", 1)[-1])
    if backend is None:
        raise ConfigError(
            f"stage {stage.name}: its launcher {target or '(Hydra basic)'} is not one of ours; pipeline stages "
            f"run on local_pool, remote_ssh, slurm or ec2 (e.g. cluster: local)"
        )
    state.placements[stage.name] = {"digest": digest, "backend": backend, "launcher": launcher}
    return Placement(backend, launcher)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _compose_launcher(stage: Stage, argv: list[str]) -> dict[str, Any]:
    import yaml

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    try:
        proc = subprocess.run(argv, cwd=stage.cwd, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"stage {stage.name}: cannot run its app {stage.app}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("Set the environment")]
        raise ConfigError(f"stage {stage.name}: its app refuses the stage's overrides: {' '.join(lines[-3:])}")
    text = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("# @package"))
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"stage {stage.name}: unexpected hydra.launcher config from its app: {text[:200]!r}")
    return data


def _cluster(stage: Stage) -> list[str]:
    return [f"+cluster={stage.cluster}"] if stage.cluster else []


def path_mode(stage: Stage, upstream: Stage, mine: Placement, theirs: Placement) -> str:
    """``local``: the upstream job's dir here; ``remote``: its dir where it ran (the same host)."""
    if stage.paths == "local" or mine.shares_local_files:
        return "local"
    if mine.same_remote(theirs):
        return "remote"
    where = {"remote_ssh": "the same single host and remote_dir", "slurm": "the same login_host"}.get(
        mine.backend, "a backend that sees them"
    )
    raise ConfigError(
        f"stage {stage.name} runs on {mine.backend}, where the outputs of stage {upstream.name} "
        f"({theirs.backend}) cannot be read: run both on {where}, or set 'paths: local' on stage "
        f"{stage.name} if its machines share this machine's file system"
    )


# --- the pipeline's own state ---------------------------------------------------------------------
@dataclass
class PipelineState:
    """``<pipeline dir>/.pipeline/state.json``: each stage's launches (the job numbers given,
    recorded before the launch starts), cached placements, and whether it was cancelled."""

    path: Path
    launches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    placements: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled_at: float | None = None

    @classmethod
    def load(cls, pipeline: Pipeline) -> PipelineState:
        path = pipeline.state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise LauncherError(f"cannot read the pipeline state {path}: {exc}") from exc
        return cls(path, data.get("launches", {}), data.get("placements", {}), data.get("cancelled_at"))

    def save(self) -> None:
        from launcher_core.runtime.worker import atomic_write_bytes

        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "path"}
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode())

    def launched(self, stage: str) -> set[int]:
        return {n for launch in self.launches.get(stage, []) for n in launch["jobs"]}


@contextlib.contextmanager
def run_lock(pipeline: Pipeline) -> Iterator[bool]:
    """One process launches a pipeline's stages at a time (flock; dies with its holder)."""
    from launcher_core.collect.pull import try_lock

    pipeline.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with try_lock(pipeline.state_dir / "run.lock") as locked:
        yield locked


def lock_holder(pipeline: Pipeline) -> int | None:
    """PID of the process holding the run lock, if any."""
    lock = pipeline.state_dir / "run.lock"
    if not lock.exists():
        return None
    with run_lock(pipeline) as locked:
        if locked:
            return None
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- job states across stages ---------------------------------------------------------------------
DONE, FAILED, CANCELLED, RUNNING, QUEUED, FINISHED, NOT_STARTED, BLOCKED = (
    "done",
    "failed",
    "cancelled",
    "running",
    "queued",
    "finished, not home",
    "not started",
    "blocked",
)


@dataclass
class StageView:
    """A stage's jobs as its state store (and the pipeline) sees them now."""

    stage: Stage
    rows: dict[int, JobRow]
    status: dict[int, str]
    blocked: dict[int, str]  # job number -> why
    backend: str | None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for num in range(len(self.stage.jobs)):
            label = (
                BLOCKED if num in self.blocked and self.status[num] in (NOT_STARTED, CANCELLED) else self.status[num]
            )
            out[label] = out.get(label, 0) + 1
        return out


def read_views(pipeline: Pipeline) -> dict[str, StageView]:
    """Every stage's job states, in dependency order, with the jobs blocked by failed upstream jobs."""
    views: dict[str, StageView] = {}
    for stage in pipeline.stages.values():
        rows, backend = _stage_rows(pipeline, stage)
        status = {job.num: _job_status(rows.get(job.num)) for job in stage.jobs}
        view = StageView(stage, rows, status, {}, backend)
        for job in stage.jobs:
            reason = _blocked_by(pipeline, views, stage, job)
            if reason and status[job.num] in (NOT_STARTED, CANCELLED, QUEUED):
                view.blocked[job.num] = reason
        views[stage.name] = view
    return views


def _stage_rows(pipeline: Pipeline, stage: Stage) -> tuple[dict[int, JobRow], str | None]:
    sweep_dir = pipeline.stage_dir(stage.name)
    if not StateStore.exists_in(sweep_dir):
        return {}, None
    try:
        with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
            rows = store.jobs()
            backend = store.meta().get("backend")
    except sqlite3.OperationalError:  # its launch is creating it this instant: no jobs yet
        return {}, None
    by_dir = {str(r.output_dir): r for r in rows}
    out = {}
    for job in stage.jobs:
        row = by_dir.get(str(sweep_dir / str(job.num)))
        if row is not None:
            out[job.num] = row
    return out, backend


def _job_status(row: JobRow | None) -> str:
    if row is None or row.state is JobState.PENDING:
        return NOT_STARTED
    if row.state is JobState.PULLED:
        return {JobState.COMPLETED: DONE, JobState.FAILED: FAILED}.get(row.outcome or JobState.FAILED, CANCELLED)
    return {
        JobState.SUBMITTED: QUEUED,
        JobState.RUNNING: RUNNING,
        JobState.COMPLETED: FINISHED,
        JobState.FAILED: FAILED,
        JobState.CANCELLED: CANCELLED,
    }[row.state]


def _blocked_by(pipeline: Pipeline, views: Mapping[str, StageView], stage: Stage, job: JobPlan) -> str | None:
    """Why this job can never run as things are (a needed upstream job failed, was cancelled or
    is blocked itself), or None."""
    for name, nums in job_needs(pipeline, stage, job).items():
        upstream = views[name]
        for num in nums:
            if num in upstream.blocked:
                return f"needs {name} #{num} (blocked)"
            if upstream.status[num] in (FAILED, CANCELLED):
                row = upstream.rows.get(num)
                why = f": {row.exit_reason}" if row is not None and row.exit_reason else ""
                return f"needs {name} #{num} ({upstream.status[num]}{why})"
    return None


def stage_label(view: StageView, state: PipelineState) -> str:
    """done / done (N failed) / running / waiting / blocked / cancelled / not started."""
    counts = view.counts()
    total = len(view.stage.jobs)
    if counts.get(DONE, 0) == total:
        return "done"
    if any(counts.get(s) for s in (RUNNING, QUEUED, FINISHED)):
        return "running"
    final = sum(counts.get(s, 0) for s in (DONE, FAILED, BLOCKED, CANCELLED))
    if final == total:
        if counts.get(BLOCKED, 0) == total:
            return "blocked"
        bad = total - counts.get(DONE, 0)
        return f"done ({bad} failed or blocked)"
    if state.cancelled_at and view.stage.name in state.launches:
        return "cancelled"
    return "waiting" if view.stage.needs else "not started"


# --- deciding what to launch -----------------------------------------------------------------------
@dataclass
class LaunchPlan:
    """The jobs of a stage to launch now, their resolved references and Slurm dependencies."""

    stage: Stage
    nums: list[int]
    values: dict[int, dict[str, str]]  # job -> ref key -> resolved value
    dependencies: dict[int, list[str]]  # job -> upstream Slurm tasks ("<array>_<index>")
    resume: bool = False


def ready_jobs(
    pipeline: Pipeline, views: Mapping[str, StageView], stage: Stage, places: Mapping[str, Placement]
) -> tuple[list[int], list[int]]:
    """(jobs whose upstream jobs are all home — or, slurm to slurm, submitted —, jobs still waiting)."""
    ready, waiting = [], []
    mine = places[stage.name]
    for job in stage.jobs:
        if job.num in views[stage.name].blocked:
            continue
        ok = True
        for name, nums in job_needs(pipeline, stage, job).items():
            via_slurm = _slurm_chain(mine, places[name])
            for num in nums:
                st = views[name].status[num]
                if st == DONE or (via_slurm and st in (QUEUED, RUNNING, FINISHED)):
                    continue
                ok = False
        (ready if ok else waiting).append(job.num)
    return ready, waiting


def _slurm_chain(mine: Placement, theirs: Placement) -> bool:
    """Both on the same Slurm cluster: the downstream is submitted at once with a dependency."""
    return mine.backend == "slurm" and theirs.backend == "slurm" and mine.login_host == theirs.login_host


def next_launch(
    pipeline: Pipeline,
    views: Mapping[str, StageView],
    stage: Stage,
    state: PipelineState,
    places: Mapping[str, Placement],
    retry_failed: bool,
) -> LaunchPlan | None:
    """What to launch of this stage now, or None.

    An interrupted launch (some of its jobs never handed to the backend, or handed over by a
    launch that did not end) is launched again with the same jobs: the launch loop resumes it.
    Otherwise a stage launches once none of its jobs waits for upstream jobs and none is
    queued or running, with every ready job that never started, was cancelled (or failed, with
    ``retry_failed``); blocked jobs are left out.
    """
    view = views[stage.name]
    launches = state.launches.get(stage.name, [])
    if launches and _interrupted(view, launches[-1]["jobs"]):
        if launches[-1].get("attempts", 1) >= MAX_ATTEMPTS:
            raise LauncherError(
                f"stage {stage.name}: launched {MAX_ATTEMPTS} times and some of its jobs still did not start; "
                f"see {pipeline.state_dir / 'logs' / (stage.name + '.log')}"
            )
        nums = [n for n in launches[-1]["jobs"] if n < len(stage.jobs)]
        return _resolved(pipeline, views, stage, nums, places, resume=True)
    if any(view.status[n] in (QUEUED, RUNNING, FINISHED) for n in view.status):
        return None
    ready, waiting = ready_jobs(pipeline, views, stage, places)
    if waiting:
        return None
    wanted = (NOT_STARTED, CANCELLED, FAILED) if retry_failed else (NOT_STARTED, CANCELLED)
    nums = [n for n in ready if view.status[n] in wanted]
    if not nums:
        return None
    return _resolved(pipeline, views, stage, nums, places)


def _interrupted(view: StageView, nums: Sequence[int]) -> bool:
    for num in nums:
        row = view.rows.get(num)
        if row is None or row.state is JobState.PENDING or row.interrupted:
            return True
    return False


def _resolved(
    pipeline: Pipeline,
    views: Mapping[str, StageView],
    stage: Stage,
    nums: list[int],
    places: Mapping[str, Placement],
    resume: bool = False,
) -> LaunchPlan:
    plan = LaunchPlan(stage, nums, {}, {}, resume)
    for num in nums:
        job = stage.jobs[num]
        plan.values[num] = resolve_refs(pipeline, stage, job, places, views)
        unknown = [k for k, v in plan.values[num].items() if "<on the host" in v]
        if unknown:
            raise LauncherError(
                f"stage {stage.name} job #{num}: where upstream outputs are for {unknown} is not known yet"
            )
        deps = []
        for name, needed in job_needs(pipeline, stage, job).items():
            if not _slurm_chain(places[stage.name], places[name]):
                continue
            for unum in needed:
                row = views[name].rows.get(unum)
                if row is not None and row.handle and views[name].status[unum] != DONE:
                    deps.append(f"{row.handle['array_job_id']}_{row.handle['array_index']}")
        if deps:
            plan.dependencies[num] = deps
    return plan


def resolve_refs(
    pipeline: Pipeline,
    stage: Stage,
    job: JobPlan,
    places: Mapping[str, Placement],
    views: Mapping[str, StageView] | None = None,
) -> dict[str, str]:
    """Each reference override of the job with its upstream paths filled in (where the job runs)."""
    out = {}
    for key, template in stage.refs.items():

        def fill(m: re.Match[str]) -> str:
            upstream = pipeline.stages[m.group(1)]
            if m.group(2) == "sweep_dir":
                return str(pipeline.stage_dir(upstream.name))
            target = matched_job(pipeline, stage, job, upstream)
            mode = path_mode(stage, upstream, places[stage.name], places[upstream.name])
            if target is None:
                return str(pipeline.stage_dir(upstream.name))
            return _job_path(pipeline, upstream, target.num, mode, views)

        out[key] = STAGE_REF.sub(fill, template)
    return out


def _job_path(pipeline: Pipeline, upstream: Stage, num: int, mode: str, views: Mapping[str, StageView] | None) -> str:
    local = str(pipeline.stage_dir(upstream.name) / str(num))
    if mode == "local":
        return local
    row = views[upstream.name].rows.get(num) if views else None
    remote = (row.handle or {}).get("remote_job_dir") if row is not None else None
    return str(remote) if remote else f"<on the host: {upstream.name}'s remote sweep dir>/{num}"


# --- the launch command -----------------------------------------------------------------------------
def _render_path(text: str) -> str:
    from launcher_core.sweep import render_value

    return render_value(text)


def job_group_override(stage: Stage, plan: LaunchPlan) -> str:
    """``hydra.sweeper.paired=[{...}]``: one paired group that lists every job to launch
    explicitly (its swept values, resolved references, ``hydra.job.num`` and ``hydra.sweep.subdir``),
    checked by expanding it as the paired sweeper will."""
    from launcher_core.sweep import quote_value, render_value

    jobs = [stage.jobs[n] for n in plan.nums]
    columns: dict[str, list[str]] = {}
    for job in jobs:
        for override in job.overrides:
            key, _, value = override.partition("=")
            columns.setdefault(key, []).append(value)
        for key, value in plan.values[job.num].items():
            columns.setdefault(key, []).append(render_value(value))
        columns.setdefault("hydra.job.num", []).append(str(job.num))  # its number, dir and id in every launch
        columns.setdefault("hydra.sweep.subdir", []).append(str(job.num))
    for key in columns:
        if not _GROUP_KEY.fullmatch(key):
            raise ConfigError(f"stage {stage.name}: key {key!r} cannot be listed per job (letters, digits, '._-')")
    body = ",".join(f"{key}:{quote_value(','.join(values))}" for key, values in columns.items())
    text = f"hydra.sweeper.paired=[{{{body}}}]"
    if len(text.encode()) > MAX_GROUP_BYTES:
        raise ConfigError(
            f"stage {stage.name}: its {len(jobs)} jobs do not fit on one command line "
            f"({len(text.encode())} bytes > {MAX_GROUP_BYTES}); split the stage"
        )
    _check_group(stage, jobs, plan, text)
    return text


def _check_group(stage: Stage, jobs: Sequence[JobPlan], plan: LaunchPlan, text: str) -> None:
    """The group must expand to exactly the intended jobs (a value Hydra's grammar would change
    is refused here, before anything is launched)."""
    from launcher_core.sweep import expand, paired_dimensions

    parser = _parser()
    group = _parse(parser, text, f"stage {stage.name}").value()
    _grid, dims = paired_dimensions(group, [], parser)
    got = expand(dims)
    for job, overrides in zip(jobs, got):
        cache: dict[str, str] = {}
        have = {o.split("=", 1)[0]: _canonical(parser, o, cache, stage.name) for o in overrides}
        want_overrides = [*job.overrides, *(f"{k}={_render(v)}" for k, v in plan.values[job.num].items())]
        want = {o.split("=", 1)[0]: _canonical(parser, o, cache, stage.name) for o in want_overrides}
        want["hydra.job.num"] = want["hydra.sweep.subdir"] = json.dumps(job.num)
        if have != want or len(got) != len(jobs):
            raise ConfigError(
                f"stage {stage.name}: job #{job.num} cannot be passed to Hydra unchanged: {have} != {want}"
            )


def _render(value: str) -> str:
    from launcher_core.sweep import render_value

    return render_value(value)


def launch_argv(pipeline: Pipeline, plan: LaunchPlan, place: Placement) -> list[str]:
    stage = plan.stage
    argv = [
        stage.python,
        str(stage.app),
        "-m",
        *stage.constants,
        *_cluster(stage),
        "hydra/sweeper=paired",
        "hydra.sweeper.params=null",
        f"hydra.sweep.dir={_render_path(str(pipeline.stage_dir(stage.name)))}",
        job_group_override(stage, plan),
        "hydra.launcher.skip_completed=true",
    ]
    if place.backend in DETACHED:
        argv.append("hydra.launcher.wait=false")
    if plan.dependencies:
        argv.append(f"hydra.launcher.dependency_file={_render_path(str(_dependency_file(pipeline, plan)))}")
    return argv


def _dependency_file(pipeline: Pipeline, plan: LaunchPlan) -> Path:
    from launcher_core.runtime.worker import atomic_write_bytes

    path = pipeline.state_dir / f"{plan.stage.name}.dependencies.json"
    data = {str(pipeline.stage_dir(plan.stage.name) / str(n)): deps for n, deps in plan.dependencies.items()}
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    return path


def live_launches(pipeline: Pipeline, stage: Stage) -> list[int]:
    """PIDs of processes launching this stage (their argv names its sweep dir; a local_pool
    launch's forked jobs count too): a stage being launched is not launched again."""
    token = f"hydra.sweep.dir={_render_path(str(pipeline.stage_dir(stage.name)))}"
    return [pid for pid, argv in _command_lines() if pid != os.getpid() and token in argv]


def _command_lines() -> list[tuple[int, list[str]]]:
    """``(pid, argv)`` of this user's visible processes: from ``/proc`` on Linux, else from
    ``ps`` (macOS), whose command line is split at spaces (a token without spaces still matches)."""
    if not Path("/proc/self/cmdline").exists():
        return _ps_command_lines()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.append((int(entry.name), [a.decode(errors="replace") for a in argv]))
    return found


def _ps_command_lines() -> list[tuple[int, list[str]]]:
    try:
        out = subprocess.run(["ps", "-axww", "-o", "pid=,command="], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.stdout.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit():
            found.append((int(pid), command.split()))
    return found


# --- the runner ------------------------------------------------------------------------------------
@dataclass
class RunOptions:
    stages: list[str] = field(default_factory=list)  # only these (and what they need); empty: all
    wait: bool = False  # until every selected stage is done (pulling and launching as jobs come home)
    retry_failed: bool = False
    interval_s: float = 2.0
    timeout_s: float = 7 * 24 * 3600.0
    blocking: bool = True  # may start launches that block until their jobs end (local_pool)
    launch_timeout_s: float = 3600.0  # a detached launch (wait=false) must return within this


@dataclass
class Runner:
    """Launches what is ready, pulls detached stages home, and (``wait``) repeats until done."""

    pipeline: Pipeline
    options: RunOptions
    state: PipelineState
    places: dict[str, Placement] = field(default_factory=dict)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def selected(self) -> list[Stage]:
        names = set(self.options.stages or self.pipeline.stages)
        for name in list(names):
            if name not in self.pipeline.stages:
                raise ConfigError(
                    f"no stage {name!r} in {self.pipeline.file}; stages: {', '.join(self.pipeline.stages)}"
                )
        grow = True
        while grow:  # every stage a selected stage needs, transitively
            more = {n for s in names for n in self.pipeline.stages[s].needs} - names
            names |= more
            grow = bool(more)
        return [s for s in self.pipeline.stages.values() if s.name in names]

    def prepare(self) -> None:
        """Compose every selected stage's launcher and resolve every job's references now, so a
        problem stops the run before anything is launched."""
        for stage in self.selected():
            self.places[stage.name] = placement(self.pipeline, stage, self.state)
        for stage in self.selected():
            for job in stage.jobs:
                resolve_refs(self.pipeline, stage, job, self.places)
        self.state.save()

    def cycle(self) -> bool:
        """One pass: reap launches, pull detached stages, launch what is ready. True if anything changed."""
        changed = self._reap()
        self._pull()
        views = read_views(self.pipeline)
        for stage in self.selected():
            if stage.name in self.children or live_launches(self.pipeline, stage):
                continue
            plan = next_launch(self.pipeline, views, stage, self.state, self.places, self.options.retry_failed)
            if plan is None:
                continue
            place = self.places[stage.name]
            if place.backend not in DETACHED and not self.options.blocking:
                continue
            self._launch(plan, place)
            changed = True
            views = read_views(self.pipeline)
        return changed

    def _launch(self, plan: LaunchPlan, place: Placement) -> None:
        stage = plan.stage
        argv = launch_argv(self.pipeline, plan, place)
        launches = self.state.launches.setdefault(stage.name, [])
        if plan.resume:
            launches[-1]["attempts"] = launches[-1].get("attempts", 1) + 1
        else:
            launches.append({"jobs": plan.nums, "at": time.time(), "attempts": 1})
        self.state.save()  # before the launch starts: a rerun resumes exactly this launch
        log_path = self.pipeline.state_dir / "logs" / f"{stage.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        what = "resuming" if plan.resume else "launching"
        log.info("%s stage %s: %d jobs on %s (log: %s)", what, stage.name, len(plan.nums), place.backend, log_path)
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        with open(log_path, "ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} {what} {len(plan.nums)} jobs\n".encode())
            out.flush()
            child = subprocess.Popen(argv, cwd=stage.cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.children[stage.name] = child
        if place.backend in DETACHED:  # returns once submitted: wait, so that downstream sees the handles
            try:
                child.wait(self.options.launch_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "stage %s: its launch is still running after %g s", stage.name, self.options.launch_timeout_s
                )
            self._reap()

    def _reap(self) -> bool:
        done = [name for name, child in self.children.items() if child.poll() is not None]
        for name in done:
            code = self.children.pop(name).returncode
            if code != 0:
                log.warning(
                    "stage %s: its launch exited with %d (failed jobs, or see %s)",
                    name,
                    code,
                    self.pipeline.state_dir / "logs" / f"{name}.log",
                )
        return bool(done)

    def _pull(self) -> None:
        """Bring finished jobs of detached stages home (one pull cycle each; skipped while another
        pull process holds a sweep) and refresh Slurm states."""
        from launcher_core.collect.pull import PullOptions, pull_sweep_once

        for stage in self.selected():
            if self.places.get(stage.name) is None or self.places[stage.name].backend not in DETACHED:
                continue
            sweep_dir = self.pipeline.stage_dir(stage.name)
            if stage.name in self.children or not StateStore.exists_in(sweep_dir):
                continue
            try:
                pull_sweep_once(sweep_dir, PullOptions(once=True))
            except LauncherError as exc:
                log.warning("stage %s: pull failed: %s (will retry)", stage.name, exc)

    def unfinished(self) -> list[str]:
        """Selected stages where something may still happen: a launch running, jobs queued,
        running or not home, jobs waiting for upstream jobs, or jobs to launch."""
        views = read_views(self.pipeline)
        out = []
        for stage in self.selected():
            view = views[stage.name]
            active = any(view.status[n] in (QUEUED, RUNNING, FINISHED) for n in view.status)
            _ready, waiting = ready_jobs(self.pipeline, views, stage, self.places)
            busy = stage.name in self.children or bool(live_launches(self.pipeline, stage))
            launchable = next_launch(self.pipeline, views, stage, self.state, self.places, self.options.retry_failed)
            if busy or active or waiting or launchable is not None:
                out.append(stage.name)
        return out

    def run(self) -> int:
        """Cycle until nothing selected is unfinished (``wait``), or once; bounded by ``timeout_s``."""
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            self.cycle()
            left = self.unfinished()
            if not self.options.wait or not left:
                break
            if time.monotonic() > deadline:
                raise LauncherError(f"pipeline {self.pipeline.name}: stages {left} unfinished after the timeout")
            time.sleep(self.options.interval_s)
        for child in self.children.values():
            child.wait(self.options.launch_timeout_s)
        return self.exit_code()

    def exit_code(self) -> int:
        views = read_views(self.pipeline)
        return 0 if all(views[s.name].counts().get(DONE, 0) == len(s.jobs) for s in self.selected()) else 1


def stage_summary_rows(pipeline: Pipeline, state: PipelineState) -> list[tuple[str, str, dict[str, int], StageView]]:
    views = read_views(pipeline)
    return [
        (s.name, stage_label(views[s.name], state), views[s.name].counts(), views[s.name])
        for s in pipeline.stages.values()
    ]
