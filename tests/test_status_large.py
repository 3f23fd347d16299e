"""``launcher-core status`` on a sweep with more jobs than a terminal shows: the jobs that need
attention first, the rest counted, ``--all`` for every job (a real state store, written with the
launcher's own writers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher_core.cli import main as cli_main
from launcher_core.cli.sweep_commands import STATUS_ROWS
from launcher_core.jobs import JobSpec, JobState, job_id_for
from launcher_core.state import StateStore


def _sweep(root: Path, completed: int, failed: int, running: int) -> Path:
    sweep = root / "sweep"
    n = completed + failed + running
    specs = [JobSpec(job_id_for("big", i, [f"x={i}"]), i, [f"x={i}"], sweep / str(i)) for i in range(n)]
    # failed and running jobs spread through the sweep, not only at its end
    kinds = ["completed"] * completed + ["failed"] * failed + ["running"] * running
    kinds = [kinds[(i * 7919) % n] for i in range(n)] if n else kinds
    with StateStore.for_sweep_dir(sweep) as store:
        store.set_meta({"sweep_id": "big", "backend": "local_pool", "sweep_dir": str(sweep), "launched_at": 0})
        store.add_jobs(specs)
        store.mark_submitted({s.job_id: {"host": "localhost"} for s in specs}, launch_id="t")
        ended = {JobState.COMPLETED: "completed", JobState.FAILED: "failed"}
        for state, name in ended.items():
            ids = [s.job_id for s, k in zip(specs, kinds) if k == name]
            store.update_states({j: (state, "boom" if state is JobState.FAILED else None) for j in ids})
            store.mark_pulled(ids)
        store.update_states({s.job_id: (JobState.RUNNING, None) for s, k in zip(specs, kinds) if k == "running"})
    return sweep


def _job_numbers(out: str) -> list[int]:
    """Job numbers of the per-job table rows (rich or plain), in order."""
    return [int(m.group(1)) for m in re.finditer(r"^[│ ]*(\d+)\s+[│ ]\s*[0-9a-f]{10}\b", out, re.M)]


def test_status_lists_the_jobs_needing_attention_first_and_counts_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(tmp_path, completed=100, failed=15, running=5)
    assert cli_main(["status", str(sweep), "--offline"]) == 0
    out = capsys.readouterr().out
    shown = _job_numbers(out)
    assert len(shown) == STATUS_ROWS == 50 and shown == sorted(shown)
    with StateStore.for_sweep_dir(sweep, readonly=True) as store:
        rows = {r.idx: r for r in store.jobs()}
    attention = {i for i, r in rows.items() if (r.outcome or r.state) is not JobState.COMPLETED}
    assert len(attention) == 20 and attention <= set(shown)
    assert "70 more jobs not shown (70 completed (pulled))" in out.replace("\n", " ")

    assert cli_main(["status", str(sweep), "--offline", "--all"]) == 0
    assert _job_numbers(capsys.readouterr().out) == list(range(120))


def test_status_of_a_sweep_where_every_job_needs_attention_still_stops_at_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep(tmp_path, completed=0, failed=60, running=2500)  # --all: more rows than rich draws
    assert cli_main(["status", str(sweep), "--offline"]) == 0
    out = capsys.readouterr().out
    assert _job_numbers(out) == list(range(50))
    assert "2510 more jobs not shown (" in out.replace("\n", " ")
    assert cli_main(["status", str(sweep), "--offline", "--all"]) == 0
    everything = capsys.readouterr().out
    assert _job_numbers(everything) == list(range(2560))
    assert "│" not in everything.split("dir:", 1)[1]  # beyond 2000 rows: a plain text table
