"""The backend contract suite: the behavioural tests every backend passes, importable.

Test code only (it imports pytest). A backend, built in or living in another package, gets every
test by subclassing :class:`BackendContract` in one of its test modules and providing one
fixture, ``contract_target``, that returns a :class:`Target`::

    from launcher_core.contract import BackendContract, Target, files_under

    class PbsTarget(Target):          # how to look at the backend's side
        def outputs(self, handle): ...
        def job_leftovers(self, handle): ...
        def sweep_leftovers(self, handle): ...

    class TestPbsContract(BackendContract):
        @pytest.fixture
        def contract_target(self, contract_project, contract_name):
            settings = PbsSettings.from_mapping({...})
            return PbsTarget("pbs", "pbs", contract_project, remote_copy=True,
                             builder=lambda task, context: PbsBackend(settings, task_function=task))

What the backend author provides, in the :class:`Target`:

* ``backend_name``: the name its descriptor is registered under (a process that rebuilds the
  backend from its ``stored_config()`` finds it by that name, as the pull daemon does);
* ``builder(task_function, hydra_context)``: the backend as its Hydra launcher builds it, ready
  to ``prepare`` a sweep whose code dir is ``project`` (:attr:`BackendContract.contract_project`,
  also the test's cwd; ``contract_name`` is a name unique to the test, for remote dirs);
* ``remote_copy``: whether the jobs' files live elsewhere than the local sweep dir until fetched;
  then ``outputs``, ``job_leftovers`` and ``sweep_leftovers`` say what is on the backend side,
  and ``settle`` waits until nothing writes there any more;
* ``still_running`` (default: whether the task's own process is alive) and ``after_stop``:
  how to see that a cancelled job really stopped, and what to end by hand afterwards;
* ``forks_from_here``: jobs are forked from the test process (pytest's capture is suspended
  around ``submit`` and ``poll``, so the jobs get real stdout/stderr).

What the suite checks, driving the backend directly through the contract (no Hydra launcher,
no controller in between; job specs built as the controller builds them, the task
:func:`contract_task` shipped by value):

1. submit, poll until terminal, fetch: the result comes home with local paths (``JobReturn``'s
   ``working_dir`` and ``hydra.runtime.output_dir``), with the job's files, logs and Hydra's
   ``.hydra/``; a remote backend has no local result before the fetch; fetch is safe to repeat;
2. a failing task is FAILED with an exit reason, its exception (the original type) and its
   traceback come home, and so does what it wrote before failing;
3. cancel stops a running job on the backend side (and a backend that reads live logs shows
   them while the job runs);
4. a bare pull (``PullFilter``) skips big files but brings every ``.launcher/`` file whole; a
   full pull after it brings the rest;
5. handles are JSON and survive a new process: another process rebuilds the backend from its
   ``stored_config()`` through the registry and polls and fetches (a detached backend's jobs run
   on after the launching backend is closed);
6. ``clean`` deletes the backend-side files of fetched jobs (and, given every job of the sweep,
   the sweep-level leftovers), never the local copy, and is safe to repeat; a backend without
   remote copies says so and deletes nothing.

A behaviour a backend genuinely does not have (no backend-side copy to pull bare) is skipped
with the reason. Every wait is bounded; jobs not seen terminal are cancelled at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hydra.core.utils import JobStatus as HydraJobStatus
from omegaconf import DictConfig

from launcher_core.backends import Backend
from launcher_core.backends.base import JobHandle, handle_json
from launcher_core.jobs import (
    LAUNCHER_DIR,
    RESULT_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    JobSpec,
    JobState,
    JobStatus,
    PullFilter,
    SweepInfo,
)
from launcher_core.runtime.worker import load_job_return

POLL_S = 0.2  # pause between two polls of a bounded wait loop
JOB_TIMEOUT_S = 120.0  # bound of every wait for a job (instances boot, schedulers schedule)
MAX_POLLS = int(JOB_TIMEOUT_S / POLL_S) + 50  # ... and the same bound in number of polls
BARE_LIMIT = 100 * 1024  # PullFilter.max_size_bytes of the bare pulls
BLOB_KB = 400  # big.bin: skipped by a bare pull
LOG_KB = 160  # what the task prints: its stdout.log is larger than BARE_LIMIT, and must come anyway


# --- the task -----------------------------------------------------------------------------------
def contract_task(cfg: DictConfig) -> dict[str, Any]:
    """The task of every test (pickled by value for the remote backends: imports stay inside).

    Writes ``out.txt`` (and ``big.bin`` of ``blob_kb`` KB) into its output dir, prints ``log_kb``
    KB and a last line to stdout, records its PID in ``pid_file``; then raises (``mode=raise``)
    or sleeps ``seconds`` and returns ``{"x", "square", "cwd"}``.
    """
    import hashlib as _hashlib
    import os as _os
    import time as _time
    from pathlib import Path as _Path

    from hydra.core.hydra_config import HydraConfig

    out = _Path(HydraConfig.get().runtime.output_dir)
    if cfg.pid_file:
        tmp = _Path(f"{cfg.pid_file}.tmp")
        tmp.write_text(f"{_os.getpid()}\n")
        tmp.rename(cfg.pid_file)
    (out / "out.txt").write_text(f"x={cfg.x}\n")
    if cfg.blob_kb:
        seed = _hashlib.sha256(str(cfg.x).encode()).digest()
        (out / "big.bin").write_bytes(seed * (32 * int(cfg.blob_kb)))
    line = "." * 1023
    for _ in range(int(cfg.log_kb)):
        print(line)
    print(f"end of log x={cfg.x}", flush=True)
    if cfg.mode == "raise":
        raise ValueError(f"contract failure x={cfg.x}")
    if cfg.seconds:
        _time.sleep(float(cfg.seconds))
    return {"x": cfg.x, "square": cfg.x * cfg.x, "cwd": _os.getcwd()}


def blob_sha256(x: int, kb: int) -> str:
    """Checksum of the ``big.bin`` that :func:`contract_task` writes for ``x``."""
    seed = hashlib.sha256(str(x).encode()).digest()
    return hashlib.sha256(seed * (32 * kb)).hexdigest()


APP_CONFIG: dict[str, Any] = {
    "x": 0,
    "mode": "ok",
    "seconds": 0,
    "blob_kb": 0,
    "log_kb": 0,
    "pid_file": "",
    "hydra": {"job": {"chdir": True}},  # JobReturn.working_dir is the job's output dir
}


# --- processes ----------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a slow PID 1 may reap late)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    match = re.search(r"^State:\s+(\S)", status, re.M)
    return bool(match) and match.group(1) not in ("Z", "X")


_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _subreaper_flag() -> int | None:
    """This process's PR_SET_CHILD_SUBREAPER flag (a backend's ``prepare`` may set it), None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    flag = ctypes.c_int(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
        return None
    return int(flag.value)


def _set_subreaper_flag(value: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, value, 0, 0, 0)


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = JOB_TIMEOUT_S) -> Any:
    """``check()`` until truthy (returned); bounded in time and in number of calls."""
    deadline = time.monotonic() + timeout_s
    value = None
    for _ in range(int(timeout_s / POLL_S) + 50):
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    raise AssertionError(f"{what}: not reached after {timeout_s:g} s (last: {value!r})")


def wait_until_empty(check: Callable[[], list[str]], timeout_s: float = 60.0) -> list[str]:
    """``check()`` until it returns an empty list (returned) or ``timeout_s`` passed (the last list)."""
    deadline = time.monotonic() + timeout_s
    left = check()
    for _ in range(int(timeout_s / POLL_S) + 50):
        if not left or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
        left = check()
    return left


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def files_under(root: Path) -> dict[str, int]:
    """Every file below ``root``: path relative to it -> size (empty when ``root`` is no dir)."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


# --- the backend under test ----------------------------------------------------------------------
@dataclass
class Target:
    """One backend under test: how to build it for submitting, and how to inspect its side.

    ``remote_copy``: the backend keeps the job files somewhere else than the local sweep dir
    (so ``fetch`` transfers files, ``PullFilter`` and ``clean`` mean something); such a target
    overrides :meth:`outputs`, :meth:`job_leftovers` and :meth:`sweep_leftovers`.
    """

    key: str  # the label in messages (the parametrization id)
    backend_name: str  # the name launcher_core.backends.backend_from_config knows
    project: Path  # the code dir (and cwd of the test)
    remote_copy: bool
    builder: Callable[[Any, Any], Backend]  # (task_function, hydra_context) -> a backend that can submit
    # jobs are forked from this process and inherit its sys.stdout/sys.stderr, which pytest's
    # capture replaces by its own: the capture is suspended while such a backend runs jobs
    forks_from_here: bool = False

    def build(self, task_function: Any, hydra_context: Any) -> Backend:
        return self.builder(task_function, hydra_context)

    def still_running(self, handle: Mapping[str, Any], pid: int) -> list[str]:
        """What of the job still runs on the backend side (empty: it was really stopped)."""
        return [f"the task's process {pid} is alive"] if pid_alive(pid) else []

    def outputs(self, handle: Mapping[str, Any]) -> dict[str, int]:
        """Backend-side files of the job's output dir: path relative to it -> size."""
        raise NotImplementedError(f"{self.key} keeps no backend-side copy")

    def job_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        """Everything the backend still keeps for this job (dirs, object keys)."""
        raise NotImplementedError(f"{self.key} keeps no backend-side copy")

    def sweep_leftovers(self, handle: Mapping[str, Any]) -> list[str]:
        """Sweep-level leftovers on the backend side (remote sweep dir, snapshots, payloads)."""
        raise NotImplementedError(f"{self.key} keeps no backend-side copy")

    def settle(self) -> None:
        """Wait until nothing on the backend side writes files of finished jobs any more."""

    def after_stop(self, pid: int) -> None:
        """After a cancel was checked: what the simulated backend side cannot do itself."""


# --- one sweep on one backend ---------------------------------------------------------------------
@dataclass
class Sweep:
    """A prepared backend of one test's sweep and the Hydra app its job specs come from."""

    target: Target
    backend: Backend
    info: SweepInfo
    master: DictConfig
    context: Any
    pid_dir: Path
    handles: dict[str, dict[str, Any]] = field(default_factory=dict)
    terminal: set[str] = field(default_factory=set)
    closed: bool = False
    capture: Any = None  # pytest's capture manager, for backends that fork jobs from this process

    def job_stdio(self) -> contextlib.AbstractContextManager[None]:
        """Around calls that may start jobs: jobs forked from here get the real stdout/stderr
        (fds 1 and 2, which the backend points at the job's logs), not pytest's capture."""
        return self.capture.global_and_fixture_disabled() if self.capture else contextlib.nullcontext()

    @property
    def label(self) -> str:
        return self.target.key

    def specs(self, *jobs: Mapping[str, Any]) -> list[JobSpec]:
        """Job specs as the controller builds them: each job's overrides of :data:`APP_CONFIG`."""
        from launcher_core.controller import build_job_specs

        overrides = [[f"{k}={v}" for k, v in job.items()] for job in jobs]
        return build_job_specs(
            composer=self.info.composer, sweep_id=self.info.sweep_id, job_overrides=overrides, initial_job_idx=0
        )

    def submit(self, specs: Sequence[JobSpec]) -> dict[str, dict[str, Any]]:
        """Submit; the handles as the state store gives them back (JSON), which is how every
        other process sees them."""
        with self.job_stdio():
            submitted = self.backend.submit(specs)
        handles = {job_id: json.loads(json.dumps(handle_json(h))) for job_id, h in submitted.items()}
        for job_id, h in submitted.items():
            if isinstance(h, JobHandle):  # a handle class reads its own JSON back unchanged
                again = type(h).from_json(handles[job_id])
                assert again == h and again.to_json() == handles[job_id], f"{self.label}: {h} does not round-trip"
        self.handles.update(handles)
        assert set(handles) == {s.job_id for s in specs}, f"{self.label}: submit returned handles of {set(handles)}"
        return handles

    def poll_until_terminal(self, handles: Mapping[str, dict[str, Any]]) -> dict[str, JobStatus]:
        """Poll until every job is terminal; bounded in time and number of polls."""
        statuses: dict[str, JobStatus] = {}
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for _ in range(MAX_POLLS):
            statuses.update(self.poll(handles))
            if len(statuses) == len(handles) and all(s.state.is_terminal for s in statuses.values()):
                self.terminal |= set(handles)
                return statuses
            if time.monotonic() > deadline:
                break
            self.backend.wait(POLL_S)
        shown = {j: (s.state.value, s.exit_reason) for j, s in statuses.items()}
        raise AssertionError(f"{self.label}: jobs not terminal after {JOB_TIMEOUT_S:g} s: {shown}")

    def poll(self, handles: Mapping[str, dict[str, Any]]) -> Mapping[str, JobStatus]:
        with self.job_stdio():  # a backend may start queued jobs in poll
            return self.backend.poll(handles)

    def pid_file(self, x: int) -> Path:
        return self.pid_dir / f"pid-{x}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backend.close()

    def rebuilt(self) -> Backend:
        """The backend rebuilt from its stored config, as another process rebuilds it."""
        from launcher_core.backends import backend_from_config

        return backend_from_config(self.target.backend_name, self.backend.stored_config())


@contextlib.contextmanager
def prepared_sweep(target: Target, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sweep]:
    """The target's backend, built like its Hydra launcher builds it, and prepared for a sweep dir
    inside the code dir; every job not seen terminal is cancelled at the end."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import HydraContext, RunMode

    from launcher_core.controller import sweep_id_for
    from launcher_core.runtime.compose import composer_for

    monkeypatch.chdir(target.project)
    sweep_dir = target.project / "multirun" / "contract"
    pid_dir = Path(tempfile.mkdtemp(prefix="hrl-contract-"))
    os.chmod(pid_dir, 0o777)  # jobs that run as other users (a test sshd's) write their PIDs here
    ConfigStore.instance().store(name="contract", node=APP_CONFIG)
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="contract", config_search_path=create_config_search_path(None))
    master = hydra.compose_config("contract", overrides=[f"hydra.sweep.dir={sweep_dir}"], run_mode=RunMode.MULTIRUN)
    HydraConfig.instance().set_config(master)
    context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(master))
    info = SweepInfo(sweep_id_for(sweep_dir), sweep_dir, target.project, str(master.hydra.job.name))
    info.composer = composer_for(context, master)
    sweep_dir.mkdir(parents=True)

    subreaper = _subreaper_flag()
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the task travels by value, as a script's __main__
    backend = target.build(contract_task, context)
    current = Sweep(target, backend, info, master, context, pid_dir)
    if target.forks_from_here:
        current.capture = request.config.pluginmanager.getplugin("capturemanager")
    try:
        backend.prepare(info)
        yield current
    finally:
        try:
            _cancel_the_rest(current)
        finally:
            cloudpickle.unregister_pickle_by_value(module)
            GlobalHydra.instance().clear()
            shutil.rmtree(pid_dir, ignore_errors=True)
            if subreaper is not None:
                _set_subreaper_flag(subreaper)  # a backend may have made this process a subreaper


def _cancel_the_rest(current: Sweep) -> None:
    left = {j: h for j, h in current.handles.items() if j not in current.terminal}
    if left:
        with contextlib.suppress(Exception):
            backend = current.rebuilt() if current.closed else current.backend
            backend.cancel(left)
            if backend is not current.backend:
                backend.close()
    current.close()
    for pid_file in current.pid_dir.glob("pid-*"):
        pid = read_pid(pid_file)
        if pid is not None:
            current.target.after_stop(pid)


# --- helpers for the assertions ------------------------------------------------------------------
def result_of(spec: JobSpec) -> Any:
    assert spec.result_path.is_file(), f"no {spec.result_path}: the result did not come home"
    return load_job_return(spec.result_path)


def assert_local_paths(label: str, ret: Any, spec: JobSpec) -> None:
    """The JobReturn speaks of the local output dir, as after a local run (chdir=True)."""
    local = str(spec.output_dir)
    paths = {
        "working_dir": ret.working_dir,
        "hydra_cfg.hydra.runtime.output_dir": ret.hydra_cfg.hydra.runtime.output_dir,
    }
    wrong = [f"JobReturn.{name} is {value!r}" for name, value in paths.items() if value != local]
    assert not wrong, f"{label}: {'; '.join(wrong)}; expected the local output dir {local!r}"


def skip_without_remote_copy(target: Target, what: str) -> None:
    if not target.remote_copy:
        pytest.skip(f"{target.key} keeps no backend-side copy (jobs write into the local sweep dir): no {what}")


REBUILD_AND_COLLECT = """
import json, sys, time
from pathlib import Path

from launcher_core.backends import backend_from_config

args = json.loads(sys.stdin.read())
backend = backend_from_config(args["backend"], args["config"])
statuses = {}
try:
    handles = args["handles"]
    deadline = time.monotonic() + args["timeout_s"]
    for _ in range(args["max_polls"]):
        statuses.update(backend.poll(handles))
        if len(statuses) == len(handles) and all(s.state.is_terminal for s in statuses.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(args["poll_s"])
    done = {j: h for j, h in handles.items() if j in statuses and statuses[j].state.is_terminal}
    backend.fetch(done, {j: Path(args["local_dirs"][j]) for j in done})
finally:
    backend.close()
print("CONTRACT-RESULT " + json.dumps({j: [s.state.value, s.exit_reason] for j, s in statuses.items()}))
"""


def collect_in_another_process(sweep: Sweep, specs: Sequence[JobSpec], handles: Mapping[str, Any]) -> dict:
    """Rebuild the backend from its stored config in a new Python process (the registry finds it
    by name there, as in the pull daemon), poll the jobs until terminal and fetch them; returns
    ``{job_id: [state, exit reason]}`` as that process saw them."""
    payload = json.dumps(
        {
            "backend": sweep.target.backend_name,
            "config": sweep.backend.stored_config(),
            "handles": handles,
            "local_dirs": {s.job_id: str(s.output_dir) for s in specs},
            "timeout_s": JOB_TIMEOUT_S,
            "max_polls": MAX_POLLS,
            "poll_s": POLL_S,
        }
    )
    detached = sweep.backend.detached
    if detached:
        sweep.close()  # the launching process is gone: its jobs run on without it
    with subprocess.Popen(
        [sys.executable, "-c", REBUILD_AND_COLLECT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=sweep.info.sweep_dir.parent,
        env=dict(os.environ),
    ) as proc:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
        deadline = time.monotonic() + JOB_TIMEOUT_S + 60
        for _ in range(MAX_POLLS + 300):  # not detached: this process must reap its own job processes
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            if not detached:
                sweep.poll(handles)
            time.sleep(POLL_S)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.stdout.read() if proc.stdout else "", proc.stderr.read() if proc.stderr else ""
        proc.wait(timeout=30)
    assert proc.returncode == 0, f"{sweep.label}: the other process failed ({proc.returncode}):\n{err[-3000:]}"
    lines = [ln for ln in out.splitlines() if ln.startswith("CONTRACT-RESULT ")]
    assert lines, f"{sweep.label}: no result line from the other process:\n{out[-2000:]}\n{err[-2000:]}"
    return json.loads(lines[-1].removeprefix("CONTRACT-RESULT "))


# --- the suite -------------------------------------------------------------------------------------
class BackendContract:
    """Every behavioural test of the contract; subclass it and provide ``contract_target``."""

    @pytest.fixture
    def contract_target(self) -> Target:
        """The backend under test: a subclass overrides this fixture (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must provide a contract_target fixture")

    @pytest.fixture
    def contract_project(self, tmp_path: Path) -> Path:
        """The code dir of the test's sweep (an empty project but for a README)."""
        project = tmp_path / "proj"
        project.mkdir()
        (project / "README.txt").write_text("the code dir of the backend contract tests\n")
        return project

    @pytest.fixture
    def contract_name(self, request: pytest.FixtureRequest) -> str:
        """A name of this test alone (remote dirs of its own: the claim of a remote sweep dir is per sweep)."""
        tag = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
        callspec = getattr(request.node, "callspec", None)
        return f"contract-{callspec.id}-{tag}" if callspec is not None else f"contract-{tag}"

    @pytest.fixture
    def contract_sweep(
        self,
        contract_target: Target,
        request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch,
        hydra_restore_singletons: None,
    ) -> Iterator[Sweep]:
        with prepared_sweep(contract_target, request, monkeypatch) as sweep:
            yield sweep

    # --- 1. submit -> poll -> fetch ----------------------------------------------------------------
    def test_submit_poll_fetch_brings_the_result_home_with_local_paths(self, contract_sweep: Sweep) -> None:
        sweep = contract_sweep
        (spec,) = sweep.specs({"x": 7})
        handles = sweep.submit([spec])
        statuses = sweep.poll_until_terminal(handles)
        assert statuses[spec.job_id].state is JobState.COMPLETED, f"{sweep.label}: {statuses[spec.job_id]}"
        if sweep.target.remote_copy:
            assert not spec.result_path.exists(), f"{sweep.label}: result.pkl is local before any fetch"

        sweep.backend.fetch(handles, {spec.job_id: spec.output_dir})

        ret = result_of(spec)
        assert ret.status is HydraJobStatus.COMPLETED
        assert ret.return_value["x"] == 7 and ret.return_value["square"] == 49
        assert (spec.output_dir / "out.txt").read_text() == "x=7\n"
        assert "end of log x=7" in (spec.launcher_dir / STDOUT_FILE).read_text()
        assert (spec.output_dir / ".hydra" / "config.yaml").is_file()  # Hydra's own layout
        assert spec.output_dir.is_relative_to(sweep.info.sweep_dir)
        assert_local_paths(sweep.label, ret, spec)
        assert list(ret.overrides) == ["x=7"]

        sweep.backend.fetch(handles, {spec.job_id: spec.output_dir})  # safe to repeat
        assert result_of(spec).return_value["square"] == 49

    # --- 2. a failing task ---------------------------------------------------------------------------
    def test_failing_task_is_reported_failed_and_its_exception_comes_home(self, contract_sweep: Sweep) -> None:
        sweep = contract_sweep
        ok, bad = sweep.specs({"x": 1}, {"x": 2, "mode": "raise"})
        handles = sweep.submit([ok, bad])
        statuses = sweep.poll_until_terminal(handles)
        assert statuses[ok.job_id].state is JobState.COMPLETED, f"{sweep.label}: {statuses[ok.job_id]}"
        failed = statuses[bad.job_id]
        assert failed.state is JobState.FAILED, f"{sweep.label}: {failed}"
        assert failed.exit_reason and failed.exit_reason.strip(), f"{sweep.label}: FAILED without an exit reason"

        sweep.backend.fetch(handles, {ok.job_id: ok.output_dir, bad.job_id: bad.output_dir})

        assert result_of(ok).return_value["x"] == 1
        ret = result_of(bad)
        assert ret.status is HydraJobStatus.FAILED
        assert isinstance(ret._return_value, ValueError), f"{sweep.label}: {ret._return_value!r}"
        with pytest.raises(ValueError, match="contract failure x=2"):
            _ = ret.return_value
        assert "ValueError: contract failure x=2" in (bad.launcher_dir / STDERR_FILE).read_text()
        assert (bad.output_dir / "out.txt").read_text() == "x=2\n"  # what it wrote before failing came home too

    # --- 3. cancel -----------------------------------------------------------------------------------
    def test_cancel_stops_a_running_job_on_the_backend(self, contract_sweep: Sweep) -> None:
        sweep = contract_sweep
        pid_file = sweep.pid_file(5)
        (spec,) = sweep.specs({"x": 5, "seconds": 300, "pid_file": pid_file})
        handles = sweep.submit([spec])

        def started() -> int | None:
            pid = read_pid(pid_file)
            if pid is None:
                status = sweep.poll(handles).get(spec.job_id)
                assert status is None or not status.state.is_terminal, f"{sweep.label}: ended before it ran: {status}"
            return pid

        pid = wait_until(f"{sweep.label}: the job to start (its PID in {pid_file})", started)
        assert pid_alive(pid)
        running = sweep.poll(handles).get(spec.job_id)
        assert running is None or running.state.is_active, f"{sweep.label}: a running job polled as {running}"
        read_log = sweep.backend.read_log
        if read_log(handles[spec.job_id], "stdout", 0) is not None:  # a backend that reads live logs
            live = wait_until(
                f"{sweep.label}: the live stdout of the running job",
                lambda: b"end of log x=5" in (read_log(handles[spec.job_id], "stdout", 0) or b""),
            )
            assert live

        sweep.backend.cancel(handles)

        statuses = sweep.poll_until_terminal(handles)
        state = statuses[spec.job_id].state
        assert state in (JobState.CANCELLED, JobState.FAILED), f"{sweep.label}: a cancelled job polled as {state}"
        left = wait_until_empty(lambda: sweep.target.still_running(handles[spec.job_id], pid))
        sweep.target.after_stop(pid)
        assert left == [], f"{sweep.label}: still running after cancel: {left}"
        assert not spec.result_path.exists() or load_job_return(spec.result_path).status is not HydraJobStatus.COMPLETED

    # --- 4. bare pull, then full pull ----------------------------------------------------------------
    def test_bare_pull_skips_big_files_but_brings_every_launcher_file_then_full_pull(
        self, contract_sweep: Sweep
    ) -> None:
        sweep = contract_sweep
        skip_without_remote_copy(sweep.target, "bare pull")
        (spec,) = sweep.specs({"x": 3, "blob_kb": BLOB_KB, "log_kb": LOG_KB})
        handles = sweep.submit([spec])
        statuses = sweep.poll_until_terminal(handles)
        assert statuses[spec.job_id].state is JobState.COMPLETED, f"{sweep.label}: {statuses[spec.job_id]}"
        sweep.target.settle()
        remote = sweep.target.outputs(handles[spec.job_id])
        assert remote.get("big.bin") == BLOB_KB * 1024, f"{sweep.label}: backend-side files {remote}"
        assert remote.get(f"{LAUNCHER_DIR}/{STDOUT_FILE}", 0) > BARE_LIMIT, (
            f"{sweep.label}: backend-side files {remote}"
        )

        sweep.backend.fetch(handles, {spec.job_id: spec.output_dir}, PullFilter(max_size_bytes=BARE_LIMIT))

        assert not (spec.output_dir / "big.bin").exists(), f"{sweep.label}: a bare pull brought the {BLOB_KB} KB file"
        assert (spec.output_dir / "out.txt").read_text() == "x=3\n"  # small outputs do come
        missing = [n for n in (RESULT_FILE, STDOUT_FILE, STDERR_FILE) if not (spec.launcher_dir / n).is_file()]
        assert missing == [], (
            f"{sweep.label}: a bare pull (max_size_bytes={BARE_LIMIT}) left out the launcher files {missing} "
            f"(backend side: {sorted(k for k in remote if k.startswith(LAUNCHER_DIR + '/'))})"
        )
        for name in (STDOUT_FILE, STDERR_FILE):
            local_size = (spec.launcher_dir / name).stat().st_size
            assert local_size == remote[f"{LAUNCHER_DIR}/{name}"], f"{sweep.label}: {name} incomplete after a bare pull"
        assert "end of log x=3" in (spec.launcher_dir / STDOUT_FILE).read_text()
        assert result_of(spec).return_value["square"] == 9

        sweep.backend.fetch(handles, {spec.job_id: spec.output_dir})

        big = spec.output_dir / "big.bin"
        assert big.is_file(), f"{sweep.label}: the full pull after a bare one did not bring big.bin"
        assert hashlib.sha256(big.read_bytes()).hexdigest() == blob_sha256(3, BLOB_KB)
        assert result_of(spec).return_value["square"] == 9

    # --- 5. handles survive a new process -------------------------------------------------------------
    def test_another_process_rebuilds_the_backend_from_its_stored_config_and_collects(
        self, contract_sweep: Sweep
    ) -> None:
        sweep = contract_sweep
        specs = sweep.specs({"x": 4, "seconds": 1}, {"x": 6, "mode": "raise"})
        handles = sweep.submit(specs)

        states = collect_in_another_process(sweep, specs, handles)

        ok, bad = specs
        sweep.terminal |= {j for j, (state, _r) in states.items() if JobState(state).is_terminal}
        assert states.get(ok.job_id, [None])[0] == JobState.COMPLETED.value, f"{sweep.label}: {states}"
        assert states.get(bad.job_id, [None])[0] == JobState.FAILED.value, f"{sweep.label}: {states}"
        assert states[bad.job_id][1], f"{sweep.label}: FAILED without an exit reason in the other process"
        ret = result_of(ok)  # the other process brought the files home
        assert ret.return_value["square"] == 16
        assert (ok.output_dir / "out.txt").read_text() == "x=4\n"
        assert_local_paths(sweep.label, ret, ok)
        assert result_of(bad).status is HydraJobStatus.FAILED
        assert "ValueError: contract failure x=6" in (bad.launcher_dir / STDERR_FILE).read_text()

    # --- 6. clean --------------------------------------------------------------------------------------
    def test_clean_removes_the_backend_side_files_of_fetched_jobs_and_is_safe_to_repeat(
        self, contract_sweep: Sweep
    ) -> None:
        sweep = contract_sweep
        (spec,) = sweep.specs({"x": 8, "blob_kb": 8})
        handles = sweep.submit([spec])
        statuses = sweep.poll_until_terminal(handles)
        assert statuses[spec.job_id].state is JobState.COMPLETED, f"{sweep.label}: {statuses[spec.job_id]}"
        sweep.backend.fetch(handles, {spec.job_id: spec.output_dir})
        assert result_of(spec).return_value["square"] == 64
        sweep.target.settle()
        sweep_id = sweep.info.sweep_id
        clean = sweep.backend.clean

        if not sweep.target.remote_copy:  # the sweep dir is the only copy: nothing may go
            report = clean(handles, sweep_id=sweep_id, sweep_handles=handles)
            assert report.nothing_to_clean, f"{sweep.label}: {report}"
            assert not report.cleaned and not report.errors
            assert result_of(spec).return_value["square"] == 64 and (spec.output_dir / "big.bin").is_file()
            return

        handle = handles[spec.job_id]
        assert sweep.target.job_leftovers(handle), f"{sweep.label}: no backend-side files to clean to begin with"
        assert sweep.target.sweep_leftovers(handle), f"{sweep.label}: no sweep-level backend-side files to begin with"

        report = clean(handles, sweep_id=sweep_id)

        assert report.errors == [], f"{sweep.label}: {report.errors}"
        assert report.cleaned == set(handles), f"{sweep.label}: cleaned {report.cleaned}, expected {set(handles)}"
        assert sweep.target.job_leftovers(handle) == [], f"{sweep.label}: job files left after clean"
        assert sweep.target.sweep_leftovers(handle), f"{sweep.label}: sweep-level files went with a job-level clean"
        assert result_of(spec).return_value["square"] == 64  # the local copy is untouched
        assert hashlib.sha256((spec.output_dir / "big.bin").read_bytes()).hexdigest() == blob_sha256(8, 8)

        again = clean(handles, sweep_id=sweep_id)  # safe to repeat

        assert again.errors == [], f"{sweep.label}: a repeated clean failed: {again.errors}"
        assert again.cleaned <= set(handles)
        assert sweep.target.job_leftovers(handle) == []

        whole = clean(handles, sweep_id=sweep_id, sweep_handles=handles)  # every job is clean: the sweep goes too

        assert whole.errors == [] and whole.sweep_cleaned, f"{sweep.label}: {whole}"
        left = sweep.target.sweep_leftovers(handle)
        assert left == [], f"{sweep.label}: sweep-level files left after the sweep clean: {left}"
        final = clean(handles, sweep_id=sweep_id, sweep_handles=handles)
        assert final.errors == [], f"{sweep.label}: {final.errors}"
        assert (spec.output_dir / "out.txt").read_text() == "x=8\n" and result_of(spec).return_value["x"] == 8

    # --- 7. withdraw -----------------------------------------------------------------------------------
    def test_withdraw_never_takes_back_a_job_that_started(self, contract_sweep: Sweep) -> None:
        """Whatever a backend can take back (``withdraw``; nothing by default), a job that runs is
        neither returned nor stopped, and asking again changes nothing."""
        sweep = contract_sweep
        pid_file = sweep.pid_file(9)
        (spec,) = sweep.specs({"x": 9, "seconds": 300, "pid_file": pid_file})
        handles = sweep.submit([spec])

        def started() -> int | None:
            pid = read_pid(pid_file)
            if pid is None:
                sweep.poll(handles)  # a backend may start queued jobs in poll
            return pid

        pid = wait_until(f"{sweep.label}: the job to start (its PID in {pid_file})", started)

        for _ in range(2):  # safe to repeat
            taken = sweep.backend.withdraw(handles)
            assert taken == set(), f"{sweep.label}: withdraw took back a running job: {taken}"
            assert pid_alive(pid), f"{sweep.label}: withdraw stopped a running job"
            status = sweep.poll(handles).get(spec.job_id)
            assert status is None or status.state.is_active, f"{sweep.label}: a job left running polled as {status}"
