"""Per-sweep state store and the user-level index of known sweeps.

SQLite (standard library) in WAL mode: every change is one transaction, so a kill -9 at any
point leaves either the old or the new state, never a torn file; WAL lets one writer and any
number of readers (``status`` while a launch or the pull daemon writes) work at once.
``synchronous=NORMAL`` in WAL mode is durable against process death (the case we guard
against); only an OS crash or power loss could drop the last transactions, which the pull
daemon recovers from by polling again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.backends.base import Handle, as_job_handle, handle_json
from launcher_core.intents import SubmitIntent
from launcher_core.jobs import LAUNCHER_DIR, JobSpec, JobState, legacy_job_id_for

STATE_FILE = "state.sqlite"
# meta key saying the store's job ids include the job's position (jobs.job_id_for); stores
# without it were written by earlier versions, whose ids hashed the overrides only
JOB_IDS_META = "job_ids"
POSITION_IDS = "position"
_MAX_SQL_VARIABLES = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    overrides TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    state TEXT NOT NULL,
    handle TEXT,
    host TEXT,
    exit_reason TEXT,
    outcome TEXT,
    pull_mode TEXT,
    created_at REAL NOT NULL,
    submitted_at REAL,
    started_at REAL,
    finished_at REAL,
    pulled_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""
# submissions recorded before they are made (launcher_core.intents): key, the tag the backend
# finds them by, the handles their jobs will have; closed once recorded as jobs or looked up
_INTENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS submit_intents (
    key TEXT PRIMARY KEY,
    tag TEXT NOT NULL,
    launch_id TEXT NOT NULL,
    handles TEXT NOT NULL,
    created_at REAL NOT NULL,
    closed_at REAL
);
"""
# earlier attempts of retried jobs (the current attempt is the job's own row): see record_retries
_ATTEMPTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    submitted_at REAL,
    started_at REAL,
    ended_at REAL,
    ending TEXT,
    exit_reason TEXT,
    host TEXT,
    PRIMARY KEY (job_id, attempt)
);
"""
# jobs taken back from a queue to run elsewhere (the spill launcher's moves): recorded before the
# backend is asked to take the job back, closed with its outcome (see record_moves, finish_moves)
_MOVES_SCHEMA = """
CREATE TABLE IF NOT EXISTS moves (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    handle TEXT NOT NULL,
    place TEXT,
    created_at REAL NOT NULL,
    closed_at REAL,
    withdrawn INTEGER
);
"""
# columns added after the first release, with their types (see StateStore._add_missing_columns)
_OPTIONAL_COLUMNS = {
    "outcome": "TEXT",
    "pull_mode": "TEXT",
    "cleaned_at": "REAL",
    "collected_at": "REAL",
    "launch_id": "TEXT",
    "attempt": "INTEGER",  # the current attempt's number (NULL: 1)
    "ending": "TEXT",  # how the current attempt ended (jobs.ending_label)
}


@dataclass
class JobRow:
    job_id: str
    idx: int
    overrides: list[str]
    output_dir: Path
    state: JobState
    handle: dict[str, Any] | None
    host: str | None
    exit_reason: str | None
    outcome: JobState | None  # completed/failed/cancelled, kept once the job is pulled
    pull_mode: str | None  # "full", or "bare" when large files were skipped
    created_at: float
    submitted_at: float | None
    started_at: float | None
    finished_at: float | None
    pulled_at: float | None
    cleaned_at: float | None = None  # backend-side files deleted (``launcher-core clean``)
    # the launch that started the job ended normally (returned its result to Hydra, or, with
    # wait=false, handed it to the pull daemon); None while a launch still owns the job
    collected_at: float | None = None
    launch_id: str | None = None  # the launching process that handed it to the backend
    attempt: int = 1  # the current attempt (earlier ones: StateStore.attempts)
    ending: str | None = None  # how it ended: "lost: node failure", "out of memory", ...

    @property
    def interrupted(self) -> bool:
        """Handed to a backend by a launch that did not end (killed, lost contact, disk full)."""
        return self.submitted_at is not None and self.collected_at is None

    @property
    def duration_s(self) -> float | None:
        start = self.started_at or self.submitted_at
        if start is None:
            return None
        end = self.finished_at or (None if not self.state.is_terminal else self.pulled_at)
        return (end or time.time()) - start


@dataclass(frozen=True)
class AttemptRow:
    """An earlier attempt of a job that was run again (the job's row is its latest attempt)."""

    job_id: str
    attempt: int
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    ending: str | None  # "lost: node failure", "out of memory", ...
    exit_reason: str | None
    host: str | None  # where it ran

    def describe(self) -> str:
        """``attempt 1 lost: node failure``."""
        return f"attempt {self.attempt} {self.ending or 'ended'}"


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
    else:
        # autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE in _tx()
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _create_private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 before SQLite opens it (SQLite would use the umask)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


class StateStore:
    """State of one sweep: meta data and one row per job."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if not readonly:
            _private_dir(path.parent)
            if not path.exists():
                _create_private_file(path)
        self._conn = _connect(path, readonly=readonly)
        if not readonly:
            self._conn.executescript(_SCHEMA)
            self._conn.executescript(_INTENTS_SCHEMA)
            self._add_missing_columns()
            self._conn.executescript(_ATTEMPTS_SCHEMA)
            self._conn.executescript(_MOVES_SCHEMA)

    def _add_missing_columns(self) -> None:
        """Upgrade a store written by an older version: add columns it does not have yet."""
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for name, sql_type in _OPTIONAL_COLUMNS.items():
            if name not in have:
                with self._tx() as cur:  # one transaction: a kill in between leaves neither
                    cur.execute(f"ALTER TABLE jobs ADD COLUMN {name} {sql_type}")
                    if name == "collected_at":  # launches of older versions all count as ended
                        cur.execute("UPDATE jobs SET collected_at=updated_at WHERE submitted_at IS NOT NULL")

    @classmethod
    def for_sweep_dir(cls, sweep_dir: Path, readonly: bool = False) -> StateStore:
        return cls(Path(sweep_dir) / LAUNCHER_DIR / STATE_FILE, readonly=readonly)

    @staticmethod
    def exists_in(sweep_dir: Path) -> bool:
        return (Path(sweep_dir) / LAUNCHER_DIR / STATE_FILE).exists()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()

    # --- meta -------------------------------------------------------------------------------
    def set_meta(self, values: Mapping[str, Any]) -> None:
        with self._tx() as cur:
            cur.executemany(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def meta(self) -> dict[str, Any]:
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        return {k: json.loads(v) for k, v in rows}

    # --- jobs -------------------------------------------------------------------------------
    def adopt_earlier_ids(self, sweep_id: str, specs: Sequence[JobSpec]) -> None:
        """Give each spec the id its job already has in a store written by an earlier version.

        Earlier versions keyed a job by its overrides alone (:func:`~launcher_core.jobs.legacy_job_id_for`).
        A job of such a store keeps its row (and its handle on the backend, whose files and
        markers are named by that id) when it is at the same position with the same overrides;
        every other job, the repeats of a config included, gets a position id. A store that has
        no jobs yet is marked as using position ids, so this costs nothing on later launches.
        """
        if self.meta().get(JOB_IDS_META) == POSITION_IDS:
            return
        if self._conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is None:
            self.set_meta({JOB_IDS_META: POSITION_IDS})
            return
        by_legacy_id: dict[str, list[JobSpec]] = {}
        for spec in specs:
            by_legacy_id.setdefault(legacy_job_id_for(sweep_id, spec.overrides), []).append(spec)
        for row in self.jobs(job_ids=list(by_legacy_id)):
            for spec in by_legacy_id[row.job_id]:
                if spec.idx == row.idx and spec.overrides == row.overrides:
                    spec.job_id = row.job_id

    def add_jobs(self, specs: Sequence[JobSpec]) -> None:
        """Insert jobs as pending; jobs already known keep their state (relaunch)."""
        now = time.time()
        with self._tx() as cur:
            cur.executemany(
                "INSERT INTO jobs(job_id, idx, overrides, output_dir, state, created_at, "
                "updated_at) VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "idx=excluded.idx, output_dir=excluded.output_dir "
                "WHERE jobs.state IN ('pending', 'cancelled', 'failed')",
                [
                    (
                        s.job_id,
                        s.idx,
                        json.dumps(s.overrides),
                        str(s.output_dir),
                        JobState.PENDING.value,
                        now,
                        now,
                    )
                    for s in specs
                ],
            )

    def reset_to_pending(self, job_ids: Iterable[str]) -> None:
        now = time.time()
        with self._tx() as cur:
            cur.executemany(
                "UPDATE jobs SET state='pending', handle=NULL, host=NULL, exit_reason=NULL, "
                "outcome=NULL, ending=NULL, pull_mode=NULL, cleaned_at=NULL, collected_at=NULL, launch_id=NULL, "
                "submitted_at=NULL, started_at=NULL, finished_at=NULL, pulled_at=NULL, "
                "updated_at=? WHERE job_id=?",
                [(now, j) for j in job_ids],
            )

    def mark_collected(self, job_ids: Iterable[str]) -> None:
        """The launch owning these jobs ended normally (see :attr:`JobRow.interrupted`)."""
        now = time.time()
        with self._tx() as cur:
            cur.executemany(
                "UPDATE jobs SET collected_at=?, updated_at=? WHERE job_id=?", [(now, now, j) for j in job_ids]
            )

    def mark_submitted(self, handles: Mapping[str, Handle], launch_id: str | None = None) -> None:
        """Record the jobs as submitted with their handles (a backend's handle class, or plain
        JSON dicts as a backend without one returns them), as the JSON the store keeps."""
        now = time.time()
        rows = []
        for job_id, h in handles.items():
            handle = as_job_handle(h)
            rows.append((json.dumps(handle.to_json()), handle.host_label(), now, launch_id, now, job_id))
        with self._tx() as cur:
            cur.executemany(
                "UPDATE jobs SET state='submitted', handle=?, host=?, submitted_at=?, launch_id=?, updated_at=? "
                "WHERE job_id=?",
                rows,
            )

    def interrupted_launches(self) -> set[str]:
        """Launching processes that handed jobs to a backend and did not end normally: all their
        jobs (of every batch of that multirun) belong to a launch a relaunch resumes."""
        rows = self._conn.execute(
            "SELECT DISTINCT launch_id FROM jobs WHERE submitted_at IS NOT NULL AND collected_at IS NULL "
            "AND launch_id IS NOT NULL"
        ).fetchall()
        return {r[0] for r in rows}

    def update_states(
        self,
        updates: Mapping[str, tuple[JobState, str | None]],
        host: Mapping[str, str] | None = None,
        endings: Mapping[str, str] | None = None,
    ) -> None:
        """Record new states (and how terminal ones ended, :func:`~launcher_core.jobs.ending_label`);
        sets started/finished timestamps on the transitions."""
        now = time.time()
        rows = []
        for job_id, (state, reason) in updates.items():
            rows.append(
                (
                    state.value,
                    reason,
                    (endings or {}).get(job_id),
                    state.value if state.is_terminal and state is not JobState.PULLED else None,
                    now if state is JobState.RUNNING else None,
                    now if state.is_terminal else None,
                    now if state is JobState.PULLED else None,
                    (host or {}).get(job_id),
                    now,
                    job_id,
                )
            )
        with self._tx() as cur:
            cur.executemany(
                "UPDATE jobs SET state=?, exit_reason=COALESCE(?, exit_reason), ending=COALESCE(?, ending), "
                "outcome=COALESCE(?, outcome), "
                "started_at=COALESCE(started_at, ?), finished_at=COALESCE(finished_at, ?), "
                "pulled_at=COALESCE(?, pulled_at), host=COALESCE(?, host), updated_at=? "
                "WHERE job_id=?",
                rows,
            )

    def jobs(self, states: Iterable[JobState] | None = None, job_ids: Iterable[str] | None = None) -> list[JobRow]:
        """Rows ordered by job number, optionally only some states and/or some job ids."""
        if job_ids is None:
            return self._select(states, None)
        ids = list(job_ids)
        rows: list[JobRow] = []
        for start in range(0, len(ids), _MAX_SQL_VARIABLES):  # SQLite caps bound variables
            rows.extend(self._select(states, ids[start : start + _MAX_SQL_VARIABLES]))
        rows.sort(key=lambda r: r.idx)
        return rows

    def _select(self, states: Iterable[JobState] | None, ids: list[str] | None) -> list[JobRow]:
        sql = "SELECT * FROM jobs"
        params: list[Any] = []
        clauses = []
        if states is not None:
            values = [s.value for s in states]
            clauses.append(f"state IN ({','.join('?' * len(values))})")
            params.extend(values)
        if ids is not None:
            clauses.append(f"job_id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY idx"
        cur = self._conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [_row_to_job(dict(zip(names, r))) for r in cur.fetchall()]

    def mark_pulled(self, job_ids: Iterable[str], mode: str = "full") -> None:
        """Record that the files of these finished jobs are in the local sweep dir."""
        now = time.time()
        with self._tx() as cur:
            cur.executemany(
                "UPDATE jobs SET state='pulled', pull_mode=?, pulled_at=?, updated_at=?, "
                "outcome=COALESCE(outcome, state) WHERE job_id=?",
                [(mode, now, now, j) for j in job_ids],
            )

    def mark_cleaned(self, job_ids: Iterable[str]) -> None:
        """Record that the backend-side files of these pulled jobs were deleted.

        Called only after the deletion was confirmed, so a kill in between leaves the job
        unmarked (the next clean deletes nothing and marks it), never marked with files left.
        """
        now = time.time()
        with self._tx() as cur:
            cur.executemany(
                "UPDATE jobs SET cleaned_at=?, updated_at=? WHERE job_id=? AND state='pulled'",
                [(now, now, j) for j in job_ids],
            )

    def set_exit_reasons(self, reasons: Mapping[str, str]) -> None:
        """Replace exit reasons, e.g. with the exception line once a failed job's result is read."""
        if not reasons:
            return
        with self._tx() as cur:
            cur.executemany("UPDATE jobs SET exit_reason=? WHERE job_id=?", [(r, j) for j, r in reasons.items()])

    # --- attempts (jobs lost to the machine run again) ----------------------------------------
    def record_retries(
        self,
        handles: Mapping[str, Handle],
        ended: Mapping[str, tuple[str | None, str | None, str | None]],
        launch_id: str | None = None,
    ) -> None:
        """Jobs whose attempt ended (``ended``: how, why, where) were submitted again: in one
        transaction, each ended attempt becomes a row of ``attempts`` and the job's own row the
        new attempt, submitted with ``handles``. A kill before this leaves the job as it was."""
        now = time.time()
        with self._tx() as cur:
            cur.executemany(
                "UPDATE jobs SET ending=?, exit_reason=COALESCE(?, exit_reason), host=COALESCE(?, host), "
                "finished_at=? WHERE job_id=?",
                [(*ended.get(j, (None, None, None)), now, j) for j in handles],
            )
            self._archive_attempts(cur, list(handles))
            cur.executemany(
                "UPDATE jobs SET state='submitted', handle=?, host=?, submitted_at=?, started_at=NULL, "
                "finished_at=NULL, exit_reason=NULL, outcome=NULL, ending=NULL, launch_id=?, updated_at=? "
                "WHERE job_id=?",
                [
                    (json.dumps(handle_json(h)), as_job_handle(h).host_label(), now, launch_id, now, j)
                    for j, h in handles.items()
                ],
            )

    def begin_new_attempts(self, job_ids: Iterable[str]) -> None:
        """A relaunch starts jobs whose last attempt was lost again: that attempt is kept as a
        row of ``attempts`` and the job's next start counts as the next attempt."""
        with self._tx() as cur:
            self._archive_attempts(cur, list(job_ids))

    @staticmethod
    def _archive_attempts(cur: sqlite3.Cursor, job_ids: list[str]) -> None:
        cur.executemany(
            "INSERT OR REPLACE INTO attempts(job_id, attempt, submitted_at, started_at, ended_at, ending, "
            "exit_reason, host) SELECT job_id, COALESCE(attempt, 1), submitted_at, started_at, "
            "COALESCE(finished_at, updated_at), ending, exit_reason, host FROM jobs WHERE job_id=?",
            [(j,) for j in job_ids],
        )
        cur.executemany("UPDATE jobs SET attempt=COALESCE(attempt, 1) + 1 WHERE job_id=?", [(j,) for j in job_ids])

    def attempts(self, job_ids: Iterable[str] | None = None) -> dict[str, list[AttemptRow]]:
        """The earlier attempts of retried jobs, by job, oldest first (a store written before
        attempts were kept has none)."""
        try:
            rows = self._conn.execute(
                "SELECT job_id, attempt, submitted_at, started_at, ended_at, ending, exit_reason, host "
                "FROM attempts ORDER BY job_id, attempt"
            ).fetchall()
        except sqlite3.OperationalError:  # an older store opened read-only: no such table
            return {}
        wanted = None if job_ids is None else set(job_ids)
        out: dict[str, list[AttemptRow]] = {}
        for row in rows:
            if wanted is None or row[0] in wanted:
                out.setdefault(row[0], []).append(AttemptRow(*row))
        return out

    def counts(self) -> dict[JobState, int]:
        rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {JobState(s): n for s, n in rows}

    # --- moves (jobs taken back from a queue to run elsewhere) -------------------------------------
    def record_moves(self, handles: Mapping[str, Handle]) -> None:
        """Before a backend is asked to take these queued jobs back: a relaunch after a kill at any
        later point finishes the withdrawal (:meth:`open_moves`) before it submits anything."""
        now = time.time()
        rows = []
        for job_id, h in handles.items():
            handle = as_job_handle(h)
            rows.append((job_id, json.dumps(handle.to_json()), handle.describe() or handle.host_label(), now))
        with self._tx() as cur:
            cur.executemany("INSERT INTO moves(job_id, handle, place, created_at) VALUES(?, ?, ?, ?)", rows)

    def open_moves(self) -> dict[str, dict[str, Any]]:
        """Withdrawals begun and not finished: job id -> the handle it had."""
        try:
            rows = self._conn.execute("SELECT job_id, handle FROM moves WHERE closed_at IS NULL ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # an older store opened read-only: no such table
            return {}
        return {job_id: json.loads(handle) for job_id, handle in rows}

    def finish_moves(self, job_ids: Iterable[str], withdrawn: Iterable[str]) -> None:
        """In one transaction: the open moves of ``job_ids`` are closed; the ``withdrawn`` jobs (gone
        from their queue without having started) are pending again with no handle, so the next
        submission of them goes through the intents as a first one; the others keep running where
        they are."""
        back = set(withdrawn)
        ids = list(job_ids)
        now = time.time()
        with self._tx() as cur:
            cur.executemany(
                "UPDATE moves SET closed_at=?, withdrawn=? WHERE job_id=? AND closed_at IS NULL",
                [(now, int(j in back), j) for j in ids],
            )
            cur.executemany(
                "UPDATE jobs SET state='pending', handle=NULL, host=NULL, submitted_at=NULL, started_at=NULL, "
                "launch_id=NULL, updated_at=? WHERE job_id=?",
                [(now, j) for j in ids if j in back],
            )

    def moves(self) -> dict[str, list[str]]:
        """Where each moved job was taken back from, oldest first."""
        try:
            rows = self._conn.execute("SELECT job_id, place FROM moves WHERE withdrawn=1 ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            return {}
        out: dict[str, list[str]] = {}
        for job_id, place in rows:
            out.setdefault(job_id, []).append(place or "?")
        return out

    # --- submission intents (launcher_core.intents) ----------------------------------------------
    def record_intent(self, intent: SubmitIntent) -> None:
        """Record a submission before it is made (one transaction: there, or not at all); a key
        used again (the same jobs submitted again after a resume) opens its intent again."""
        now = time.time()
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO submit_intents(key, tag, launch_id, handles, created_at) VALUES(?, ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET tag=excluded.tag, launch_id=excluded.launch_id, "
                "handles=excluded.handles, created_at=excluded.created_at, closed_at=NULL",
                (intent.key, intent.tag, intent.launch_id, _handles_json(intent.handles), intent.created_at or now),
            )

    def open_intents(self) -> list[SubmitIntent]:
        """Recorded submissions not closed yet, oldest first."""
        rows = self._conn.execute(
            "SELECT key, tag, launch_id, handles, created_at FROM submit_intents WHERE closed_at IS NULL "
            "ORDER BY created_at"
        ).fetchall()
        return [SubmitIntent(k, t, json.loads(h), launch_id=lid, created_at=c) for k, t, lid, h, c in rows]

    def close_intents(self, keys: Iterable[str]) -> None:
        """These submissions are settled: their jobs are recorded, or the backend was asked."""
        now = time.time()
        with self._tx() as cur:
            cur.executemany("UPDATE submit_intents SET closed_at=? WHERE key=?", [(now, k) for k in keys])


def _row_to_job(r: dict[str, Any]) -> JobRow:
    return JobRow(
        job_id=r["job_id"],
        idx=r["idx"],
        overrides=json.loads(r["overrides"]),
        output_dir=Path(r["output_dir"]),
        state=JobState(r["state"]),
        handle=json.loads(r["handle"]) if r["handle"] else None,
        host=r["host"],
        exit_reason=r["exit_reason"],
        outcome=JobState(r["outcome"]) if r["outcome"] else None,
        pull_mode=r["pull_mode"],
        created_at=r["created_at"],
        submitted_at=r["submitted_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        pulled_at=r["pulled_at"],
        cleaned_at=r.get("cleaned_at"),  # absent in a store of an older version opened read-only
        collected_at=r.get("collected_at", r["updated_at"]),  # older versions: every launch ended
        launch_id=r.get("launch_id"),
        attempt=r.get("attempt") or 1,
        ending=r.get("ending"),
    )


# --- user-level index of sweeps ------------------------------------------------------------
def launcher_home() -> Path:
    """Where the index of known sweeps lives (``HYDRA_REMOTE_LAUNCHER_HOME`` overrides)."""
    env = os.environ.get("HYDRA_REMOTE_LAUNCHER_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hydra-remote-launcher"


class SweepIndex:
    """Index sweep id -> sweep dir, so ``pull`` and ``list`` find every sweep ever launched."""

    def __init__(self, home: Path | None = None) -> None:
        home = home or launcher_home()
        _private_dir(home)
        path = home / "sweeps.sqlite"
        if not path.exists():
            _create_private_file(path)
        self._conn = _connect(path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS sweeps (sweep_id TEXT PRIMARY KEY, sweep_dir TEXT NOT NULL,"
            " backend TEXT NOT NULL, launched_at REAL NOT NULL)"
        )

    def register(self, sweep_id: str, sweep_dir: Path, backend: str) -> None:
        self._conn.execute(
            "INSERT INTO sweeps VALUES(?, ?, ?, ?) ON CONFLICT(sweep_id) DO UPDATE SET "
            "sweep_dir=excluded.sweep_dir, backend=excluded.backend",
            (sweep_id, str(sweep_dir), backend, time.time()),
        )

    def sweeps(self) -> list[tuple[str, Path, str, float]]:
        rows = self._conn.execute(
            "SELECT sweep_id, sweep_dir, backend, launched_at FROM sweeps ORDER BY launched_at DESC"
        ).fetchall()
        return [(s, Path(d), b, t) for s, d, b, t in rows]

    def close(self) -> None:
        self._conn.close()


def _handles_json(handles: Mapping[str, Handle]) -> str:
    """Handles (a backend's classes or plain JSON dicts) as the JSON text the store keeps."""
    return json.dumps({job_id: handle_json(h) for job_id, h in handles.items()})
