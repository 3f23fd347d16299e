"""Typed job handles: each backend's handle class reads the JSON the state store kept before handles
were typed and writes it back byte for byte, the state store writes what it wrote then, and readers
outside a backend get their answers from the handle (or its descriptor), not from its keys.

The JSON below is what the backends' ``submit`` wrote before (key order included): the dicts
``local_pool``'s ``submit``, ``remote_ssh``'s ``_write_batch``, slurm's ``_handles`` and ec2's
``RunPlanner.handle`` built, as ``json.dumps`` stored them.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from launcher_core.backends.base import JobHandle, PlainHandle, RemoteJobPaths, as_job_handle, handle_json
from launcher_core.backends.ec2.handle import Ec2Handle
from launcher_core.backends.local_pool.handle import LocalPoolHandle
from launcher_core.backends.registry import describe_handle, descriptor, handle_of
from launcher_core.backends.remote_ssh.handle import RemoteSSHHandle
from launcher_core.backends.slurm.handle import SlurmHandle
from launcher_core.errors import BackendError
from launcher_core.jobs import LAUNCHER_DIR, JobSpec
from launcher_core.state import STATE_FILE, StateStore

LOCAL_POOL = '{"host": "localhost", "pid_file": "/w/multirun/0/.launcher/pid"}'
REMOTE_SSH = (
    '{"host": "alice@gpu1:2222", "remote_dir": "/home/alice/hrl/proj", '
    '"remote_sweep_dir": "/home/alice/hrl/proj/runs/multirun/s1", '
    '"remote_job_dir": "/home/alice/hrl/proj/runs/multirun/s1/3", "rel": "3", '
    '"launcher_dir": "/home/alice/hrl/proj/runs/multirun/s1/3/.launcher", '
    '"pid_file": "/home/alice/hrl/proj/runs/multirun/s1/3/.launcher/pid", '
    '"exit_file": "/home/alice/hrl/proj/runs/multirun/s1/3/.launcher/exit_status", '
    '"runner_pid_file": "/home/alice/hrl/proj/runs/multirun/s1/.launcher/remote_ssh/t1/batches/b1.runner.pid", '
    '"batch": "20260101-000000-abcdef12", "remote_cwd": "/home/alice/hrl/proj/snapshots/S1/t1", '
    '"local_cwd": "/w/proj", "local_sweep_dir": "/w/proj/multirun/s1"}'
)
REMOTE_SSH_NO_CWD = REMOTE_SSH.replace('"local_cwd": "/w/proj"', '"local_cwd": null')
SLURM = (
    '{"slurm_job_id": "4242_7", "array_job_id": "4242", "array_index": 7, "chunk_offset": 0, '
    '"launcher_dir": "/w/multirun/7/.launcher", "submitted_at": 1765000000.25, "timeout_min": 60}'
)
SLURM_PACKED = SLURM.replace('"timeout_min": 60}', '"timeout_min": 60, "packed": 50}')
SLURM_LOGIN = SLURM.replace(
    '"timeout_min": 60}',
    '"timeout_min": 60, "login_host": "bob@login.cluster", "rel": "7", '
    '"remote_sweep_dir": "/scratch/bob/hrl/proj/runs/multirun/s1", '
    '"remote_job_dir": "/scratch/bob/hrl/proj/runs/multirun/s1/7", '
    '"remote_cwd": "/scratch/bob/hrl/proj/snapshots/S1/t1", "local_cwd": "/w/proj", '
    '"local_sweep_dir": "/w/proj/multirun/s1"}',
)
SLURM_LOGIN_PACKED = SLURM_LOGIN.replace('"timeout_min": 60,', '"timeout_min": 60, "packed": 2,')
EC2 = (
    '{"instance_id": "i-0123456789abcdef0", "instance_type": "g5.xlarge", "host": "i-0123456789abcdef0", '
    '"sweep_id": "S1", "run": "r1", "group": "g0", "bucket": "my-bucket", "base": "sweeps/S1", '
    '"out_prefix": "sweeps/S1/runs/r1/jobs/j7/out/", "launched_at": 1765000000.5, '
    '"remote_job_dir": "/opt/hrl/sweep/7", "rel": "7", "remote_cwd": "/opt/hrl/code", '
    '"local_cwd": "/w/proj", "local_sweep_dir": "/w/proj/multirun/s1"}'
)
TODAY = [
    ("local_pool", LocalPoolHandle, LOCAL_POOL),
    ("remote_ssh", RemoteSSHHandle, REMOTE_SSH),
    ("remote_ssh", RemoteSSHHandle, REMOTE_SSH_NO_CWD),
    ("slurm", SlurmHandle, SLURM),
    ("slurm", SlurmHandle, SLURM_PACKED),
    ("slurm", SlurmHandle, SLURM_LOGIN),
    ("slurm", SlurmHandle, SLURM_LOGIN_PACKED),
    ("ec2", Ec2Handle, EC2),
]


@pytest.mark.parametrize(("backend", "cls", "text"), TODAY)
def test_stored_json_round_trips_byte_for_byte(backend: str, cls: type[JobHandle], text: str) -> None:
    handle = cls.from_json(json.loads(text))
    assert type(handle) is cls
    assert json.dumps(handle.to_json()) == text
    assert cls.of(json.loads(text)) == handle and cls.of(handle) is handle
    assert descriptor(backend).handle_type is cls
    assert descriptor(backend).handle(json.loads(text)) == handle


def _store_with(tmp_path: Path, handles: dict) -> list[tuple[str, str | None]]:
    """Mark jobs submitted with ``handles`` in a real state store: its raw (handle, host) columns."""
    sweep = tmp_path / "sweep"
    with StateStore.for_sweep_dir(sweep) as store:
        store.add_jobs([JobSpec(job_id, n, [f"x={n}"], sweep / str(n)) for n, job_id in enumerate(handles)])
        store.mark_submitted(handles)
        assert {r.job_id: r.handle for r in store.jobs()} == {j: handle_json(h) for j, h in handles.items()}
    with sqlite3.connect(sweep / LAUNCHER_DIR / STATE_FILE) as db:
        return db.execute("SELECT handle, host FROM jobs ORDER BY idx").fetchall()


def test_the_state_store_writes_what_it_wrote_before(tmp_path: Path) -> None:
    handles = {f"j{n}": cls.from_json(json.loads(text)) for n, (_b, cls, text) in enumerate(TODAY)}
    stored = _store_with(tmp_path, handles)
    hosts = ["localhost", "alice@gpu1:2222", "alice@gpu1:2222", None, None, None, None, "i-0123456789abcdef0"]
    assert stored == list(zip([text for _b, _c, text in TODAY], hosts))


def test_a_backend_returning_plain_dicts_is_stored_as_it_returned_them(tmp_path: Path) -> None:
    plain = {"pid": 4242, "start": 1765000000, "host": "node7", "remote_job_dir": "/far/sweep/0"}
    assert _store_with(tmp_path, {"j0": plain}) == [(json.dumps(plain), "node7")]
    handle = as_job_handle(plain)
    assert isinstance(handle, PlainHandle) and handle.to_json() == plain
    assert handle.host_label() == "node7" and handle.job_dir() == "/far/sweep/0" and handle.describe() is None


def test_unknown_keys_and_absent_defaults_survive_a_round_trip() -> None:
    newer = {**json.loads(SLURM), "intent": "abc"}
    assert json.dumps(SlurmHandle.from_json(newer).to_json()) == json.dumps(newer)
    older = {k: v for k, v in json.loads(SLURM).items() if k not in ("timeout_min", "submitted_at")}
    assert SlurmHandle.from_json(older).to_json() == older
    older_ec2 = {k: v for k, v in json.loads(EC2).items() if k != "launched_at"}
    assert list(Ec2Handle.from_json(older_ec2).to_json()) == list(older_ec2)


def test_a_handle_without_a_needed_key_is_refused_naming_it() -> None:
    broken = {k: v for k, v in json.loads(REMOTE_SSH).items() if k != "launcher_dir"}
    with pytest.raises(BackendError, match=r"RemoteSSHHandle needs the keys \['launcher_dir'\]"):
        RemoteSSHHandle.from_json(broken)


def test_typed_lists_every_handle_and_skips_jobs_without_one() -> None:
    typed = SlurmHandle.typed({"a": json.loads(SLURM), "b": {}, "c": SlurmHandle.from_json(json.loads(SLURM_PACKED))})
    assert list(typed) == ["a", "c"] and not typed["a"].is_packed and typed["c"].is_packed


def test_readers_ask_the_handle() -> None:
    slurm = SlurmHandle.from_json(json.loads(SLURM))
    assert (slurm.describe(), slurm.host_label(), slurm.remote_paths(), slurm.job_dir()) == ("4242_7", None, None, None)
    assert slurm.dependency_task() == "4242_7"
    login = SlurmHandle.from_json(json.loads(SLURM_LOGIN))
    assert login.job_dir() == "/scratch/bob/hrl/proj/runs/multirun/s1/7"
    assert login.remote_paths() == RemoteJobPaths(
        remote_sweep_dir="/scratch/bob/hrl/proj/runs/multirun/s1",
        remote_job_dir="/scratch/bob/hrl/proj/runs/multirun/s1/7",
        rel="7",
        remote_cwd="/scratch/bob/hrl/proj/snapshots/S1/t1",
        local_cwd="/w/proj",
        local_sweep_dir="/w/proj/multirun/s1",
    )
    ssh = RemoteSSHHandle.from_json(json.loads(REMOTE_SSH))
    assert (ssh.describe(), ssh.host_label()) == (None, "alice@gpu1:2222")
    paths = ssh.remote_paths()
    assert paths.remote_dir == "/home/alice/hrl/proj" and paths.rel == "3"
    ec2 = Ec2Handle.from_json(json.loads(EC2))
    assert (ec2.describe(), ec2.host_label(), ec2.job_dir()) == ("i-0123456789abcdef0",) * 2 + ("/opt/hrl/sweep/7",)
    local = LocalPoolHandle.from_json(json.loads(LOCAL_POOL))
    assert (local.describe(), local.host_label(), local.job_dir()) == (None, "localhost", None)


def test_the_registry_answers_from_stored_json() -> None:
    for backend, where in (("slurm", "4242_7"), ("ec2", "i-0123456789abcdef0"), ("local_pool", None)):
        stored = json.loads({"slurm": SLURM, "ec2": EC2, "local_pool": LOCAL_POOL}[backend])
        assert describe_handle({"backend": backend}, stored) == where
    assert describe_handle({"backend": "slurm"}, {}) is None  # a job not submitted: no handle
    assert handle_of({"backend": "remote_ssh"}, json.loads(REMOTE_SSH)).host_label() == "alice@gpu1:2222"
    assert handle_of({}, {"host": "h"}).host_label() == "h"  # a sweep of an unknown backend
    assert descriptor("slurm").dependency_task(json.loads(SLURM_PACKED)) == "4242_7"
    assert descriptor("remote_ssh").job_dir_where_it_ran(json.loads(REMOTE_SSH)).endswith("/runs/multirun/s1/3")
