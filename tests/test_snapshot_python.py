"""The code snapshot of local backends is made in Python (no rsync on a fresh Debian or macOS):
it holds what ``rsync -a`` with the same filters copied, links unchanged files to the previous
snapshot, stays private, and never uses a half-made snapshot. The README's example sweep runs
without rsync, and local_pool works without Linux's pidfds."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from launcher_core.remote.codesync import DEFAULT_EXCLUDES, RsyncFilter, excludes_for_local_outputs, filter_args
from launcher_core.snapshots import _FreezeWalk, freeze_code
from tests.conftest import REPO_ROOT

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="the comparison needs rsync (bash .ci/setup)")


def _write(root: Path, rel: str, text: str = "x\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_tree(root: Path) -> Path:
    """A code dir with what the default excludes are about, nested dirs, dotfiles, symlinks and
    names rsync's patterns could trip on."""
    for rel in [
        "train.py",
        ".env",
        ".hidden_config",
        "setup.cfg",
        "README.md",
        "pkg/__init__.py",
        "pkg/mod.py",
        "pkg/mod.pyc",
        "pkg/__pycache__/mod.cpython-311.pyc",
        "pkg/data/schema.json",  # only the top-level data/ is excluded
        "pkg/outputs/keep.py",
        "pkg/sub/deeper/deepest/leaf.py",
        "pkg/sub/.DS_Store",
        "pkg/sub/notes.log",
        "pkg/sub/weird [1] name.txt",
        "pkg/sub/star*.txt",
        "pkg/.ipynb_checkpoints/nb.ipynb",
        "data/train.csv",
        "data/small/keep.csv",
        "datasets/big.bin",
        "outputs/2024-01-01/run.log",
        "multirun/old/0/result.pkl",
        "wandb/run/files.txt",
        "lightning_logs/v0/events",
        ".venv/bin/python",
        "venv/lib/site.py",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        ".tox/py311/x",
        "node_modules/left-pad/index.js",
        "mypkg.egg-info/PKG-INFO",
        "secret/token.txt",
        "sweeps/mine/0/.launcher/result.pkl",  # this sweep's dir, inside the code dir
        "sweeps/other/kept.txt",
        "only_excluded/__pycache__/x.pyc",  # a dir that keeps nothing is still made
    ]:
        _write(root, rel, f"{rel}\n")
    (root / "empty_dir").mkdir()
    (root / "bin").mkdir()
    script = _write(root, "bin/run.sh", "#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.symlink("pkg/mod.py", root / "link_to_file")
    os.symlink("pkg", root / "link_to_dir")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("/etc/hostname", root / "absolute_link")
    os.symlink("pkg/sub", root / "wandb_link")
    os.symlink("/tmp", root / "lightning_logs_link")
    (root / "outputs_as_link_holder").mkdir()
    os.symlink("../data", root / "outputs_as_link_holder" / "data")  # a link named like a dir exclude
    os.symlink("pkg", root / "datasets_link")
    return root


def listing(root: Path) -> dict[str, tuple[str, str | int]]:
    """Every entry under ``root``: its kind and, for a file, its mode and mtime; for a link, its target."""
    out: dict[str, tuple[str, str | int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(stat.S_IMODE(st.st_mode)))
            else:
                out[rel] = ("file", f"{oct(stat.S_IMODE(st.st_mode))} {st.st_mtime_ns}")
    return out


def rsync_copy(src: Path, dest: Path, filters: Sequence[str]) -> None:
    """What freeze_code ran before it was written in Python."""
    argv = ["rsync", "-a", "--modify-window=-1", "--chmod=go-rwx", *filters, f"{src}/", f"{dest}/"]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@needs_rsync
def test_snapshot_holds_what_rsync_copies_with_the_default_excludes(tmp_path: Path) -> None:
    code = make_tree(tmp_path / "code")
    sweep_dir = code / "sweeps" / "mine"
    user_excludes = ("*.log", "secret/")
    snapshot = freeze_code(code, tmp_path / "snap", sweep_dir=sweep_dir, excludes=user_excludes)
    filters = filter_args((), (*DEFAULT_EXCLUDES, *user_excludes), excludes_for_local_outputs(code, sweep_dir))
    rsync_copy(code, tmp_path / "rsync", filters)

    ours, theirs = listing(snapshot), listing(tmp_path / "rsync")
    assert ours == theirs  # same entries, kinds, modes, nanosecond mtimes and link targets
    # the comparison is not vacuous: the tree has kept and left-out entries of every kind
    assert {"train.py", ".env", "pkg/data/schema.json", "sweeps/other/kept.txt", "empty_dir"} <= ours.keys()
    assert ours["link_to_dir"] == ("link", "pkg") and ours["wandb_link"] == ("link", "pkg/sub")
    assert ours["outputs_as_link_holder/data"] == ("link", "../data")
    assert "only_excluded" in ours and "only_excluded/__pycache__" not in ours
    left_out = ["data", "datasets", "outputs", "multirun", "wandb", "lightning_logs", ".venv", "venv", ".git"]
    left_out += ["node_modules", "mypkg.egg-info", "secret", "sweeps/mine", "pkg/__pycache__", "pkg/mod.pyc"]
    left_out += ["pkg/sub/notes.log", "pkg/sub/.DS_Store", "pkg/.ipynb_checkpoints", ".tox"]
    assert not [rel for rel in left_out if rel in ours]


@needs_rsync
@pytest.mark.parametrize(
    "include, exclude",
    [
        # bring part of an excluded top-level dir back, rsync's way (the dir, its part, then the rest out)
        (["/data/", "/data/small/***"], ["/data/*", *DEFAULT_EXCLUDES]),
        (["*.keep", "pkg/sub/**/leaf.py", "[ab]*"], ["pkg/sub/**", "*.txt", "/sweeps/", "link_*", ".*"]),
        (["**/mod.py"], ["pkg/*", "**/deeper/"]),
    ],
)
def test_the_walker_applies_includes_and_excludes_as_rsync_does(
    tmp_path: Path, include: list[str], exclude: list[str]
) -> None:
    code = make_tree(tmp_path / "code")
    _write(code, "pkg/sub/a.keep")
    _FreezeWalk(RsyncFilter(include, exclude), None).run(code, tmp_path / "ours")
    rsync_copy(code, tmp_path / "rsync", filter_args(include, exclude))
    ours = listing(tmp_path / "ours")
    assert ours == listing(tmp_path / "rsync")
    assert 5 < len(ours) < len(listing(code))  # some kept, some left out


def _files(snapshot: Path) -> dict[str, os.stat_result]:
    return {p.relative_to(snapshot).as_posix(): p.lstat() for p in snapshot.rglob("*") if p.is_file()}


def test_relaunch_links_unchanged_files_and_copies_one_edited_within_the_same_second(tmp_path: Path) -> None:
    code = tmp_path / "code"
    second_ns = 1_700_000_000 * 10**9
    for rel in ["app.py", "pkg/util.py", "pkg/helper.py"]:
        path = _write(code, rel, f"VALUE = 'v1 of {rel}'\n")
        os.utime(path, ns=(second_ns + 100, second_ns + 100))
    first = freeze_code(code, tmp_path / "s1", sweep_dir=tmp_path / "sweep")
    helper = code / "pkg" / "helper.py"
    helper.write_text(helper.read_text().replace("v1", "v2"))  # same size, same second
    os.utime(helper, ns=(second_ns + 200, second_ns + 200))
    second = freeze_code(code, tmp_path / "s2", sweep_dir=tmp_path / "sweep")

    before, after = _files(first), _files(second)
    assert before.keys() == after.keys() == {"app.py", "pkg/util.py", "pkg/helper.py"}
    assert after["app.py"].st_ino == before["app.py"].st_ino and after["app.py"].st_nlink == 2
    assert after["pkg/util.py"].st_ino == before["pkg/util.py"].st_ino
    assert after["pkg/helper.py"].st_ino != before["pkg/helper.py"].st_ino
    assert (second / "pkg/helper.py").read_text() == "VALUE = 'v2 of pkg/helper.py'\n"
    assert (first / "pkg/helper.py").read_text() == "VALUE = 'v1 of pkg/helper.py'\n"
    assert after["pkg/helper.py"].st_mtime_ns == second_ns + 200  # kept, so the next launch can link it
    # no snapshot file is the live file: editing the code dir in place never reaches a snapshot
    live = {rel: (code / rel).stat().st_ino for rel in after}
    assert not {rel for rel, st in after.items() if st.st_ino == live[rel]}
    third = freeze_code(code, tmp_path / "s3", sweep_dir=tmp_path / "sweep")
    assert _files(third)["pkg/helper.py"].st_ino == after["pkg/helper.py"].st_ino


def test_a_relaunch_of_the_same_snapshot_reuses_it(tmp_path: Path) -> None:
    code = tmp_path / "code"
    _write(code, "app.py", "A = 1\n")
    snap = freeze_code(code, tmp_path / "s1", sweep_dir=tmp_path / "sweep")
    _write(code, "app.py", "A = 2\n")
    assert freeze_code(code, tmp_path / "s1", sweep_dir=tmp_path / "sweep") == snap
    assert (snap / "app.py").read_text() == "A = 1\n"


def test_snapshot_is_private_and_keeps_the_owners_execute_bits(tmp_path: Path) -> None:
    code = tmp_path / "code"
    _write(code, "app.py").chmod(0o644)
    _write(code, "tools/run.sh").chmod(0o755)
    _write(code, "tools/shared.py").chmod(0o666)
    (code / "tools").chmod(0o755)
    (code / "readonly").mkdir()
    _write(code, "readonly/frozen.py").chmod(0o444)
    (code / "readonly").chmod(0o555)  # still written into, then made read-only like the source
    try:
        for n in (1, 2):  # copied, then linked
            snap = freeze_code(code, tmp_path / f"s{n}", sweep_dir=tmp_path / "sweep")
            modes = {rel: stat.S_IMODE(st.st_mode) for rel, st in _files(snap).items()}
            assert modes == {
                "app.py": 0o600,
                "tools/run.sh": 0o700,
                "tools/shared.py": 0o600,
                "readonly/frozen.py": 0o400,
            }
            dirs = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [snap, snap / "tools", snap / "readonly"]}
            assert dirs == {f"s{n}": 0o700, "tools": 0o700, "readonly": 0o500}
        assert (tmp_path / "s1/readonly/frozen.py").stat().st_ino == (tmp_path / "s2/readonly/frozen.py").stat().st_ino
    finally:
        for path in [code / "readonly", tmp_path / "s1" / "readonly", tmp_path / "s2" / "readonly"]:
            path.chmod(0o700)


def test_a_half_snapshot_of_a_killed_launch_is_never_used(tmp_path: Path) -> None:
    code = tmp_path / "code"
    _write(code, "app.py", "A = 1\n")
    _write(code, "lib.py", "B = 1\n")
    good = freeze_code(code, tmp_path / "s1", sweep_dir=tmp_path / "sweep")
    # a launch killed while freezing s2 left its .partial: a stray file, an old copy of app.py
    killed = tmp_path / "s2.partial"
    _write(killed, "stray.py", "STRAY = True\n")
    _write(killed, "app.py", "A = 0\n")
    (killed / "sub").mkdir()
    (killed / "sub").chmod(0o500)  # as a killed freeze leaves a read-only dir
    _write(code, "app.py", "A = 2\n")
    other = freeze_code(code, tmp_path / "s3", sweep_dir=tmp_path / "sweep")  # links to s1, not s2.partial
    assert (other / "lib.py").stat().st_ino == (good / "lib.py").stat().st_ino
    assert not (other / "stray.py").exists()
    # relaunching the killed launch rebuilds its snapshot from scratch
    rebuilt = freeze_code(code, tmp_path / "s2", sweep_dir=tmp_path / "sweep")
    assert sorted(p.name for p in rebuilt.iterdir()) == ["app.py", "lib.py"]
    assert (rebuilt / "app.py").read_text() == "A = 2\n"
    assert not killed.exists()


def test_a_freeze_that_fails_half_way_is_a_config_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from launcher_core import snapshots
    from launcher_core.errors import ConfigError

    code = tmp_path / "code"
    for n in range(5):
        _write(code, f"pkg/m{n}.py")
    copies: list[str] = []
    real_copyfile = shutil.copyfile

    def copy_until_the_disk_is_full(src: str, dst: str) -> None:
        if len(copies) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        copies.append(real_copyfile(src, dst))

    monkeypatch.setattr(snapshots.shutil, "copyfile", copy_until_the_disk_is_full)
    with pytest.raises(ConfigError, match="could not freeze the code dir .* No space left on device"):
        freeze_code(code, tmp_path / "s1", sweep_dir=tmp_path / "sweep")
    assert len(copies) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code"]  # no snapshot, no .partial
    with pytest.raises(ConfigError, match="could not freeze the code dir"):
        freeze_code(tmp_path / "missing", tmp_path / "s2", sweep_dir=tmp_path / "sweep")
    assert not (tmp_path / "s2").exists()


# --- the README's example sweep, on a machine without rsync ------------------------------------------
EXAMPLE_ARGS = [
    "-m",
    "+cluster=local",
    "hydra.sweeper.paired=[[model,data.aug]]",
    "model=cnn,transformer",
    "data.aug=basic,strong",
    "lr=1e-3,1e-2",
]


def test_readme_example_sweep_runs_with_no_rsync_on_path(tmp_path: Path) -> None:
    """PATH holds the venv's bin dir only: no rsync, no git, no shell tools, as on a fresh machine."""
    bin_dir = Path(sys.executable).parent
    assert shutil.which("rsync", path=str(bin_dir)) is None
    sweep_dir = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PATH"] = str(bin_dir)
    argv = [sys.executable, str(REPO_ROOT / "example_app" / "train.py"), *EXAMPLE_ARGS, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from launcher_core.runtime.worker import load_job_return

    metrics = [json.loads((sweep_dir / str(i) / "metrics.json").read_text()) for i in range(4)]
    assert [(m["lr"], m["model"], m["aug"]) for m in metrics] == [
        (1e-3, "cnn", "basic"),
        (1e-3, "transformer", "strong"),
        (1e-2, "cnn", "basic"),
        (1e-2, "transformer", "strong"),
    ]
    for i, m in enumerate(metrics):
        assert load_job_return(sweep_dir / str(i) / ".launcher" / "result.pkl").return_value == pytest.approx(m["loss"])
    # the jobs ran from a frozen snapshot made without rsync
    (snapshot,) = [p for p in (sweep_dir / ".launcher" / "code").iterdir() if p.is_dir()]
    assert (snapshot / "example_app" / "train.py").read_bytes() == (REPO_ROOT / "example_app" / "train.py").read_bytes()
    assert not (snapshot / ".git").exists() and not (snapshot / ".venv").exists()


# --- local_pool without pidfds (macOS, kernels before 5.3) -------------------------------------------
TASKS_APP = REPO_ROOT / "tests" / "apps" / "tasks.py"

# runs tasks.py as its __main__ in a process whose os module has no pidfd_open
NO_PIDFD = (
    "import os, runpy, sys\n"
    "del os.pidfd_open\n"
    "from launcher_core.backends.local_pool import backend as local_pool\n"
    "assert local_pool._open_pidfd(os.getpid()) is None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def test_local_pool_sweep_without_pidfds_completes_within_n_jobs(tmp_path: Path) -> None:
    record, sweep_dir = tmp_path / "record.txt", tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local_pool", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}"]
    args += ["x=1,2,3,4,5", "mode=sleep", "seconds=0.4", f"record={record}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    tic = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", NO_PIDFD, str(TASKS_APP), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - tic
    assert proc.returncode == 0, proc.stderr[-3000:]
    from launcher_core.runtime.worker import load_job_return

    assert [load_job_return(sweep_dir / str(i) / ".launcher" / "result.pkl").return_value for i in range(5)] == [
        10,
        20,
        30,
        40,
        50,
    ]
    spans = [tuple(float(v) for v in line.split()[1:3]) for line in record.read_text().splitlines()]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert len(spans) == 5 and peak == 2
    # each freed slot was refilled when its job ended, not at the next 1 s poll: the last of three
    # rounds of 0.4 s jobs ends well before three poll intervals
    ends = sorted(e for _, e in spans)
    starts = sorted(s for s, _ in spans)
    assert starts[2] - ends[0] < 0.5 and starts[4] - ends[2] < 0.5
    assert elapsed < 60


GRID_CONFIG_DIR = REPO_ROOT / "tests" / "apps" / "conf_grid"


def sleep_a_tenths(cfg: Any) -> int:
    time.sleep(cfg.a / 10)
    return int(cfg.a)


@pytest.fixture
def grid_app(tmp_path: Path, hydra_restore_singletons: None) -> Iterator[tuple[Any, Any]]:
    """The master config and Hydra context of tests/apps/conf_grid, composed in this process."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import HydraContext, RunMode

    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name="grid_app", config_search_path=create_config_search_path(str(GRID_CONFIG_DIR))
    )
    overrides = ["hydra.job.chdir=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    master = hydra.compose_config("config", overrides=overrides, run_mode=RunMode.MULTIRUN)
    yield master, HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))
    GlobalHydra.instance().clear()


def _one_job_pool(grid_app: Any, override: str) -> tuple[list[Any], Any]:
    """One job of tests/apps/conf_grid (``override``) and a prepared one-slot local_pool that
    runs :func:`sleep_a_tenths`, in this process."""
    from launcher_core.backends.local_pool import LocalPoolBackend
    from launcher_core.controller import build_job_specs
    from launcher_core.jobs import SweepInfo
    from launcher_core.runtime.compose import composer_for

    master, ctx = grid_app
    specs = build_job_specs(
        composer=composer_for(ctx, master), sweep_id="t", job_overrides=[[override]], initial_job_idx=0
    )
    backend = LocalPoolBackend(
        n_jobs=1, timeout_s=None, kill_grace_s=1.0, task_function=sleep_a_tenths, hydra_context=ctx
    )
    backend.prepare(SweepInfo("t", Path("."), Path("."), "grid_app"))
    return specs, backend


@pytest.mark.parametrize("with_poll", [True, False], ids=["poll", "select"])
def test_without_pidfds_wait_wakes_when_a_job_exits(
    grid_app: Any, monkeypatch: pytest.MonkeyPatch, with_poll: bool
) -> None:
    """The exit pipe, not a poll: wait() returns as the job ends, long before its timeout."""
    import select

    if not with_poll:
        monkeypatch.delattr(select, "poll")
    from launcher_core.jobs import JobState

    monkeypatch.delattr(os, "pidfd_open")
    specs, backend = _one_job_pool(grid_app, "a=3")
    try:
        handles = dict(backend.submit(specs))
        backend.poll(handles)  # starts the job
        (run,) = backend._running.values()
        assert run.wake_fd is not None  # its exit pipe
        woken = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tic = time.monotonic()
            backend.wait(30.0)
            woken.append(time.monotonic() - tic)
            status = backend.poll(handles)[specs[0].job_id]
            if status.state.is_terminal:
                break
    finally:
        backend.close()
    assert status.state is JobState.COMPLETED
    # woken by the exit, never at the 30 s timeout; then 10 ms polls until the ended job can be
    # reaped (a loaded machine may take a while to reap it), not a busy loop on its readable pipe
    assert woken[0] < 10 and len(woken) <= 100 and all(w > 0.001 for w in woken[1:]), woken
    assert load_result(specs[0].result_path) == 3


def load_result(path: Path) -> Any:
    from launcher_core.runtime.worker import load_job_return

    return load_job_return(path).return_value


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "exit-pipe"])
def test_a_job_child_that_fails_before_its_job_starts_never_returns_into_the_launcher(
    grid_app: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pidfds: bool
) -> None:
    """Whatever goes wrong in a forked job before the job's own code runs, the child exits: it
    never returns into the launching process's code (which would go on as a second launcher, or
    here as a second pytest running the rest of the suite)."""
    from launcher_core.backends import local_pool
    from launcher_core.jobs import JobState

    if not pidfds:
        monkeypatch.delattr(os, "pidfd_open")

    def broken_child_main(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the job's set-up failed")

    monkeypatch.setattr(local_pool.backend, "_child_main", broken_child_main)
    specs, backend = _one_job_pool(grid_app, "a=1")
    parent = os.getpid()
    after_fork = tmp_path / "after-fork"
    try:
        handles = dict(backend.submit(specs))
        backend.poll(handles)  # forks the job
        with open(after_fork, "a") as f:  # an escaped child would get here too
            f.write(f"{os.getpid()}\n")
        if os.getpid() != parent:
            os._exit(0)  # the escaped child of a broken build: end it, the parent's assertion fails
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            backend.wait(1.0)
            status = backend.poll(handles)[specs[0].job_id]
            if status.state.is_terminal:
                break
    finally:
        backend.close()
    assert status.state is not JobState.COMPLETED and status.state.is_terminal, status
    assert after_fork.read_text().split() == [str(parent)]


def test_process_start_time_without_proc_comes_from_ps(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no /proc: the start time that tells a job's process from a reused pid comes from
    ps(1) there. Checked here against /proc: the same moment, a zombie and a reaped pid count as gone."""
    from launcher_core.runtime import procs

    if shutil.which("ps") is None:
        pytest.skip("no ps on this machine")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        ticks = procs.process_start_time(child.pid)
        assert isinstance(ticks, int)
        boot = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime "))
        from_proc = boot + ticks / os.sysconf("SC_CLK_TCK")
        monkeypatch.setattr(procs, "_HAVE_PROC", False)
        from_ps = procs.process_start_time(child.pid)
        assert isinstance(from_ps, int) and abs(from_ps - from_proc) <= 2.5, (from_ps, from_proc)  # whole seconds
        assert procs.process_start_time(child.pid) == from_ps  # stable: a pid file can hold it
        assert procs.process_start_time(os.getpid()) != from_ps
        child.stdin.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while procs.process_start_time(child.pid) is not None:  # a zombie (not reaped yet) is gone
            assert time.monotonic() < deadline, "the ended child still counts as alive"
            time.sleep(0.05)
        assert child.poll() is not None or child.wait(5) == 0
        assert procs.process_start_time(child.pid) is None
    finally:
        child.kill()
        child.wait(5)
