"""The machine-wide GPU locks (``launcher_core/runtime/gpus.py``) on real files and processes:
exclusive and shared claims, a lock that dies with the process holding it (``kill -9``
included), a lock dir another user shares, and the refusals that name what is wrong.
Nothing is mocked (no GPU is needed: a lock is a file)."""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from launcher_core.runtime import gpus as gpu_locks
from tests.gpu_standin import install_nvidia_smi


def _hold_in_child(directory: Path, ids: list[int], wanted: int, per_gpu: int = 1, uid: int | None = None) -> int:
    """A child process that claims GPUs and sleeps holding them; its pid, once it holds them."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            if uid is not None:
                os.setgid(pwd.getpwuid(uid).pw_gid)
                os.setuid(uid)
            claim = gpu_locks.claim(directory, ids, wanted, per_gpu)
            os.write(write_end, ("ok" + ",".join(map(str, claim.ids)) if claim else "none").encode())
            os.close(write_end)
            time.sleep(60)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    answer = os.read(read_end, 100).decode()
    os.close(read_end)
    assert answer.startswith("ok"), f"the child got no GPU ({answer or 'it failed'})"
    return pid


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_claims_are_lowest_first_whole_or_nothing_and_exclusive(tmp_path: Path) -> None:
    d = gpu_locks.lock_dir(str(tmp_path / "locks"))
    first = gpu_locks.claim(d, [0, 1, 2, 3], 3)
    assert first is not None and first.ids == [0, 1, 2]
    pinned = os.open(d, os.O_RDONLY)
    try:  # the dir itself is held shared while GPUs are (systemd-tmpfiles' age clean-up skips it)
        with pytest.raises(BlockingIOError):
            fcntl.flock(pinned, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(pinned)
    assert gpu_locks.claim(d, [0, 1, 2, 3], 2) is None  # only GPU 3 is free: nothing partial is held
    second = gpu_locks.claim(d, [0, 1, 2, 3], 1)
    assert second is not None and second.ids == [3]
    empty = gpu_locks.claim(d, [0, 1, 2, 3], 0)
    assert empty is not None and empty.ids == []  # a CPU job of a GPU sweep: sees no GPU
    first.release()
    again = gpu_locks.claim(d, [0, 1, 2, 3], 3)
    assert again is not None and again.ids == [0, 1, 2]


def test_a_lock_dies_with_the_process_holding_it(tmp_path: Path) -> None:
    d = gpu_locks.lock_dir(str(tmp_path / "locks"))
    holder = _hold_in_child(d, [0, 1], 2)
    try:
        assert gpu_locks.claim(d, [0, 1], 1) is None
    finally:
        _kill(holder)  # kill -9: no clean-up code runs
    after = gpu_locks.claim(d, [0, 1], 2)
    assert after is not None and after.ids == [0, 1]


def test_jobs_per_gpu_shares_up_to_n_and_never_with_an_exclusive_job(tmp_path: Path) -> None:
    d = gpu_locks.lock_dir(str(tmp_path / "locks"))
    a = gpu_locks.claim(d, [0], 1, jobs_per_gpu=2)
    b = gpu_locks.claim(d, [0], 1, jobs_per_gpu=2)
    assert a is not None and b is not None and a.ids == b.ids == [0]
    assert gpu_locks.claim(d, [0], 1, jobs_per_gpu=2) is None  # a third would exceed 2
    assert gpu_locks.claim(d, [0], 1) is None  # an exclusive job never joins sharers
    a.release()
    b.release()
    exclusive = gpu_locks.claim(d, [0], 1)
    assert exclusive is not None
    assert gpu_locks.claim(d, [0], 1, jobs_per_gpu=2) is None  # nor sharers an exclusive job


def test_another_user_sees_the_same_locks(request: pytest.FixtureRequest) -> None:
    """The default dir's rule: sticky and world-writable, lock files world-readable, so a sweep of
    another user on this machine (remote_ssh logging in as someone else) is held off as well."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    nobody = pwd.getpwnam("nobody").pw_uid
    base = Path(tempfile.mkdtemp(prefix="hrl-gpu-locks-", dir="/tmp"))  # pytest's tmp is root-only
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    base.chmod(0o755)
    d = gpu_locks.lock_dir(str(base / "shared"))
    assert d.stat().st_mode & 0o7777 == 0o1777
    mine = gpu_locks.claim(d, [0, 1], 1)  # this user creates gpu-0 (with the runner's umask 077 too)
    old = os.umask(0o077)
    try:
        assert mine is not None and mine.ids == [0]
        theirs = _hold_in_child(d, [0, 1], 1, uid=nobody)  # opens our gpu-0, takes and creates gpu-1
    finally:
        os.umask(old)
    try:
        assert gpu_locks.claim(d, [0, 1], 1) is None
        assert (d / "gpu-1").stat().st_uid == nobody and (d / "gpu-1").stat().st_mode & 0o777 == 0o644
    finally:
        _kill(theirs)
        mine.release()


def test_an_unusable_lock_dir_is_refused_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(gpu_locks.GpuLockError, match="is not a directory"):
        gpu_locks.lock_dir(str(tmp_path / "file"))
    if os.geteuid() == 0:
        return  # root may write anywhere: the permission refusal cannot be shown as root
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o555)
    with pytest.raises(gpu_locks.GpuLockError, match="gpu_lock_dir"):
        gpu_locks.lock_dir(str(closed))


def test_visible_env_and_nvidia_smi_listing(tmp_path: Path) -> None:
    assert gpu_locks.visible_env([2, 3]) == {
        "CUDA_VISIBLE_DEVICES": "2,3",
        "NVIDIA_VISIBLE_DEVICES": "2,3",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    assert gpu_locks.visible_env([])["NVIDIA_VISIBLE_DEVICES"] == "none"
    smi = install_nvidia_smi(tmp_path / "bin", 3)  # stands in for a GPU driver (none here)
    assert gpu_locks.list_gpus(str(smi)) == [0, 1, 2]
    with pytest.raises(FileNotFoundError):
        gpu_locks.list_gpus(str(tmp_path / "missing" / "nvidia-smi"))


def test_the_longest_waiter_gets_the_next_free_gpu(tmp_path: Path) -> None:
    """Two sweeps on one GPU: the one that just freed it does not take it again while the other
    waits; it goes behind it, and a waiter that died is skipped."""
    d = gpu_locks.lock_dir(str(tmp_path / "locks"))
    a_line, b_line = gpu_locks.GpuLine(d, [0]), gpu_locks.GpuLine(d, [0])
    a = gpu_locks.claim(d, [0], 1, line=a_line)
    assert a is not None
    assert gpu_locks.claim(d, [0], 1, line=b_line) is None  # b waits in line now
    a.release()
    assert gpu_locks.claim(d, [0], 1, line=a_line) is None  # a's next job: b was first
    b = gpu_locks.claim(d, [0], 1, line=b_line)
    assert b is not None and b.ids == [0]
    b.release()
    a_again = gpu_locks.claim(d, [0], 1, line=a_line)  # a has waited longest now
    assert a_again is not None
    a_again.release()
    dead = _hold_line_in_child(d)
    _kill(dead)
    assert gpu_locks.claim(d, [0], 1, line=a_line) is not None  # a dead waiter holds nobody back


def _hold_line_in_child(directory: Path) -> int:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            gpu_locks.GpuLine(directory, [0]).join()
            os.write(write_end, b"ok")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 2) == b"ok"
    os.close(read_end)
    return pid


def test_a_waiter_for_other_gpus_holds_nobody_back(tmp_path: Path) -> None:
    """Two sweeps splitting a machine (gpus [0] and [1]): one waiting for its GPU never keeps the
    other from its own."""
    d = gpu_locks.lock_dir(str(tmp_path / "locks"))
    b_line = gpu_locks.GpuLine(d, [1])
    b = gpu_locks.claim(d, [1], 1, line=b_line)
    assert b is not None and gpu_locks.claim(d, [1], 1, line=b_line) is None  # b waits for GPU 1
    a_line = gpu_locks.GpuLine(d, [0])
    first = gpu_locks.claim(d, [0], 1, line=a_line)
    assert first is not None
    first.release()
    assert gpu_locks.claim(d, [0], 1, line=a_line) is not None


def test_a_place_in_line_is_not_inherited_by_a_forked_job(tmp_path: Path) -> None:
    """A launcher in line forks a job (of 0 GPUs) and is killed: its place goes with it."""
    d = gpu_locks.lock_dir(str(tmp_path / "locks"))
    line = gpu_locks.GpuLine(d, [0])
    line.join()
    other = gpu_locks.GpuLine(d, [0])
    assert other.ahead()
    child = _hold_in_child(d, [0, 1], 0)  # forked while in line, runs on
    try:
        assert line._fd is not None
        os.close(line._fd)  # the launcher's own descriptor gone, as with kill -9
        assert not other.ahead()  # the forked job does not hold the place
    finally:
        _kill(child)


def test_a_forked_child_keeps_a_descriptor_that_reused_the_number_of_a_closed_place_in_line(tmp_path: Path) -> None:
    """The place in line's descriptor closed behind its back (as the test above does) and its
    number reused by a pipe: a process forked later keeps the pipe (the line's fork hook closed
    it in the child, and a local_pool job died at its first line)."""
    d = gpu_locks.lock_dir(str(tmp_path / "locks"))
    line = gpu_locks.GpuLine(d, [0])
    line.join()
    assert line._fd is not None
    os.close(line._fd)
    read_end, write_end = os.pipe()  # the lowest free numbers: one is the line's old one
    try:
        assert line._fd in (read_end, write_end)
        pid = os.fork()
        if pid == 0:
            try:
                os.fstat(read_end)
                os.fstat(write_end)
                os._exit(0)
            finally:
                os._exit(1)
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # both ends still open in the child
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_runner_refuses_an_unusable_lock_dir_before_accepting_jobs(tmp_path: Path) -> None:
    """remote_ssh's runner on a host: a ``gpu_lock_dir`` it cannot use is an error for the
    launcher, before any job of the batch is accepted."""
    import json
    import subprocess
    import sys

    (tmp_path / "not-a-dir").write_text("")
    batch = {"gpus": 2, "gpu_lock_dir": str(tmp_path / "not-a-dir"), "batch_dir": str(tmp_path / "b")}
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(batch))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "launcher_core.runtime.runner", str(path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.startswith("gpu_lock_dir: the GPU lock dir") and "is not a directory" in proc.stderr
    assert not (tmp_path / "b").exists()  # nothing accepted
