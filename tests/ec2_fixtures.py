"""Loopback AWS for the ec2 backend tests: a real moto server, an IMDSv2 stand-in, instance agents.

moto implements the EC2/S3/IAM/SSM APIs but never boots anything. :class:`InstanceAgentRunner`
plays the part of EC2's hypervisor and cloud-init: it watches ``DescribeInstances`` for new
instances of this launcher, reads each one's user-data back from the API
(``DescribeInstanceAttribute userData``) and runs it with bash in a subprocess whose environment
looks like an instance's: ``AWS_ENDPOINT_URL`` pointing to moto, ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
pointing to :class:`MetadataServer` (IMDSv2 token semantics), and credentials in the environment
only (an instance would get them from its profile through IMDS). When an instance is terminated
through the API, its processes are killed like a powered-off machine's. The instance agent must
terminate its instance itself: nothing here does it for it, except the stand-in for
``shutdown -h now`` (the user-data's fallback and budget guard), which records that it was called.

Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import io
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from moto.server import ThreadedMotoServer  # noqa: E402

# Distinctive fake credentials: the scan proves they never reach user-data, S3, logs or state.
FAKE_ACCESS_KEY_ID = "AKIAHRLCANARY7Q2X9ZZ"
FAKE_SECRET_ACCESS_KEY = "hrlCanarySecret7Q2X9ZZ/do+not+leak+0123456"
CREDENTIAL_STRINGS = (FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY)
REGION = "us-east-1"
BUCKET = "hrl-test-bucket"
PROFILE = "hrl-test-instance-profile"
TAG_SWEEP = "hydra-launcher:sweep-id"
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _post(url: str) -> None:
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


# --- IMDSv2 stand-in -----------------------------------------------------------------------
class MetadataServer:
    """Instance metadata on 127.0.0.1 with IMDSv2 semantics, one URL prefix per instance.

    ``PUT /<iid>/latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1-21600) gives a
    token; every ``GET /<iid>/latest/...`` needs ``X-aws-ec2-metadata-token`` with a live token of
    that instance (else 401). Requests carrying ``X-Forwarded-For`` are refused, as on EC2.
    """

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, str]] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="imds", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def endpoint_for(self, instance_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/{instance_id}/"

    def register(self, instance_id: str, metadata: dict[str, str]) -> None:
        with self._lock:
            self.instances[instance_id] = dict(metadata)

    def set_spot_action(self, instance_id: str, action: str = "terminate") -> None:
        """Post a spot interruption notice, as EC2 does two minutes before reclaiming."""
        notice = json.dumps({"action": action, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        with self._lock:
            self.instances[instance_id]["spot/instance-action"] = notice

    def _respond(self, method: str, path: str, headers: Any) -> tuple[int, str]:
        instance_id, _, rest = path.lstrip("/").partition("/")
        with self._lock:
            data = self.instances.get(instance_id)
            if data is None or headers.get("X-Forwarded-For"):
                return 403, "forbidden"
            if method == "PUT" and rest == "latest/api/token":
                ttl = headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return 400, "missing or invalid X-aws-ec2-metadata-token-ttl-seconds"
                token = secrets.token_urlsafe(24)
                self.tokens[token] = (instance_id, time.monotonic() + int(ttl))
                return 200, token
            if method != "GET":
                return 405, "method not allowed"
            owner, expires = self.tokens.get(headers.get("X-aws-ec2-metadata-token", ""), ("", 0.0))
            if owner != instance_id or time.monotonic() > expires:
                return 401, "unauthorized"
            key = rest.removeprefix("latest/meta-data/")
            if not rest.startswith("latest/meta-data/") or key not in data:
                return 404, "not found"
            return 200, data[key]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                status, body = outer._respond(self.command, self.path, self.headers)
                outer.requests.append((self.command, self.path, status))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = _serve

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- EC2 fault proxy -----------------------------------------------------------------------
@dataclass
class _Fault:
    action: str
    code: str
    status: int
    times: int
    after: int
    seen: int = 0


class FaultProxy:
    """A loopback HTTP proxy in front of moto's EC2 API that fails chosen actions.

    Point only EC2 at it (``AWS_ENDPOINT_URL_EC2``): EC2's query protocol is a plain form POST,
    so requests are forwarded as they are and errors are answered in EC2's own XML format.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").partition(":")
        self.target = (host, int(port))
        self.faults: list[_Fault] = []
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, action: str, code: str, *, times: int, after: int = 0, status: int = 503) -> None:
        """Answer the calls ``after+1`` .. ``after+times`` of ``action`` with error ``code``."""
        self.faults.append(_Fault(action, code, status, times, after))

    def _fault_for(self, action: str) -> _Fault | None:
        with self._lock:
            self.calls[action] = self.calls.get(action, 0) + 1
            for fault in self.faults:
                if fault.action == action:
                    fault.seen += 1
                    if fault.after < fault.seen <= fault.after + fault.times:
                        return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
                fault = outer._fault_for(action)
                if fault is not None:
                    xml = (
                        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
                        f"<Code>{fault.code}</Code><Message>injected {fault.code} for {action}</Message>"
                        "</Error></Errors><RequestID>fault-proxy</RequestID></Response>"
                    ).encode()
                    self._reply(fault.status, {"Content-Type": "text/xml"}, xml)
                    return
                conn = http.client.HTTPConnection(*outer.target, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request("POST", self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    self._reply(response.status, dict(response.getheaders()), data)
                finally:
                    conn.close()

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the instance agent runner -------------------------------------------------------------
# The stand-in for `shutdown -h now`: it records the call, and the runner, seeing the record, has
# EC2 (moto, in this process) terminate the instance as a powered-off one with
# InstanceInitiatedShutdownBehavior=terminate is: state reason Client.InstanceInitiatedShutdown
# (a TerminateInstances call would read Client.UserInitiatedShutdown: someone's terminate call).
_FAKE_SHUTDOWN = """\
import pathlib, sys
pathlib.Path(sys.argv[2]).write_text("shutdown called\\n")
"""
INSTANCE_SHUTDOWN = (
    "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
    "Client.InstanceInitiatedShutdown",
)


@dataclass
class AgentRun:
    """One simulated instance: its dir, user-data, and the process running the user-data."""

    instance_id: str
    directory: Path
    user_data: str
    proc: subprocess.Popen[bytes]
    terminated_seen: float | None = None
    powered_off: bool = False  # killed by us because the instance was terminated
    reaped: bool = False  # every process of the instance is gone

    @property
    def shutdown_called(self) -> bool:
        return (self.directory / "shutdown-called").exists()

    @property
    def console(self) -> str:
        path = self.directory / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class InstanceAgentRunner:
    """Boots every new instance of the launcher in moto by running its user-data locally."""

    moto_url: str
    metadata: MetadataServer
    root: Path
    python_dir: str = str(Path(sys.executable).parent)
    poll_s: float = 0.1
    power_off_grace_s: float = 0.5
    runs: dict[str, AgentRun] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._ec2 = boto3.client("ec2", endpoint_url=self.moto_url, region_name=REGION)
        self._shutdown_script = self.root / "fake_shutdown.py"
        self._shutdown_script.write_text(_FAKE_SHUTDOWN)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="instance-agents", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - reported by the fixture at teardown
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)

    def tick(self) -> None:
        response = self._ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": [TAG_SWEEP]}])
        for reservation in response["Reservations"]:
            for inst in reservation["Instances"]:
                state = inst["State"]["Name"]
                run = self.runs.get(inst["InstanceId"])
                if run is None and state in ("pending", "running"):
                    self.boot(inst)
                elif run is not None and state in ("shutting-down", "terminated"):
                    self._power_off(run)
                elif run is not None and run.shutdown_called:
                    _terminate_as_shut_down(inst["InstanceId"])

    def boot(self, inst: dict[str, Any]) -> None:
        iid = inst["InstanceId"]
        attr = self._ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        user_data = base64.b64decode(attr["UserData"].get("Value", "")).decode()
        directory = self.root / iid
        directory.mkdir(parents=True)
        (directory / "user-data.sh").write_text(user_data)
        zone = inst.get("Placement", {}).get("AvailabilityZone", f"{REGION}a")
        self.metadata.register(
            iid,
            {
                "instance-id": iid,
                "instance-type": inst.get("InstanceType", ""),
                "ami-id": inst.get("ImageId", ""),
                "placement/region": REGION,
                "placement/availability-zone": zone,
                "instance-life-cycle": inst.get("InstanceLifecycle", "on-demand"),
            },
        )
        env = {
            "PATH": f"{self.python_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(directory),
            "LANG": "C.UTF-8",
            "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.metadata.endpoint_for(iid),
            "HRL_SHUTDOWN_CMD": f"{sys.executable} {self._shutdown_script} {iid} {directory / 'shutdown-called'}",
        }
        with open(directory / "console.log", "wb") as console:
            proc = subprocess.Popen(
                ["bash", str(directory / "user-data.sh")],
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.runs[iid] = AgentRun(iid, directory, user_data, proc)

    def _power_off(self, run: AgentRun) -> None:
        if run.proc.poll() is not None and (run.powered_off or run.reaped):
            return
        now = time.monotonic()
        if run.terminated_seen is None:
            run.terminated_seen = now
        if now - run.terminated_seen >= self.power_off_grace_s:
            run.powered_off = run.powered_off or run.proc.poll() is None
            _kill_group(run.proc)
            # the jobs run in sessions of their own (the agent's process groups): a powered-off
            # machine loses them too
            _kill_environ(f"AWS_EC2_METADATA_SERVICE_ENDPOINT={self.metadata.endpoint_for(run.instance_id)}")
            run.reaped = True

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Until every booted instance's processes are gone (finished or powered off)."""
        wait_for(lambda: all(r.proc.poll() is not None for r in self.runs.values()), timeout, "instance agents")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for run in self.runs.values():
            _kill_group(run.proc)
        self._ec2.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _pids_with_environ(entry: str) -> list[int]:
    """The processes whose environment holds ``entry`` (``NAME=value``), read from /proc."""
    wanted = entry.encode()
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            environ = (proc_dir / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            pids.append(int(proc_dir.name))
    return pids


def _kill_environ(entry: str, rounds: int = 50) -> None:
    """SIGKILL every process started with ``entry`` in its environment (an instance's processes
    carry its metadata endpoint), again while new ones show up (a bounded number of rounds)."""
    for _ in range(rounds):
        pids = _pids_with_environ(entry)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _terminate_as_shut_down(instance_id: str) -> None:
    """Terminate an instance in moto (this process) as EC2 does one that shut itself down: the
    state reason is set before the state, so no DescribeInstances sees it ended for another reason."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import StateReason

    instance = ec2_backends[DEFAULT_ACCOUNT_ID][REGION].get_instance(instance_id)
    if instance.state in ("shutting-down", "terminated"):
        return
    instance.state_reason = StateReason(*INSTANCE_SHUTDOWN)
    instance._reason = "Client.InstanceInitiatedShutdown"
    instance._state.name, instance._state.code = "terminated", 48
    instance.teardown_defaults()


# --- the AWS world of one test -------------------------------------------------------------
@dataclass
class AwsWorld:
    moto_url: str
    ami: str
    bucket: str
    profile: str
    subnet_id: str
    security_group_id: str
    runner: InstanceAgentRunner
    metadata: MetadataServer
    tmp: Path

    def client(self, service: str, endpoint_url: str | None = None) -> Any:
        return boto3.client(service, endpoint_url=endpoint_url or self.moto_url, region_name=REGION)

    def launcher_settings(self, **overrides: Any) -> dict[str, Any]:
        """``hydra.launcher`` values for a fast test sweep against this world."""
        code_dir = self.tmp / "code"
        code_dir.mkdir(exist_ok=True)
        (code_dir / "helper.py").write_text("VALUE = 42\n")
        settings = {
            "ami": self.ami,
            "s3_bucket": self.bucket,
            "s3_prefix": "sweeps",
            "region": REGION,
            "instance_type": "t3.micro",
            "iam_instance_profile": PROFILE,
            "security_group_ids": [self.security_group_id],
            "subnet_id": self.subnet_id,
            "endpoint_url": self.moto_url,
            "python": sys.executable,
            "remote_dir": str(self.tmp / "remote"),
            "code_dir": str(code_dir),
            "sync_interval_s": 0.5,
            "poll_interval_s": 0.2,
            "kill_grace_s": 2.0,
            "api_retry_base_s": 0.01,
            "max_runtime_min": 5.0,
            "tags": {"project": "hrl-tests"},
        }
        settings.update(overrides)
        return settings

    def instances(self, states: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
        ec2 = self.client("ec2")
        try:
            found = {}
            for reservation in ec2.describe_instances()["Reservations"]:
                for inst in reservation["Instances"]:
                    if states is None or inst["State"]["Name"] in states:
                        found[inst["InstanceId"]] = inst
            return found
        finally:
            ec2.close()

    def running_instances(self) -> dict[str, dict[str, Any]]:
        return self.instances(("pending", "running", "stopping", "stopped"))

    def s3_keys(self) -> list[str]:
        s3 = self.client("s3")
        try:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        finally:
            s3.close()

    def s3_objects(self) -> dict[str, bytes]:
        """Every object's body; one deleted between the listing and its read (the launcher and
        the agents clean up while a test polls) is left out."""
        s3 = self.client("s3")
        try:
            objects = {}
            for key in self.s3_keys():
                try:
                    objects[key] = s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                except s3.exceptions.NoSuchKey:
                    continue
            return objects
        finally:
            s3.close()


@pytest.fixture(scope="session", name="moto_server")
def moto_server_fixture() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session", name="metadata_server")
def metadata_server_fixture() -> Iterator[MetadataServer]:
    server = MetadataServer()
    try:
        yield server
    finally:
        server.close()


def _create_world(moto_url: str) -> tuple[str, str, str]:
    """Bucket, instance profile; returns (AMI id from moto's SSM parameter, subnet, security group)."""
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION)
    iam = boto3.client("iam", endpoint_url=moto_url, region_name=REGION)
    ssm = boto3.client("ssm", endpoint_url=moto_url, region_name=REGION)
    ec2 = boto3.client("ec2", endpoint_url=moto_url, region_name=REGION)
    try:
        s3.create_bucket(Bucket=BUCKET)
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        iam.create_role(RoleName="hrl-test-role", AssumeRolePolicyDocument=json.dumps(trust))
        iam.create_instance_profile(InstanceProfileName=PROFILE)
        iam.add_role_to_instance_profile(InstanceProfileName=PROFILE, RoleName="hrl-test-role")
        ami = ssm.get_parameter(Name=AMI_PARAMETER)["Parameter"]["Value"]
        subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
        return ami, subnet, group
    finally:
        for client in (s3, iam, ssm, ec2):
            client.close()


@pytest.fixture(name="aws")
def aws_fixture(
    moto_server: str, metadata_server: MetadataServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AwsWorld]:
    """A fresh moto state, fake credentials in the environment, and the instance agent runner."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    # never IMDS from the test process itself (boto3 would try it when credentials are missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _post(f"{moto_server}/moto-api/reset")
    ami, subnet, group = _create_world(moto_server)
    runner = InstanceAgentRunner(moto_server, metadata_server, tmp_path / "instances")
    world = AwsWorld(moto_server, ami, BUCKET, PROFILE, subnet, group, runner, metadata_server, tmp_path)
    try:
        yield world
    finally:
        runner.stop()
        _post(f"{moto_server}/moto-api/reset")
    assert not runner.errors, f"instance agent runner errors: {runner.errors}"


@pytest.fixture(name="fault_proxy")
def fault_proxy_fixture(moto_server: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_server)
    try:
        yield proxy
    finally:
        proxy.close()


# --- the credential scan -------------------------------------------------------------------
def _expand(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The blob itself, plus every member of it when it is a (gzipped) tar archive."""
    yield name, data
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except OSError:
            return
        yield f"{name} (gunzipped)", data
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is not None:
                    yield f"{name}:{member.name}", extracted.read()
    except tarfile.TarError:
        pass


def files_under(*roots: Path) -> dict[str, bytes]:
    blobs = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if path.is_file() and not path.is_symlink():
                blobs[str(path)] = path.read_bytes()
    return blobs


def credential_leaks(blobs: dict[str, bytes]) -> list[str]:
    """Where (blob name) any of the fake credential strings occurs, archives unpacked."""
    leaks = []
    for name, data in blobs.items():
        for where, content in _expand(name, data):
            for secret in CREDENTIAL_STRINGS:
                if secret.encode() in content:
                    leaks.append(f"{where} contains {secret[:6]}...")
    return leaks


# --- sweeps through Hydra, in-process ------------------------------------------------------
def task(cfg: Any) -> Any:
    """The task of the in-process test sweeps (shipped by value, like a script's ``__main__``).

    ok: a dict; raise (or x in fail_on): ValueError; x in exit_on: exit 3 without a result;
    sleep: `seconds * x` seconds, then ok; env: the values of the variables `env_names`;
    echo: x exactly as the job received it, with its output dir and cwd (injection tests).
    With a `counter` path (a side-effect counter outside the job dirs), a sleeping job appends
    `start x=.. attempt=..` when it starts and `end x=..` when its sleep is over.
    """
    import os
    import time as _time
    from pathlib import Path as _Path

    from hydra.core.hydra_config import HydraConfig

    out = _Path(HydraConfig.get().runtime.output_dir)
    (out / "artifact.txt").write_text(f"x={cfg.x}\n")
    print(f"stdout of job x={cfg.x}", flush=True)
    if cfg.mode == "raise" or cfg.x in cfg.fail_on:
        raise ValueError(f"bad value x={cfg.x}")
    if cfg.x in cfg.exit_on:
        os._exit(3)
    if cfg.mode == "sleep":
        counter = _Path(cfg.counter) if "counter" in cfg else None
        _count(counter, f"start x={cfg.x} attempt={os.environ.get('HYDRA_LAUNCHER_ATTEMPT')}")
        _time.sleep(cfg.seconds * cfg.x)
        _count(counter, f"end x={cfg.x}")
    if cfg.mode == "env":
        return {name: os.environ.get(name) for name in cfg.env_names}
    if cfg.mode == "echo":
        return {"x": cfg.x, "output_dir": str(out), "cwd": os.getcwd()}
    import helper  # from the code snapshot (code_dir)
    from hydra.utils import get_original_cwd

    cwd = os.getcwd()
    return {"x": cfg.x, "square": cfg.x * cfg.x, "helper": helper.VALUE, "cwd": cwd, "original": get_original_cwd()}


def _count(counter: Path | None, line: str) -> None:
    """One line appended to a side-effect counter (a single O_APPEND write)."""
    if counter is not None:
        fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)


def _store_config(name: str, launcher: dict[str, Any], app: dict[str, Any]) -> None:
    from hydra.core.config_store import ConfigStore

    node = {
        "defaults": [{"override hydra/launcher": "ec2"}, "_self_"],
        "x": 0,
        "mode": "ok",
        "seconds": 0,
        "fail_on": [],
        "exit_on": [],
        "env_names": [],
        **app,
        "hydra": {"launcher": launcher, "job": {"chdir": False}},
    }
    ConfigStore.instance().store(name=name, node=node)


def multirun(sweep_dir: Path, launcher: dict[str, Any], overrides: list[str], **app: Any) -> list[Any]:
    """Run :func:`task` as a Hydra multirun with the ec2 launcher; the flat list of JobReturns."""
    import cloudpickle
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from launcher_core.sweep import quote_value

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    _store_config("ec2_test", launcher, app)
    GlobalHydra.instance().clear()
    hydra_ = Hydra.create_main_hydra2(task_name="ec2_test", config_search_path=create_config_search_path(None))
    try:
        sweeps = hydra_.multirun(
            config_name="ec2_test",
            task_function=task,
            # quoted: a sweep dir with spaces, quotes or `$(...)` reaches Hydra as the exact path
            overrides=[*overrides, f"hydra.sweep.dir={quote_value(str(sweep_dir))}"],
            with_log_configuration=False,
        )
    finally:
        GlobalHydra.instance().clear()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    return [ret for batch in sweeps for ret in batch]


def rows(sweep_dir: Path) -> dict[int, Any]:
    from launcher_core.state import StateStore

    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return {row.idx: row for row in store.jobs()}


def meta(sweep_dir: Path) -> dict[str, Any]:
    from launcher_core.state import StateStore

    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return store.meta()


def result(sweep_dir: Path, num: int) -> Any:
    import cloudpickle

    with open(sweep_dir / str(num) / ".launcher" / "result.pkl", "rb") as f:
        return cloudpickle.load(f)


def stored_backend(sweep_dir: Path) -> Any:
    """The backend rebuilt from the sweep's state store, as the pull daemon does."""
    from launcher_core.backends.ec2 import from_config

    return from_config(meta(sweep_dir)["backend_config"])


def collect(sweep_dir: Path, timeout: float = 60.0) -> dict[int, Any]:
    """Poll a detached sweep until every job is terminal, fetch its files: idx -> JobStatus."""
    backend = stored_backend(sweep_dir)
    try:
        job_rows = list(rows(sweep_dir).values())
        handles = {r.job_id: r.handle for r in job_rows}

        def finished() -> Any:
            statuses = backend.poll(handles)
            return statuses if all(s.state.is_terminal for s in statuses.values()) else None

        statuses = wait_for(finished, timeout, "jobs to finish", interval=0.2)
        backend.fetch(handles, {r.job_id: r.output_dir for r in job_rows})
        return {r.idx: statuses[r.job_id] for r in job_rows}
    finally:
        backend.close()


def marker_count(world: AwsWorld, suffix: str) -> int:
    return sum(1 for key in world.s3_keys() if "/markers/" in key and key.endswith(suffix))


def assert_no_credentials(world: AwsWorld, *texts: str) -> int:
    """Scan every user-data, S3 object, file of the test (sweep dir with its state store, the
    instances' workspaces and consoles) and the given texts; return how many blobs were scanned."""
    blobs = files_under(world.tmp)
    blobs.update({f"s3://{world.bucket}/{k}": v for k, v in world.s3_objects().items()})
    ec2 = world.client("ec2")
    try:
        for iid in world.instances():
            attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
            blobs[f"user-data of {iid}"] = base64.b64decode(attr["UserData"].get("Value", ""))
    finally:
        ec2.close()
    blobs.update({f"text {n}": t.encode() for n, t in enumerate(texts)})
    leaks = credential_leaks(blobs)
    assert not leaks, leaks
    return len(blobs)
