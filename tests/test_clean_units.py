"""``launcher-core clean`` without any service: the path checks every deletion goes through, which
jobs are eligible (real state stores), and the remote clean script run by a real ``sh`` on a
directory tree that stands for a host's ``remote_dir``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from launcher_core.backends.slurm import login_remote_dir
from launcher_core.collect.clean import select
from launcher_core.jobs import JobSpec, JobState
from launcher_core.remote.paths import CleanRefused, check_root, confined, plan_remote
from launcher_core.remote.scripts import clean_script, parse_clean
from launcher_core.state import StateStore

ROOT = "/home/u/hrl/proj"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/",
        "   ",
        "~",
        "~/hrl/proj/runs/x",
        "runs/x",
        "/home/u/hrl/proj/runs/../../etc",
        "/home/u/other/runs/x",
        "/home/u/hrl/proj/runs",
        "/home/u/hrl/proj/runsX/y",
        "/home/u/hrl/proj/runs/a\nb",
        None,
    ],
)
def test_confined_refuses_paths_outside_the_root_naming_the_value(value: object) -> None:
    with pytest.raises(CleanRefused) as err:
        confined(value, f"{ROOT}/runs", "the remote sweep dir")
    assert repr(value) in str(err.value)


def test_confined_accepts_and_normalises_paths_below_the_root() -> None:
    assert confined(f"{ROOT}/runs/multirun/a//b/", f"{ROOT}/runs", "x") == f"{ROOT}/runs/multirun/a/b"


@pytest.mark.parametrize("value", ["", "/", "~", "~/x/y", "rel/dir", "/etc/hrl", "/usr/lib/x", "/home", "/a/../b", 3])
def test_check_root_refuses_unsafe_remote_dirs(value: object) -> None:
    with pytest.raises(CleanRefused) as err:
        check_root(value)
    assert repr(value) in str(err.value)


def _handle(**over: object) -> dict:
    handle = {
        "host": "h1",
        "remote_dir": ROOT,
        "remote_sweep_dir": f"{ROOT}/runs/multirun/s1",
        "remote_job_dir": f"{ROOT}/runs/multirun/s1/0",
        "remote_cwd": f"{ROOT}/snapshots/S1/20240101-000000-abcdef",
    }
    handle.update(over)
    return handle


def _plan(handles: dict, sweep: bool = False) -> dict:
    return plan_remote(
        handles,
        sweep_id="S1",
        sweep_handles=handles if sweep else None,
        host_of=lambda h: str(h["host"]),
        remote_dir_of=lambda h: check_root(h.get("remote_dir")),
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("remote_job_dir", f"{ROOT}/runs/multirun/s1"),  # the sweep dir itself, not a job dir in it
        ("remote_job_dir", ""),
        ("remote_job_dir", "/"),
        ("remote_job_dir", f"{ROOT}/runs/multirun/other/0"),
        ("remote_job_dir", f"{ROOT}/runs/multirun/s1/../../x"),
        ("remote_sweep_dir", f"{ROOT}/snapshots/S1"),
        ("remote_sweep_dir", "/"),
        ("remote_dir", "/"),
        ("remote_dir", ""),
        ("remote_dir", "~/hrl/proj"),
    ],
)
def test_plan_refuses_a_handle_with_a_path_outside_its_remote_dir(key: str, value: str) -> None:
    with pytest.raises(CleanRefused) as err:
        _plan({"j1": _handle(**{key: value})}, sweep=True)
    assert repr(value) in str(err.value)


def test_plan_lists_job_dirs_sweep_dir_snapshots_and_empty_parents() -> None:
    plans = _plan({"j1": _handle(), "j2": _handle(remote_job_dir=f"{ROOT}/runs/multirun/s1/1")}, sweep=True)
    plan = plans["h1"]
    assert [j.job_dir for j in plan.jobs] == [f"{ROOT}/runs/multirun/s1/0", f"{ROOT}/runs/multirun/s1/1"]
    assert [(s.sweep_dir, s.snapshots, s.parents) for s in plan.sweeps] == [
        (f"{ROOT}/runs/multirun/s1", f"{ROOT}/snapshots/S1", [f"{ROOT}/runs/multirun"])
    ]
    with pytest.raises(CleanRefused):
        plan_remote({}, sweep_id="..", sweep_handles=None, host_of=str, remote_dir_of=str)


def test_login_remote_dir_comes_from_the_snapshot_path_and_is_checked() -> None:
    assert login_remote_dir(_handle(), "S1") == ROOT
    for snapshot in ("", "/", f"{ROOT}/snapshots/OTHER/tag", f"{ROOT}/runs/S1/tag", "/snapshots/S1/tag", None):
        with pytest.raises(CleanRefused) as err:
            login_remote_dir(_handle(remote_cwd=snapshot), "S1")
        assert repr(snapshot) in str(err.value)


# --- eligibility, with a real state store -------------------------------------------------------
def _store(tmp_path: Path, n: int) -> tuple[StateStore, list[JobSpec]]:
    specs = [JobSpec(f"job{i}", i, [f"x={i}"], tmp_path / "sweep" / str(i)) for i in range(n)]
    store = StateStore.for_sweep_dir(tmp_path / "sweep")
    store.add_jobs(specs)
    store.mark_submitted({s.job_id: {"host": "h1", "n": s.idx} for s in specs})
    return store, specs


def _result(spec: JobSpec) -> None:
    spec.launcher_dir.mkdir(parents=True, exist_ok=True)
    spec.result_path.write_bytes(b"pickled")


def test_only_full_pulls_with_a_local_result_are_selected(tmp_path: Path) -> None:
    store, specs = _store(tmp_path, 6)
    store.update_states({s.job_id: (JobState.COMPLETED, None) for s in specs[:5]})
    store.update_states({specs[5].job_id: (JobState.RUNNING, None)})
    for spec in specs[:4]:
        _result(spec)
    store.mark_pulled([specs[0].job_id, specs[3].job_id, specs[4].job_id], "full")  # 4: no result.pkl
    store.mark_pulled([specs[1].job_id], "bare")  # 2: completed, never pulled
    sel = select(store.jobs(), {}, include_bare=False)
    assert [r.idx for r in sel.eligible] == [0, 3]
    assert sel.sweep_handles is None
    assert sum(sel.kept.values()) == 4 and any("--bare" in k for k in sel.kept)
    assert [r.idx for r in select(store.jobs(), {}, include_bare=True).eligible] == [0, 1, 3]

    store.mark_cleaned([specs[0].job_id, specs[5].job_id])  # 5 is running: never marked
    rows = {r.idx: r for r in store.jobs()}
    assert rows[0].cleaned_at is not None and rows[5].cleaned_at is None
    assert [r.idx for r in select(store.jobs(), {}, include_bare=False).eligible] == [3]
    store.reset_to_pending([specs[0].job_id])  # a relaunched job starts uncleaned
    assert next(r for r in store.jobs() if r.idx == 0).cleaned_at is None
    store.close()


def test_sweep_level_is_selected_only_when_every_job_is_clean_after_this(tmp_path: Path) -> None:
    store, specs = _store(tmp_path, 2)
    store.update_states({s.job_id: (JobState.COMPLETED, None) for s in specs})
    for spec in specs:
        _result(spec)
    store.mark_pulled([s.job_id for s in specs], "full")
    store.mark_cleaned([specs[0].job_id])
    sel = select(store.jobs(), {}, include_bare=False)
    assert [r.idx for r in sel.eligible] == [1] and set(sel.sweep_handles or {}) == {"job0", "job1"}
    store.mark_cleaned([specs[1].job_id])
    assert select(store.jobs(), {}, include_bare=False).sweep_handles is not None  # not recorded yet
    assert select(store.jobs(), {"backend_cleaned_at": 1.0}, include_bare=False).empty
    store.close()


# --- the remote script, run by sh on a local tree ------------------------------------------------
def _tree(root: Path, sweep_id: str, rel: str, jobs: int) -> Path:
    sweep = root / "runs" / rel
    (sweep / ".launcher" / "remote_ssh").mkdir(parents=True)
    (sweep / ".launcher" / "remote_ssh" / "sweep_id").write_text(sweep_id + "\n")
    for i in range(jobs):
        (sweep / str(i) / ".launcher").mkdir(parents=True)
        (sweep / str(i) / "out.bin").write_bytes(b"x" * 100)
    (root / "snapshots" / sweep_id / "tag1").mkdir(parents=True)
    (root / "snapshots" / sweep_id / "tag1.complete").touch()
    return sweep


def _run(script: str) -> str:
    proc = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_clean_script_deletes_only_in_a_sweep_dir_it_owns(tmp_path: Path) -> None:
    root = tmp_path / "rd"
    mine = _tree(root, "S1", "multirun/mine", 2)
    theirs = _tree(root, "S2", "multirun/theirs", 1)
    jobs = [("j0", str(mine), str(mine / "0")), ("jx", str(mine), str(mine / "9"))]
    jobs.append(("t1", str(theirs), str(theirs / "0")))  # claimed by S2: refused
    cleaned, refused, _swept, _kept = parse_clean(_run(clean_script(sweep_id="S1", jobs=jobs, sweeps=[])))
    assert not (mine / "0").exists() and (mine / "1").exists()
    assert cleaned == {"j0", "jx"} and refused == {"t1"}  # a job dir already gone counts as cleaned
    assert (theirs / "0" / "out.bin").exists()

    sweeps = [(str(mine), str(root / "snapshots" / "S1"), [str(root / "runs" / "multirun")])]
    _c, _r, swept, kept = parse_clean(_run(clean_script(sweep_id="S1", jobs=[], sweeps=sweeps)))
    assert swept == {str(mine)} and not kept
    assert not mine.exists() and not (root / "snapshots" / "S1").exists()
    assert theirs.exists() and (root / "snapshots" / "S2").exists()
    assert (root / "runs" / "multirun").exists()  # not empty: holds the other sweep
    again = parse_clean(_run(clean_script(sweep_id="S1", jobs=[("j0", str(mine), str(mine / "0"))], sweeps=sweeps)))
    assert again[0] == {"j0"} and again[2] == {str(mine)}  # repeatable: gone is gone


def test_clean_script_keeps_a_sweep_dir_holding_another_sweep(tmp_path: Path) -> None:
    root = tmp_path / "rd"
    outer = _tree(root, "S1", "multirun/outer", 1)
    inner = outer / "nested"
    (inner / ".launcher" / "remote_ssh").mkdir(parents=True)
    (inner / ".launcher" / "remote_ssh" / "sweep_id").write_text("S9\n")
    sweeps = [(str(outer), str(root / "snapshots" / "S1"), [])]
    _c, _r, swept, kept = parse_clean(_run(clean_script(sweep_id="S1", jobs=[], sweeps=sweeps)))
    assert kept == {str(outer)} and not swept
    assert (inner / ".launcher" / "remote_ssh" / "sweep_id").exists() and (outer / "0").exists()
