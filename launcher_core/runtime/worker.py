"""Run one job and write its pickled ``JobReturn`` next to its output.

Used in two ways:
* in-process by ``local_pool`` (a forked child calls :func:`run_and_save`), and
* as ``python -m launcher_core.runtime.worker SWEEP_PAYLOAD JOB_TABLE FIRST [COUNT]`` where the job
  runs, from two files a backend shipped: the sweep payload (the task function, by reference
  where it can be, and the composed templates; once per sweep, see
  :mod:`launcher_core.runtime.payload`) and a job table (each job's number, override list and
  result path; JSON). The job composes its own config there (:class:`SweepPayload`), so nothing
  per job is written before submission.

A task that raises comes back as a FAILED ``JobReturn`` whose ``return_value`` is the original
exception when it can be pickled (with the remote traceback attached as a note), or a
:class:`RemoteJobError` naming the exception type, message and traceback when it cannot.
The process exit code is 0 for a completed job and 1 for a failed one, so schedulers that only
see exit codes (SLURM's sacct) report the same state as Hydra does.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

from launcher_core.runtime.files import atomic_write_bytes as atomic_write_bytes  # its home before
from launcher_core.runtime.markers import CODE_FILE

EXIT_COMPLETED = 0
EXIT_FAILED = 1
# set by the slurm backend's batch script: every task of a multi-task job runs the worker (see run_ranked)
RANKS_DIR_ENV = "HRL_RANKS_DIR"
# JSON [code dir, its frozen snapshot]: the job imports from the snapshot (launcher_core.snapshots)
CODE_SNAPSHOT_ENV = "HRL_CODE_SNAPSHOT"


class RemoteJobError(RuntimeError):
    """A job failed with an exception that could not be shipped back as itself."""


class JobTimeoutError(RuntimeError):
    """A job ran longer than ``timeout_s`` and was killed."""


class JobLostError(RuntimeError):
    """A job's process died without writing a result (killed, crashed, out of disk, ...)."""


class JobNotRunError(JobLostError):
    """A job that never started: no place could take it (a spill sweep whose targets were full,
    over their budget or skipped). A ``JobLostError`` too, so code that catches that still does."""


def _format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _picklable_failure(exc: BaseException) -> BaseException:
    """The exception itself if it survives a pickle round trip, else a RemoteJobError."""
    import cloudpickle

    tb_text = _format_exception(exc)
    try:
        clone = cloudpickle.loads(cloudpickle.dumps(exc))
        if isinstance(clone, BaseException):
            clone.add_note(f"Traceback on the job side:\n{tb_text}")
            return clone
    except Exception:  # noqa: BLE001 - any pickling problem means: ship the text instead
        pass
    return RemoteJobError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}\n{tb_text}")


def dump_job_return(ret: Any) -> bytes:
    """Pickle a ``JobReturn`` as a :class:`~launcher_core.runtime.results.StoredJobReturn` (configs
    loaded lazily); unpicklable return values/exceptions are replaced by text."""
    import cloudpickle
    from hydra.core.utils import JobStatus

    from launcher_core.runtime.results import StoredJobReturn

    if ret.status == JobStatus.FAILED and isinstance(ret._return_value, BaseException):
        ret._return_value = _picklable_failure(ret._return_value)
    try:
        return cloudpickle.dumps(StoredJobReturn.of(ret))
    except Exception as exc:  # noqa: BLE001 - the return value itself could not be pickled
        # changed on ``ret`` itself: callers take the job's exit code from ret.status
        ret.status = JobStatus.FAILED
        ret._return_value = RemoteJobError(
            f"the job completed but its return value could not be pickled: {type(exc).__name__}: {exc}"
        )
        return cloudpickle.dumps(StoredJobReturn.of(ret))


# where the job-side classes lived before they moved into launcher_core.runtime: result files
# written then name them so
_MOVED_MODULES = {
    "launcher_core.results": "launcher_core.runtime.results",
    "launcher_core.worker": "launcher_core.runtime.worker",
}


def load_job_return(path: Path) -> Any:
    """A job's ``JobReturn`` from its ``result.pkl`` (its configs are unpickled when first read)."""
    import pickle

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(_MOVED_MODULES.get(module, module), name)

    with open(path, "rb") as f:
        return _Unpickler(f).load()


def failure_summary(result_path: Path) -> str | None:
    """``ExceptionType: first line`` of a failed job's result, None if it completed/is missing."""
    from hydra.core.utils import JobStatus

    try:
        ret = load_job_return(result_path)
    except Exception:  # noqa: BLE001 - missing or unreadable result: nothing to say
        return None
    err = ret._return_value
    if ret.status != JobStatus.FAILED or not isinstance(err, BaseException):
        return None
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def execute_job(task_function: Any, config: Any, hydra_context: Any, idx: int) -> Any:
    """Run one composed job config through ``hydra.core.utils.run_job`` (with the launch's Hydra
    context in a forked job, the job's own one, see :func:`job_context`, elsewhere)."""
    from hydra.core.utils import run_job, setup_globals

    from launcher_core.runtime.compose import set_job_identity

    setup_globals()
    set_job_identity(config, idx)
    if hydra_context is None:
        hydra_context = job_context(config)
    return run_job(  # sets HydraConfig itself
        hydra_context=hydra_context,
        config=config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _run(task_function: Any, config: Any, hydra_context: Any, idx: int) -> Any:
    """The job's ``JobReturn``; a failure's traceback also goes to stderr."""
    from hydra.core.utils import JobStatus

    try:
        ret = execute_job(task_function, config, hydra_context, idx)
    except BaseException as exc:  # noqa: BLE001 - Hydra itself failed (bad config, disk full)
        ret = failed_job_return(config, exc)
    if ret.status == JobStatus.FAILED and isinstance(ret._return_value, BaseException):
        # the job's stderr.log is where users look first: put the traceback there too
        sys.stderr.write(f"Error executing job with overrides: {list(ret.overrides or [])}\n")
        sys.stderr.write(_format_exception(ret._return_value))
        sys.stderr.flush()
    return ret


def run_and_save(task_function: Any, config: Any, hydra_context: Any, idx: int, result_path: Path) -> int:
    """Run the job, write its result atomically, return the process exit code to use."""
    from hydra.core.utils import JobStatus

    ret = _run(task_function, config, hydra_context, idx)
    atomic_write_bytes(result_path, dump_job_return(ret))
    return EXIT_COMPLETED if ret.status == JobStatus.COMPLETED else EXIT_FAILED


def run_ranked(
    task_function: Any, config: Any, hydra_context: Any, idx: int, result_path: Path, ranks_dir: Path, rank: int
) -> int:
    """One task (``rank``) of a job whose every task runs the function (Slurm ``srun`` with several
    tasks, as submitit does it: distributed training sees its own ``SLURM_PROCID``).

    Only rank 0 writes the job's result; a rank that fails also writes its result to
    ``ranks_dir/failed.<rank>.pkl``, which the batch script makes the job's result when the step
    failed, so that a failure on any rank fails the job with that rank's exception.
    """
    from hydra.core.utils import JobStatus

    ret = _run(task_function, config, hydra_context, idx)
    failed = ret.status != JobStatus.COMPLETED
    if rank and failed and isinstance(ret._return_value, BaseException):
        ret._return_value.add_note(f"(raised by task rank {rank})")
    data = dump_job_return(ret) if rank == 0 or failed else b""
    failed = ret.status != JobStatus.COMPLETED  # dump_job_return fails a job whose value cannot be pickled
    if rank == 0:
        atomic_write_bytes(result_path, data)
    if failed:
        atomic_write_bytes(ranks_dir / f"failed.{rank}.pkl", data)
        return EXIT_FAILED
    return EXIT_COMPLETED


def _task_rank() -> int:
    """This task's global rank in a Slurm job step (0 outside one)."""
    try:
        return int(os.environ.get("SLURM_PROCID", "0"))
    except ValueError:
        return 0


def failed_job_return(config: Any, exc: BaseException, working_dir: str | None = None) -> Any:
    """A FAILED ``JobReturn`` for a job that never produced its own (timeout, crash, ...)."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf, open_dict, read_write

    ret = JobReturn()
    ret.status = JobStatus.FAILED
    ret._return_value = exc
    if config is not None:
        task_cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
        with read_write(task_cfg), open_dict(task_cfg):
            task_cfg.pop("hydra", None)
        ret.cfg = task_cfg
        ret.hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(config.hydra)})
        ret.overrides = list(config.hydra.overrides.task)
        ret.task_name = str(config.hydra.job.name)
    ret.working_dir = working_dir or os.getcwd()
    return ret


def job_entry(
    idx: int,
    overrides: list[str],
    result_path: str,
    sweep_dir: str | None = None,
    subdir: str | None = None,
    runtime_cwd: str | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """One job in a job table: its number, overrides and result file; ``sweep_dir``/``subdir``
    when it runs somewhere else than its local output dir (``hydra.sweep.dir``/``subdir`` there),
    ``runtime_cwd`` when Hydra must report another original cwd (``hydra.runtime.cwd``), and
    ``attempt`` from the second run of a lost job on (``HYDRA_LAUNCHER_ATTEMPT``)."""
    entry: dict[str, Any] = {"idx": idx, "overrides": overrides, "result": result_path}
    if attempt != 1:
        entry["attempt"] = attempt
    if sweep_dir is not None:
        entry["sweep_dir"], entry["subdir"] = sweep_dir, subdir or ""
    if runtime_cwd is not None:
        entry["runtime_cwd"] = runtime_cwd
    return entry


_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


def omega_literal(text: str) -> str:
    """A string OmegaConf keeps verbatim (no ``${...}`` interpolation).

    OmegaConf reads ``\\${`` as an escaped ``${`` and, right before ``${`` only, ``\\\\`` as one
    backslash: so a run of backslashes there is doubled, then the ``${`` escaped. Elsewhere
    backslashes are literal and stay as they are.
    """
    return _INTERPOLATION_START.sub(lambda m: m.group(1) * 2 + "\\${", text)


def relocate_config(cfg: Any, entry: dict[str, Any]) -> None:
    """Point a job config at where the job runs (``sweep_dir``/``subdir``/``runtime_cwd`` of its
    entry), as OmegaConf literals: a path must come out as written, whatever ``${`` it holds."""
    from omegaconf import open_dict, read_write

    with read_write(cfg.hydra), open_dict(cfg.hydra):
        if "sweep_dir" in entry:
            cfg.hydra.sweep.dir = omega_literal(entry["sweep_dir"])
            cfg.hydra.sweep.subdir = omega_literal(entry["subdir"])
        if "runtime_cwd" in entry:
            cfg.hydra.runtime.cwd = omega_literal(entry["runtime_cwd"])


def job_table_bytes(entries: list[dict[str, Any]], **extra: Any) -> bytes:
    """A job table: JSON ``{"jobs": [entry, ...], **extra}``, a few hundred bytes per job."""
    return json.dumps({**extra, "jobs": entries}, separators=(",", ":")).encode()


class SweepPayload:
    """A loaded sweep payload (:mod:`launcher_core.runtime.payload`): composes the configs of its
    jobs and runs them on the job side."""

    def __init__(self, path: str) -> None:
        from launcher_core.runtime import payload

        with open(path, "rb") as f:
            loaded = payload.load(f.read())
        self.task_function = loaded.task_function
        self.code_record: dict[str, Any] | None = loaded.code_record
        self._composer_state = loaded.composer_state
        self._composer: Any = None

    @property
    def composer(self) -> Any:
        """The composer of the shipped templates (built once: a packed task builds it before forking)."""
        from launcher_core.runtime.compose import SweepComposer

        if self._composer is None:
            self._composer = SweepComposer.for_node(self._composer_state)
        return self._composer

    def config(self, entry: dict[str, Any]) -> Any:
        """The job's config, composed here exactly as at launch (relocated when it runs elsewhere)."""
        from launcher_core.runtime.compose import compose_job

        cfg = compose_job(self.composer, entry["overrides"], int(entry["idx"]))
        relocate_config(cfg, entry)
        return cfg

    def write_code_record(self, result_path: Path) -> None:
        """The job's ``.launcher/code.json`` (next to its result): the code it runs."""
        if self.code_record is not None:
            text = json.dumps(self.code_record, indent=1) + "\n"
            atomic_write_bytes(result_path.parent / CODE_FILE, text.encode())

    def run(self, entry: dict[str, Any]) -> int:
        """Compose, run and save one job; the process exit code to use."""
        result_path = Path(entry["result"])
        idx = int(entry["idx"])
        set_attempt(int(entry.get("attempt", 1)))
        self.write_code_record(result_path)
        try:
            config = self.config(entry)
        except Exception as exc:  # noqa: BLE001 - reported as the job's failure, like Hydra's own
            sys.stderr.write(f"Error composing the config of job #{idx}: {_format_exception(exc)}")
            ret = failed_job_return(None, exc)
            ret.overrides = list(entry["overrides"])
            atomic_write_bytes(result_path, dump_job_return(ret))
            return EXIT_FAILED
        args = (self.task_function, config, None, idx, result_path)  # the context is the job's own
        ranks_dir = os.environ.get(RANKS_DIR_ENV)
        if ranks_dir:
            return run_ranked(*args, Path(ranks_dir), _task_rank())
        return run_and_save(*args)


ATTEMPT_ENV = "HYDRA_LAUNCHER_ATTEMPT"  # launcher_core.retry: which run of the job this is


def set_attempt(attempt: int) -> None:
    """Tell the task which attempt of its job this is (1 unless an earlier one was lost; a
    Slurm requeue within an attempt keeps it and counts in ``SLURM_RESTART_COUNT``)."""
    os.environ[ATTEMPT_ENV] = str(attempt)


def load_job_table(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as f:
        return json.load(f)["jobs"]


def job_context(config: Any) -> Any:
    """The Hydra context ``run_job`` needs on the job side: the job's callbacks, instantiated from
    its ``hydra.callbacks`` as Hydra does (no config loader: a job composes nothing), and the
    job's name where ``JobReturn.task_name`` reads it."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import JobRuntime
    from hydra.types import HydraContext

    JobRuntime.instance().set("name", str(config.hydra.job.name))
    return HydraContext(config_loader=None, callbacks=Callbacks(config))  # type: ignore[arg-type]


def import_path_in_snapshot(code_dir: Path, snapshot: Path, path: list[str] | None = None) -> list[str]:
    """``sys.path`` with every entry inside ``code_dir`` pointed at the same place in ``snapshot``
    (the script's own dir included), so imports made while a job runs find the frozen code.
    Entries the snapshot left out (a venv inside the project, say) stay as they are."""
    root = code_dir.resolve()
    out = []
    for entry in sys.path if path is None else path:
        try:
            frozen = snapshot / Path(entry or os.getcwd()).resolve().relative_to(root)
        except (ValueError, OSError):
            out.append(entry)
            continue
        out.append(str(frozen) if frozen.is_dir() else entry)
    return out


def enter_snapshot(code_dir: Path, snapshot: Path) -> None:
    """In a job process: import from the snapshot from now on (modules imported already stay)."""
    import importlib

    sys.path[:] = import_path_in_snapshot(code_dir, snapshot)
    importlib.invalidate_caches()


def _enter_snapshot_from_env() -> None:
    value = os.environ.get(CODE_SNAPSHOT_ENV)
    if value:
        code_dir, snapshot = json.loads(value)
        enter_snapshot(Path(code_dir), Path(snapshot))


USAGE = "usage: python -m launcher_core.runtime.worker SWEEP_PAYLOAD JOB_TABLE FIRST [COUNT]"


def main(argv: list[str] | None = None) -> int:
    """Entry point on the job side: run entry ``FIRST`` of the job table, or ``COUNT`` entries
    from ``FIRST`` on one after another (:func:`launcher_core.runtime.packed.run_packed`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4) or not all(a.isdigit() for a in args[2:]):
        print(USAGE, file=sys.stderr)
        return 2
    _enter_snapshot_from_env()  # before the payload: unpickling the task imports its module
    sweep = SweepPayload(args[0])
    jobs = load_job_table(args[1])
    first = int(args[2])
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, line_buffering=True)
    if len(args) == 4:
        from launcher_core.runtime.packed import run_packed

        return run_packed(sweep, jobs[first : first + int(args[3])])
    return sweep.run(jobs[first])


if __name__ == "__main__":
    # Run the importable module, not this ``__main__`` copy: exceptions pickled for the
    # controller must be ``launcher_core.runtime.worker.RemoteJobError``, not ``__main__.RemoteJobError``.
    from launcher_core.runtime import worker as _worker

    sys.exit(_worker.main())
