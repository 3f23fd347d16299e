"""Instance agent of the ``ec2`` backend, started by the user-data: runs the instance's jobs,
syncs their output dirs to S3, writes their markers, then terminates the instance.
Standard library and boto3 only (it is embedded in the user-data).

Design: docs/ec2.md ("On the instance")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("hrl-agent")

IMDS_DEFAULT_ENDPOINT = "http://169.254.169.254/"
DONE, FAILED, RUNNING = "done", "failed", "running"
TICK_S = 0.2
# how a job stopped by a spot interruption notice is marked (the launcher takes it as lost)
SPOT_INTERRUPTION = "spot interruption"
# Temporary files of atomic writes (``.name.tmpPID``): never uploaded half written.
_TMP_FILE = re.compile(r"^\..+\.tmp\d+$")
_QUIET_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")
# What to check after setup_commands and before any job starts: the pre-flight's probe, its
# version rule (source), the launching machine's versions and the setup commands (for naming a
# failed one). Set in the shipped copy by launcher_core.backends.ec2.userdata; None: no check.
ENV_CHECK: dict[str, Any] | None = None
PROBE_TIMEOUT_S = 300.0


class Imds:
    """Minimal IMDSv2 client: a session token first, then every request carries it."""

    def __init__(self, endpoint: str | None = None, ttl_s: int = 21600, timeout_s: float = 2.0) -> None:
        base = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_DEFAULT_ENDPOINT
        self.endpoint = base.rstrip("/") + "/"
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._token_at = 0.0
        # IMDS is link-local: never send it through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _open(self, request: urllib.request.Request) -> str:
        with self._opener.open(request, timeout=self.timeout_s) as response:
            return response.read().decode()

    def token(self) -> str:
        if self._token is None or time.monotonic() - self._token_at > self.ttl_s / 2:
            request = urllib.request.Request(
                self.endpoint + "latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.ttl_s)},
            )
            self._token = self._open(request)
            self._token_at = time.monotonic()
        return self._token

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """IMDS may answer only a few seconds after boot: retry the token request (bounded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.token()
                return
            except (OSError, urllib.error.URLError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"instance metadata service at {self.endpoint} unreachable: {exc}") from exc
                time.sleep(1.0)

    def get(self, path: str, missing_ok: bool = False) -> str | None:
        for attempt in range(2):
            request = urllib.request.Request(
                self.endpoint + "latest/" + path, headers={"X-aws-ec2-metadata-token": self.token()}
            )
            try:
                return self._open(request)
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and missing_ok:
                    return None
                if exc.code == 401 and attempt == 0:  # token expired or revoked: get a new one
                    self._token = None
                    continue
                raise
        raise AssertionError("unreachable")


class Job:
    """One assigned job and what the agent knows about its process and synced files."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.job_id: str = spec["job_id"]
        self.idx: int = int(spec["idx"])
        self.index: int = int(spec["index"])  # its entry in the plan's job table
        self.output_dir = Path(spec["output_dir"])
        self.out_prefix: str = spec["out_prefix"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.synced: dict[str, tuple[int, int]] = {}
        self.finished = False

    @property
    def launcher_dir(self) -> Path:
        return self.output_dir / ".launcher"


def job_outcome(job: Job, returncode: int) -> tuple[str, str | None]:
    """``done``/``failed`` and the reason, from the worker's exit code and its result file."""
    has_result = (job.launcher_dir / "result.pkl").exists()
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return FAILED, f"killed by {name}"
    if not has_result:
        return FAILED, f"exited with code {returncode} without writing a result"
    if returncode == 0:
        return DONE, None
    return FAILED, "task raised an exception"


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack the code snapshot, refusing members that would land outside ``dest``."""
    dest = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            target = (dest / member.name).resolve()
            if target != dest and dest not in target.parents:
                raise RuntimeError(f"unsafe path in code snapshot: {member.name!r}")
            if member.islnk() or member.isdev():
                raise RuntimeError(f"unsupported member in code snapshot: {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python < 3.11.4 without extraction filters: checked above
            tar.extractall(dest, members=members)


def _tail(path: Path, max_bytes: int = 2000) -> str:
    try:
        data = path.read_bytes()[-max_bytes:]
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


def _open_log(path: Path) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "ab")


class Agent:
    """Runs the jobs of one instance (one plan) and terminates the instance afterwards."""

    def __init__(self, bootstrap: dict[str, Any], imds: Imds | None = None) -> None:
        self.boot = bootstrap
        self.workspace = Path(bootstrap["workspace"])
        self.imds = imds or Imds()
        self.instance_id = "unknown"
        self.spot = False
        self.s3: Any = None
        self.ec2: Any = None
        self.plan: dict[str, Any] = {}
        self.jobs: list[Job] = []
        # The budget counts from the start of the user-data script (set there), not of this agent.
        self.started_epoch = float(os.environ.get("HRL_START_EPOCH") or time.time())
        self._last_spot_check = 0.0

    # --- set-up ----------------------------------------------------------------------------
    def connect(self) -> None:
        import boto3

        self.imds.wait_ready()
        self.instance_id = self.imds.get("meta-data/instance-id") or "unknown"
        region = self.boot.get("region") or self.imds.get("meta-data/placement/region", missing_ok=True)
        self.spot = (self.imds.get("meta-data/instance-life-cycle", missing_ok=True) or "") == "spot"
        endpoint = self.boot.get("endpoint_url") or None
        self.s3 = boto3.client("s3", region_name=region, endpoint_url=endpoint)
        self.ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint)
        log.info("instance %s (%s) in %s", self.instance_id, "spot" if self.spot else "on-demand", region)

    def load_plan(self) -> None:
        body = self.s3.get_object(Bucket=self.boot["bucket"], Key=self.boot["plan_key"])["Body"].read()
        self.plan = json.loads(body)
        self.jobs = [Job(spec) for spec in self.plan["jobs"]]
        log.info("plan: %d jobs, %d slots", len(self.jobs), self.plan["slots"])

    def fetch_inputs(self) -> None:
        bucket = self.plan["bucket"]
        snapshot = self.workspace / "snapshot.tar.gz"
        self.s3.download_file(bucket, self.plan["code_key"], str(snapshot))
        safe_extract(snapshot, self.workspace)
        (self.workspace / "code").mkdir(exist_ok=True)  # an empty code dir ships no code/ entries
        payloads = self.workspace / "payloads"
        payloads.mkdir(mode=0o700, exist_ok=True)
        self.s3.download_file(bucket, self.plan["sweep_payload_key"], str(payloads / "sweep.pkl"))
        # the plan is the job table: each job composes its config from its entry there
        (payloads / "plan.json").write_text(json.dumps(self.plan))

    # --- S3 ---------------------------------------------------------------------------------
    def mark(self, job: Job, state: str, reason: str | None = None) -> None:
        body = {"state": state, "reason": reason, "instance_id": self.instance_id, "time": time.time()}
        key = f"{self.plan['marker_prefix']}{job.job_id}.{state}"
        self._retry(lambda: self.s3.put_object(Bucket=self.plan["bucket"], Key=key, Body=json.dumps(body).encode()))
        if state != RUNNING:
            job.finished = True
            log.info("job #%d %s %s%s", job.idx, job.job_id, state, f": {reason}" if reason else "")

    def sync(self, job: Job) -> None:
        """Upload the files of a job's output dir that changed since the last sync."""
        if not job.output_dir.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(job.output_dir):
            for name in filenames:
                if _TMP_FILE.match(name):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except OSError:
                    continue
                if not path.is_file():
                    continue
                rel = path.relative_to(job.output_dir).as_posix()
                signature = (st.st_size, st.st_mtime_ns)
                if job.synced.get(rel) == signature:
                    continue
                self.s3.upload_file(str(path), self.plan["bucket"], job.out_prefix + rel)
                job.synced[rel] = signature

    def final_sync(self, job: Job) -> None:
        self._retry(lambda: self.sync(job))

    def upload_logs(self) -> None:
        for name, key in (("agent.log", "log_key"), ("setup.log", "setup_log_key")):
            path = self.workspace / name
            if path.exists() and self.plan.get(key):
                try:
                    self.s3.upload_file(str(path), self.plan["bucket"], self.plan[key])
                except Exception as exc:  # noqa: BLE001 - logs are best effort
                    log.warning("could not upload %s: %s", name, exc)

    @staticmethod
    def _retry(action: Any, attempts: int = 4) -> Any:
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - S3 hiccups: retried, then raised
                if attempt == attempts:
                    raise
                log.warning("S3 call failed (attempt %d): %s; retrying", attempt, exc)
                time.sleep(min(2.0**attempt, 10.0))
        return None

    # --- jobs -------------------------------------------------------------------------------
    def job_env(self) -> dict[str, str]:
        """The jobs' environment: this one (after setup_commands) with the shipped runtime and the
        code first on PYTHONPATH."""
        lib, code = self.workspace / "lib", self.workspace / "code"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(lib), str(code), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def check_environment(self, check: dict[str, Any] | None) -> str | None:
        """Run the pre-flight's probe with the jobs' Python, where and as the jobs will run, and
        judge its answer with the pre-flight's rule: why no job can run here, or None."""
        if not check:
            return None
        python = list(self.plan["python"])
        try:
            proc = subprocess.run(
                [*python, "-c", check["probe"]],
                cwd=self.workspace / "code",
                env=self.job_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
            )
            answer = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            answer = f"{type(exc).__name__}: {exc}"
        log.info("environment probe: %s", " ".join(answer.split())[:1000])
        rows = judge_probe(check, answer, shlex.join(python), f"instance {self.instance_id}", self.workspace / "lib")
        for row in rows:
            if row["status"] == "warn":
                log.warning("environment: %s: %s", row["check"], row["detail"])
        failed = [row for row in rows if row["status"] == "fail"]
        if not failed:
            return None
        what = "; ".join(f"{r['check']}: {r['detail']}" + (f" (fix: {r['fix']})" if r["fix"] else "") for r in failed)
        return f"the jobs' Python on this instance cannot run them (checked after setup_commands): {what}"

    def start(self, job: Job) -> None:
        job.launcher_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(job.launcher_dir, 0o700)
        (job.launcher_dir / "result.pkl").unlink(missing_ok=True)  # stale result of an earlier run
        code = self.workspace / "code"
        env = self.job_env()
        payloads = self.workspace / "payloads"
        cmd = [*self.plan["python"], "-m", "launcher_core.runtime.remote_worker", str(payloads / "sweep.pkl")]
        cmd += [str(payloads / "plan.json"), str(job.index)]
        self.mark(job, RUNNING)
        with _open_log(job.launcher_dir / "stdout.log") as out, _open_log(job.launcher_dir / "stderr.log") as err:
            job.proc = subprocess.Popen(
                cmd, cwd=code, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        log.info("job #%d %s started (pid %d)", job.idx, job.job_id, job.proc.pid)

    def finish(self, job: Job) -> None:
        assert job.proc is not None
        state, reason = job_outcome(job, job.proc.returncode)
        self.final_sync(job)
        self.mark(job, state, reason)

    def stop_reason(self) -> str | None:
        """Why the jobs must stop now: spot interruption notice or the runtime budget."""
        budget = float(self.plan["max_runtime_s"])
        if time.time() - self.started_epoch > budget - float(self.plan.get("stop_margin_s", 0.0)):
            return f"timeout: the instance reached max_runtime_min ({budget / 60:g} min)"
        now = time.monotonic()
        if self.spot and now - self._last_spot_check >= float(self.plan.get("spot_check_s", 5.0)):
            self._last_spot_check = now
            try:
                notice = self.imds.get("meta-data/spot/instance-action", missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - IMDS hiccup: check again next time
                log.warning("spot notice check failed: %s", exc)
                notice = None
            if notice:
                return f"{SPOT_INTERRUPTION}: the instance is being reclaimed ({notice.strip()})"
        return None

    def run_jobs(self) -> None:
        queue = list(self.jobs)
        running: list[Job] = []
        last_sync = last_cancel_check = time.monotonic()
        slots = max(1, int(self.plan["slots"]))
        while queue or running:
            reason = self.stop_reason()
            if reason:
                self.stop_all(running, queue, reason)
                return
            while queue and len(running) < slots:
                job = queue.pop(0)
                self.start(job)
                running.append(job)
            for job in [j for j in running if j.proc is not None and j.proc.poll() is not None]:
                running.remove(job)
                self.finish(job)
            if time.monotonic() - last_sync >= float(self.plan["sync_interval_s"]):
                last_sync = time.monotonic()
                self.periodic_sync(running)
            if time.monotonic() - last_cancel_check >= float(self.plan.get("cancel_check_s", 30.0)):
                last_cancel_check = time.monotonic()
                self.apply_cancel_requests(running, queue)
            if running:
                time.sleep(TICK_S)

    def periodic_sync(self, running: list[Job]) -> None:
        for job in running:
            try:
                self.sync(job)
            except Exception as exc:  # noqa: BLE001 - the next sync tries again
                log.warning("periodic sync of job #%d failed: %s", job.idx, exc)
        self.upload_logs()

    def cancel_requests(self) -> set[str]:
        """Job ids with a ``.cancel`` object (``cancel`` of some jobs of a shared instance)."""
        prefix = self.plan["marker_prefix"]
        found = set()
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.plan["bucket"], Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if name.endswith(".cancel"):
                    found.add(name[: -len(".cancel")])
        return found

    def apply_cancel_requests(self, running: list[Job], queue: list[Job]) -> None:
        try:
            wanted = self.cancel_requests()
        except Exception as exc:  # noqa: BLE001 - checked again later
            log.warning("could not list cancel requests: %s", exc)
            return
        for job in [j for j in queue if j.job_id in wanted]:
            queue.remove(job)
            self.mark(job, FAILED, "cancelled by user before it started")
        cancelled = [j for j in running if j.job_id in wanted]
        if cancelled:
            self.stop_jobs(cancelled, "cancelled by user")
            for job in cancelled:
                running.remove(job)

    def stop_jobs(self, jobs: list[Job], reason: str) -> None:
        """SIGTERM the jobs' process groups, SIGKILL after the grace time, final sync, markers."""
        for job in jobs:
            _signal_group(job, signal.SIGTERM)
        deadline = time.monotonic() + float(self.plan.get("kill_grace_s", 20.0))
        while time.monotonic() < deadline and any(j.proc and j.proc.poll() is None for j in jobs):
            time.sleep(TICK_S)
        for job in jobs:
            _signal_group(job, signal.SIGKILL)
            if job.proc is not None:
                job.proc.wait()
        for job in jobs:
            self.final_sync(job)
            self.mark(job, FAILED, reason)

    def stop_all(self, running: list[Job], queue: list[Job], reason: str) -> None:
        """Stop early (spot notice, budget): running jobs get a final sync, all get a marker."""
        log.warning("stopping %d running jobs: %s", len(running), reason)
        self.stop_jobs(running, reason)
        for job in queue:
            self.mark(job, FAILED, f"{reason}; the job never started")

    def fail_unfinished(self, reason: str) -> None:
        """Best effort after an agent error: every job without a final marker gets one."""
        for job in self.jobs:
            if job.finished:
                continue
            _signal_group(job, signal.SIGKILL)
            try:
                self.sync(job)
                self.mark(job, FAILED, reason)
            except Exception as exc:  # noqa: BLE001 - S3 unreachable: the backend sees the instance end
                log.error("could not mark job #%d failed: %s", job.idx, exc)

    # --- the end ----------------------------------------------------------------------------
    def terminate(self) -> bool:
        """Terminate this instance through the API; False if that failed (caller powers off)."""
        if self.ec2 is None or self.instance_id == "unknown":
            return False
        for attempt in range(1, 6):
            try:
                self.ec2.terminate_instances(InstanceIds=[self.instance_id])
                log.info("terminated instance %s", self.instance_id)
                return True
            except Exception as exc:  # noqa: BLE001 - retried, then the shutdown fallback
                log.warning("TerminateInstances failed (attempt %d): %s", attempt, exc)
                time.sleep(min(2.0**attempt, 15.0))
        return False

    def main(self, setup_failed: int | None = None, setup_line: int | None = None) -> int:
        try:
            self.connect()
            self.load_plan()
            if setup_failed is not None:
                tail = _tail(self.workspace / "setup.log")
                line = _setup_command(ENV_CHECK, setup_line)
                self.fail_unfinished(f"setup_commands failed with exit code {setup_failed}{line}: {tail[-800:]}")
            else:
                self.fetch_inputs()
                refused = self.check_environment(ENV_CHECK)
                if refused:
                    log.error("no job is started: %s", refused)
                    self.fail_unfinished(refused)
                else:
                    self.run_jobs()
        except Exception as exc:  # noqa: BLE001 - reported on every unfinished job
            log.error("agent error: %s", traceback.format_exc())
            if self.s3 is not None and self.plan:
                self.fail_unfinished(f"instance agent error: {type(exc).__name__}: {exc}")
        self.upload_logs()
        if not self.all_marked():
            # a terminate call on an instance whose jobs have no final marker reads as a termination
            # from outside (the jobs lost, run again): power off instead (the user-data does it on a
            # non-zero exit), which EC2 reports as the instance's own shutdown: the jobs failed
            log.error("not every job could be marked finished: powering the instance off")
            return 3
        return 0 if self.terminate() else 3

    def all_marked(self) -> bool:
        """Whether the plan was read and every job of it has its final marker."""
        return bool(self.plan) and all(job.finished for job in self.jobs)


def _setup_command(check: dict[str, Any] | None, index: int | None) -> str:
    """`` at setup_commands[i] `<the command>```, or nothing when it is not known."""
    commands = (check or {}).get("setup_commands") or []
    if index is None or not 0 <= index < len(commands):
        return ""
    return f" at setup_commands[{index}] `{commands[index]}`"


def judge_probe(
    check: dict[str, Any], answer: str, python: str, host: str, lib: Path | None = None
) -> list[dict[str, str]]:
    """Rows (check, status, detail, fix) of the rule of what must match
    (``launcher_core.runtime.envcheck``, shipped in the snapshot's ``lib/``) on the probe's
    ``answer``, against the launching machine's versions (``check["here"]``) and the sweep
    payload's needs (``check["needs"]``). A rule that cannot run here checks nothing (a warning
    in agent.log)."""
    if lib is not None and str(lib) not in sys.path:
        sys.path.insert(0, str(lib))
    try:
        from launcher_core.runtime.envcheck import python_checks
        from launcher_core.runtime.payload import PayloadNeeds

        data = check.get("needs")
        needs = PayloadNeeds(**{**data, "by_value": tuple(data.get("by_value") or ())}) if data else None
        rows = python_checks(host, answer, python=python, key="", needs=needs, here=dict(check["here"]))
        return [{"check": r.check, "status": r.status, "detail": r.detail, "fix": r.fix} for r in rows]
    except Exception as exc:  # noqa: BLE001 - a rule that cannot run here must not stop the jobs
        log.warning("environment not checked: the rule failed here: %s: %s", type(exc).__name__, exc)
        return []


def _signal_group(job: Job, sig: int) -> None:
    if job.proc is None or job.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(job.proc.pid, sig)


def _setup_logging(workspace: Path) -> None:
    handler = logging.FileHandler(workspace / "agent.log")
    console = logging.StreamHandler(sys.stderr)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for h in (handler, console):
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    # botocore at DEBUG level would log signed request headers: keep it quiet.
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """``python agent.py BOOTSTRAP_JSON [--setup-failed RC [--setup-line N]]``."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: agent.py BOOTSTRAP_JSON [--setup-failed RC [--setup-line N]]", file=sys.stderr)
        return 2
    bootstrap = json.loads(Path(args[0]).read_text())
    setup_failed = int(args[args.index("--setup-failed") + 1]) if "--setup-failed" in args else None
    setup_line = int(args[args.index("--setup-line") + 1]) if "--setup-line" in args else None
    workspace = Path(bootstrap["workspace"])
    workspace.mkdir(parents=True, exist_ok=True)
    _setup_logging(workspace)
    log.info("hydra-remote-launcher agent, python %s, argv %s", sys.version.split()[0], shlex.join(args))
    return Agent(bootstrap).main(setup_failed, setup_line)


if __name__ == "__main__":
    sys.exit(main())
