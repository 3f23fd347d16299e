"""Loading a sweep's results: rows from its local sweep dir and state store only.

So it works offline, on every backend, once jobs are pulled (or at once where the jobs write
into this machine's sweep dir: :func:`results_are_local`). A job's values are its return value
(a number or string as one ``return`` column, a dict, nested or flat, as one column per key,
``{"val": {"acc": 0.9}}`` -> ``val.acc``) or, with ``metrics_file``, the keys of a JSON/YAML file
the task wrote into its output dir.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher_core.backends.registry import capabilities_of, handle_of
from launcher_core.errors import ConfigError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE
from launcher_core.overrides import parse_overrides
from launcher_core.results.table import RETURN, ResultRow, Results
from launcher_core.state import JobRow, JobState, StateStore

MAX_CELL = 200  # characters of a non-scalar value (list, object repr) kept in a cell


# --- loading ----------------------------------------------------------------------------------
def load(sweep_dir: str | Path, metrics_file: str | None = None, *, values: bool = True) -> Results:
    """The rows of the sweep in ``sweep_dir`` (a dir holding ``.launcher/state.sqlite``).

    ``metrics_file``: a JSON or YAML file, relative to each job's output dir, whose keys become
    columns (over the return value's; a list of dicts, e.g. one per epoch, gives its last one).
    ``values=False`` skips reading results (names and states only, for ``link``).
    """
    sweep_dir = Path(sweep_dir)
    if not StateStore.exists_in(sweep_dir):
        raise ConfigError(f"{sweep_dir} is not a sweep dir: it has no {LAUNCHER_DIR}/state.sqlite")
    _check_metrics_file(metrics_file)
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        meta = store.meta()
        job_rows = store.jobs()
    local_backend = results_are_local(meta)
    warnings: list[str] = []
    rows = [_row(j, meta, local_backend, metrics_file if values else None, values, warnings) for j in job_rows]
    return Results(sweep_dir, rows, meta=meta, warnings=_summarise_warnings(warnings))


def rows_from_returns(sweep_dir: Path, jobs: Iterable[tuple[int, Sequence[str], Any]]) -> Results:
    """Rows of jobs whose ``JobReturn`` is in memory (the end of a launch): no file is read."""
    rows = []
    for num, overrides, ret in jobs:
        values, reason, failed = _from_return(ret)
        rows.append(
            ResultRow(
                num=num,
                job_id="",
                params=parse_overrides(overrides),
                state="failed" if failed else "completed",
                duration_s=None,
                host=None,
                values=values,
                reason=reason,
                output_dir=Path(sweep_dir),
                overrides=list(overrides),
            )
        )
    return Results(sweep_dir, rows)


def results_are_local(meta: Mapping[str, Any]) -> bool:
    """Whether the sweep's jobs write their files straight into this machine's sweep dir (so
    there is nothing to pull, and a finished job's files are here): a capability of its backend."""
    return capabilities_of(meta).results_local


def _row(
    job: JobRow,
    meta: Mapping[str, Any],
    local_backend: bool,
    metrics_file: str | None,
    values: bool,
    warnings: list[str],
) -> ResultRow:
    shown = job.outcome if job.state is JobState.PULLED and job.outcome else job.state
    local = job.state is JobState.PULLED or local_backend
    state = shown.value
    if shown in (JobState.COMPLETED, JobState.FAILED) and not local:
        state += " (not pulled)"
    handle = handle_of(meta, job.handle) if job.handle else None
    row = ResultRow(
        num=job.idx,
        job_id=job.job_id,
        params=parse_overrides(job.overrides),
        state=state,
        duration_s=_duration(job),
        host=job.host or (handle.host_label() if handle is not None else None),
        where=handle.placement() if handle is not None else None,
        values={},
        reason=job.exit_reason,
        output_dir=job.output_dir,
        attempts=job.attempt,
        created_at=job.created_at,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        local=local,
        pull_mode=job.pull_mode,
        overrides=list(job.overrides),
    )
    if values and local and shown.is_terminal:
        _read_values(row, metrics_file, warnings)
    return row


def _duration(job: JobRow) -> float | None:
    start = job.started_at or job.submitted_at
    if start is None:
        return None
    if job.finished_at is not None:
        return max(0.0, job.finished_at - start)
    return None if job.state.is_terminal else job.duration_s


def _read_values(row: ResultRow, metrics_file: str | None, warnings: list[str]) -> None:
    from launcher_core.runtime.worker import load_job_return

    result_path = row.output_dir / LAUNCHER_DIR / RESULT_FILE
    if result_path.exists():
        try:
            ret = load_job_return(result_path)
        except Exception as exc:  # noqa: BLE001 - e.g. a return value of a class not importable here
            warnings.append(f"{RESULT_FILE} unreadable here ({type(exc).__name__}: {exc})")
        else:
            row.values, reason, _failed = _from_return(ret)
            if reason and not row.reason:
                row.reason = reason
    if metrics_file:
        row.values.update(_read_metrics(row.output_dir / metrics_file, warnings))


def _from_return(ret: Any) -> tuple[dict[str, Any], str | None, bool]:
    """(metric values, failure reason, failed) of a ``JobReturn``."""
    from hydra.core.utils import JobStatus

    if ret is None:
        return {}, None, False
    if ret.status == JobStatus.FAILED:
        err = ret._return_value
        lines = str(err).splitlines()
        return {}, f"{type(err).__name__}: {lines[0] if lines else ''}", True
    return flatten_return(ret._return_value), None, False


def _read_metrics(path: Path, warnings: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        warnings.append(f"metrics file unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        return {}
    except Exception as exc:  # noqa: BLE001 - yaml's own errors
        warnings.append(f"metrics file unreadable ({type(exc).__name__})")
        return {}
    if isinstance(data, list) and data and all(isinstance(d, Mapping) for d in data):
        data = data[-1]  # one dict per epoch/step: the last one
    if not isinstance(data, Mapping):
        warnings.append(f"metrics file holds a {type(data).__name__}, not a mapping")
        return {}
    return flatten_return(data)


def _check_metrics_file(metrics_file: str | None) -> None:
    if metrics_file is None:
        return
    path = Path(metrics_file)
    if not metrics_file or path.is_absolute() or ".." in path.parts:
        raise ConfigError(f"--metrics {metrics_file!r}: give a path relative to each job's output dir")
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"--metrics {metrics_file!r}: only .json, .yaml and .yml files are read")


def _summarise_warnings(warnings: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for w in warnings:
        counts[w] = counts.get(w, 0) + 1
    return [f"{n} job(s): {w}" for w, n in counts.items()]


# --- values -----------------------------------------------------------------------------------
def flatten_return(value: Any, prefix: str = "") -> dict[str, Any]:
    """Columns of a return value: a mapping (also OmegaConf's) gives one per leaf key, joined
    with ``.``; anything else one ``return`` column (None: none)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = f"{prefix}{key}"
            if isinstance(item, Mapping) and item:
                out.update(flatten_return(item, name + "."))
            else:
                out[name] = plain_value(item)
        return out
    if value is None and not prefix:
        return {}
    return {prefix or RETURN: plain_value(value)}


def plain_value(value: Any) -> Any:
    """A value a table can show: numbers, strings, bools and None stay; numpy/torch scalars
    become Python numbers; anything else its (shortened) JSON or repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) in ((), None) and getattr(value, "size", 1) == 1:
        try:
            scalar = item()
            if isinstance(scalar, (bool, int, float, str)):
                return scalar
        except Exception:  # noqa: BLE001 - not a scalar after all
            pass
    try:
        text = json.dumps(value, default=str) if isinstance(value, (list, tuple, Mapping)) else repr(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
