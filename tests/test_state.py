"""State store: 10 000 jobs, a writer plus concurrent readers, kill -9 at random points."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from launcher_core.jobs import JobSpec, JobState, job_id_for, legacy_job_id_for
from launcher_core.state import StateStore, SweepIndex


def _specs(n: int, root: Path) -> list[JobSpec]:
    return [JobSpec(job_id_for("sweep", i, [f"x={i}"]), i, [f"x={i}"], root / str(i)) for i in range(n)]


def test_job_ids_are_stable_and_distinct() -> None:
    assert job_id_for("s", 0, ["a=1", "b=2"]) == job_id_for("s", 0, ["a=1", "b=2"])
    assert job_id_for("s", 0, ["a=1,b=2"]) != job_id_for("s", 0, ["a=1", "b=2"])
    assert job_id_for("s", 0, ["a=1"]) != job_id_for("t", 0, ["a=1"])
    assert len({job_id_for("s", i, [f"x={i}"]) for i in range(10_000)}) == 10_000


def test_a_job_id_is_its_position_so_repeated_overrides_get_distinct_ids() -> None:
    """``+t=2,2,2`` and a sweeper proposing the same values again: one id per position."""
    assert len({job_id_for("s", i, ["t=2"]) for i in range(10_000)}) == 10_000
    assert job_id_for("s", 1, ["t=2"]) != job_id_for("s", 1, ["t=3"])  # a changed job at that position
    # the position is hashed apart from the overrides: no (position, overrides) pair collides
    assert job_id_for("s", 1, ["1"]) != job_id_for("s", 11, [])
    assert job_id_for("s", 1, []) != legacy_job_id_for("s", [])


def test_the_store_and_job_tables_of_a_sweep_with_repeats_hold_one_row_per_position(tmp_path: Path) -> None:
    from launcher_core.controller import build_job_specs
    from launcher_core.runtime.worker import job_entry

    class Composer:  # build_job_specs' view of a SweepComposer: checks pass, dirs by number
        full_compositions = 0

        def check(self, overrides: list[str]) -> None:
            pass

        def output_dir(self, overrides: list[str], idx: int) -> str:
            return str(tmp_path / str(idx))

    batches = [[["t=2"]] * 3, [["t=2"], ["t=3"]]]  # a sweeper's two batches: idx 0-2, then 3-4
    specs = [
        *build_job_specs(composer=Composer(), sweep_id="s", job_overrides=batches[0], initial_job_idx=0),
        *build_job_specs(composer=Composer(), sweep_id="s", job_overrides=batches[1], initial_job_idx=3),
    ]
    assert len({s.job_id for s in specs}) == 5
    with StateStore.for_sweep_dir(tmp_path) as store:
        store.adopt_earlier_ids("s", specs)
        store.add_jobs(specs)
        rows = store.jobs()
    assert [(r.idx, r.overrides) for r in rows] == [
        (0, ["t=2"]),
        (1, ["t=2"]),
        (2, ["t=2"]),
        (3, ["t=2"]),
        (4, ["t=3"]),
    ]
    assert len({r.job_id for r in rows}) == 5
    table = [job_entry(s.idx, s.overrides, str(s.result_path)) for s in specs]
    assert len({(e["idx"], e["result"]) for e in table}) == 5  # each entry its own job and result file


def test_a_store_of_an_earlier_version_keeps_its_ids_where_position_and_overrides_match(tmp_path: Path) -> None:
    legacy = [JobSpec(legacy_job_id_for("s", [f"x={i}"]), i, [f"x={i}"], tmp_path / str(i)) for i in range(3)]
    with StateStore.for_sweep_dir(tmp_path) as store:
        store._conn.executemany(  # rows as an earlier version wrote them (no id scheme in meta)
            "INSERT INTO jobs(job_id, idx, overrides, output_dir, state, created_at, updated_at) "
            "VALUES(?, ?, ?, ?, 'pulled', 0, 0)",
            [(s.job_id, s.idx, json.dumps(s.overrides), str(s.output_dir)) for s in legacy],
        )
        now = [
            JobSpec(job_id_for("s", i, o), i, o, tmp_path / str(i))
            for i, o in enumerate([["x=0"], ["x=1"], ["x=5"], ["x=2"]])
        ]
        store.adopt_earlier_ids("s", now)
        assert [s.job_id for s in now[:2]] == [legacy[0].job_id, legacy[1].job_id]  # same position and values
        assert now[2].job_id == job_id_for("s", 2, ["x=5"])  # another job at position 2
        assert now[3].job_id == job_id_for("s", 3, ["x=2"])  # x=2 moved to position 3: a new job
        assert "job_ids" not in store.meta()  # still a store of the earlier kind
    with StateStore.for_sweep_dir(tmp_path / "new") as store:
        store.adopt_earlier_ids("s", now)
        assert store.meta()["job_ids"] == "position"


def test_ten_thousand_jobs_round_trip(tmp_path: Path) -> None:
    specs = _specs(10_000, tmp_path)
    with StateStore.for_sweep_dir(tmp_path) as store:
        store.add_jobs(specs)
        store.mark_submitted({s.job_id: {"host": f"h{s.idx % 3}", "pid": s.idx} for s in specs})
        store.update_states({s.job_id: (JobState.RUNNING, None) for s in specs[:6000]})
        store.update_states({s.job_id: (JobState.COMPLETED, None) for s in specs[:5000]})
        store.update_states({s.job_id: (JobState.FAILED, "boom") for s in specs[5000:5500]})
        store.update_states({s.job_id: (JobState.PULLED, None) for s in specs[:5500]})
        counts = store.counts()
        rows = store.jobs(states=[JobState.PULLED])
    assert counts == {JobState.PULLED: 5500, JobState.RUNNING: 500, JobState.SUBMITTED: 4000}
    assert len(rows) == 5500
    assert rows[0].outcome is JobState.COMPLETED and rows[-1].outcome is JobState.FAILED
    assert rows[-1].exit_reason == "boom" and rows[-1].host == "h0"  # 5499 % 3 == 0
    assert rows[0].handle == {"host": "h0", "pid": 0}
    assert all(r.started_at and r.finished_at and r.pulled_at for r in rows[:5000])


def test_relaunch_keeps_finished_states(tmp_path: Path) -> None:
    specs = _specs(3, tmp_path)
    with StateStore.for_sweep_dir(tmp_path) as store:
        store.add_jobs(specs)
        store.update_states({specs[0].job_id: (JobState.COMPLETED, None)})
        store.add_jobs(specs)
        assert [r.state for r in store.jobs()] == [JobState.COMPLETED, JobState.PENDING, JobState.PENDING]


def test_files_are_private(tmp_path: Path) -> None:
    with StateStore.for_sweep_dir(tmp_path) as store:
        store.add_jobs(_specs(1, tmp_path))
        path = store.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    index = SweepIndex(tmp_path / "home")
    index.register("s1", tmp_path, "local_pool")
    assert index.sweeps()[0][:3] == ("s1", tmp_path, "local_pool")
    index.close()
    assert stat.S_IMODE((tmp_path / "home" / "sweeps.sqlite").stat().st_mode) == 0o600


_WRITER = """
import sys
from pathlib import Path
from launcher_core.jobs import JobSpec, JobState, job_id_for
from launcher_core.state import StateStore

root = Path(sys.argv[1])
ids = [job_id_for("sweep", i, [f"x={i}"]) for i in range(2000)]
with StateStore.for_sweep_dir(root) as store:
    store.add_jobs([JobSpec(j, i, [f"x={i}"], root / str(i)) for i, j in enumerate(ids)])
    print("ready", flush=True)
    generation = 0
    while True:  # every transaction moves all 2000 jobs to one reason "gen-N"
        generation += 1
        store.update_states({j: (JobState.RUNNING, f"gen-{generation}") for j in ids})
"""


def test_kill_9_mid_write_never_tears_the_store(tmp_path: Path) -> None:
    rng = random.Random(1234)
    generations_seen = set()
    for round_no in range(12):
        with subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        conn = sqlite3.connect(tmp_path / ".launcher" / "state.sqlite")
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
        with StateStore.for_sweep_dir(tmp_path, readonly=True) as store:
            rows = store.jobs()
        assert len(rows) == 2000, f"round {round_no}: jobs lost"
        reasons = {r.exit_reason for r in rows}
        assert len(reasons) == 1, f"round {round_no}: a torn transaction left {len(reasons)} generations"
        generations_seen |= reasons
    assert len(generations_seen) > 1  # the writer really got transactions through between kills


_READER = """
import sys, time
from pathlib import Path
from launcher_core.state import StateStore

last = -1
deadline = time.monotonic() + float(sys.argv[2])
reads = 0
while time.monotonic() < deadline:
    with StateStore.for_sweep_dir(Path(sys.argv[1]), readonly=True) as store:
        done = store.counts().get(__import__("launcher_core.jobs").jobs.JobState.COMPLETED, 0)
    assert done >= last, (done, last)
    last = done
    reads += 1
print(reads, last)
"""


def test_readers_work_while_one_writer_writes(tmp_path: Path) -> None:
    specs = _specs(3000, tmp_path)
    with StateStore.for_sweep_dir(tmp_path) as store:
        store.add_jobs(specs)
        readers = [
            subprocess.Popen([sys.executable, "-c", _READER, str(tmp_path), "4"], stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        deadline = time.monotonic() + 3.5
        for start in range(0, 3000, 30):
            if time.monotonic() > deadline:
                break
            store.update_states({s.job_id: (JobState.COMPLETED, None) for s in specs[start : start + 30]})
        written = store.counts().get(JobState.COMPLETED, 0)
    for reader in readers:
        out, _ = reader.communicate(timeout=30)
        assert reader.returncode == 0, out
        reads, last_seen = (int(v) for v in out.split())
        assert reads > 10 and 0 < last_seen <= written
