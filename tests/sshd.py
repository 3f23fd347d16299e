"""A throwaway OpenSSH server on 127.0.0.1 for the remote_ssh tests (and the benchmark).

Each :class:`SSHServer` has its own host key, ``known_hosts``, authorized keys, pid file and
config, listens on a free loopback port and logs at ``LogLevel VERBOSE`` to a file, so tests
can count the TCP connections it accepted. Logins are non-root users created once with
``useradd -m`` (``usermod -p '*'`` unlocks them for key logins: sshd refuses "locked"
accounts with ``UsePAM no``). Their "remote" Python is a venv built from Debian's
``/usr/bin/python3`` in a world-readable place that has only hydra-core, omegaconf and
cloudpickle (and their dependencies), not this package: jobs must run from what the backend
ships.

Needs root (sshd switches users) and Debian's openssh-server; the fixtures skip otherwise.
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
BASE = Path("/opt/hrl-test")  # root-owned and 0755: sshd's StrictModes accepts it, users can read it
USERS = ("hrltest1", "hrltest2")
REMOTE_VENV = BASE / "remote-venv"
REMOTE_SITE = BASE / "remote-site"
# what a job needs on a host: these distributions and what they require (copied by their files)
JOB_SIDE_ROOTS = ("hydra-core", "omegaconf", "cloudpickle")
TESTS_DIR = "hrl-tests"  # under each test user's home


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the loopback sshd tests need root (sshd must switch to the test users)"
    for tool in (SSHD, shutil.which("ssh"), shutil.which("rsync"), shutil.which("useradd")):
        if not tool or not Path(tool).exists():
            return f"missing {tool or 'ssh/rsync/useradd'}: install openssh-server, openssh-client and rsync"
    return None


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    import fcntl

    BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE, 0o755)
    with open(BASE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_users() -> None:
    for user in USERS:
        if _run("id", "-u", user, check=False).returncode != 0:
            _run("useradd", "-m", "-s", "/bin/bash", user)
        _run("usermod", "-p", "*", user)


def _private_key(path: Path) -> None:
    if not path.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))


def _job_side_distributions() -> list[importlib.metadata.Distribution]:
    """The installed distributions a job needs: ``JOB_SIDE_ROOTS`` and what they require, found
    from package metadata alone (nothing is imported, so a dependency's import-time warning or a
    renamed module cannot break this)."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(JOB_SIDE_ROOTS)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(found.values(), key=lambda d: d.metadata["Name"].lower())


def _copy_distribution(dist: importlib.metadata.Distribution, site: Path) -> None:
    """Copy a distribution's installed files into ``site``: those its RECORD lists, or, for a legacy
    ``setup.py install`` (antlr4-python3-runtime: an egg-info without RECORD), its top-level
    packages and its metadata dir."""
    if dist.read_text("RECORD") is None:
        tops = (dist.read_text("top_level.txt") or "").split()
        metadata_dir = Path(str(dist.locate_file(""))) / Path(str(dist._path)).name  # type: ignore[attr-defined]
        for name in [*tops, metadata_dir.name]:
            for src in (Path(str(dist.locate_file(name))), Path(str(dist.locate_file(f"{name}.py")))):
                if src.is_dir():
                    shutil.copytree(src, site / src.name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
                elif src.is_file():
                    shutil.copy2(src, site / src.name)
        return
    for entry in dist.files or []:
        if entry.parts[0] == ".." or "__pycache__" in entry.parts or "tests" in entry.parts[1:2]:
            continue
        src = Path(str(dist.locate_file(entry)))
        if src.is_file():
            dest = site / entry
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def ensure_remote_python() -> str:
    """A venv for the test users with only the job-side dependencies (created once, reused)."""
    dists = _job_side_distributions()
    stamp_text = " ".join(f"{d.metadata['Name']}={d.version}" for d in dists) + f" py{sys.version_info[:2]} pyc"
    stamp = REMOTE_VENV / "hrl-stamp"
    python = REMOTE_VENV / "bin" / "python"
    if stamp.exists() and stamp.read_text() == stamp_text and python.exists():
        return str(python)
    shutil.rmtree(REMOTE_VENV, ignore_errors=True)
    shutil.rmtree(REMOTE_SITE, ignore_errors=True)
    BASE.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE, 0o755)
    _run("/usr/bin/python3", "-m", "venv", "--without-pip", str(REMOTE_VENV))
    REMOTE_SITE.mkdir()
    for dist in dists:
        _copy_distribution(dist, REMOTE_SITE)
    site = next((REMOTE_VENV / "lib").glob("python3*/site-packages"))
    (site / "hrl-remote-site.pth").write_text(f"{REMOTE_SITE}\n")
    # bytecode, as pip writes it on a real host: the test users cannot write __pycache__ here, and
    # without it every job would compile hydra and omegaconf again (~0.4 s of CPU per job)
    _run("/usr/bin/python3", "-m", "compileall", "-q", "-j", "0", str(REMOTE_SITE), timeout=300)
    _run("chmod", "-R", "a+rX", str(REMOTE_VENV), str(REMOTE_SITE))
    stamp.write_text(stamp_text)
    return str(python)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        for child in children.get(current, []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class SSHServer:
    """One sshd on 127.0.0.1; ``alias(user)`` names it in :attr:`ssh_config`."""

    root: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def rsync_log(self) -> Path:
        return self.root / "rsync.log"

    @property
    def rsync_wrapper(self) -> Path:
        """``--rsync-path`` that logs every server-side rsync (one line per invocation)."""
        return self.root / "rsync-logged"

    def alias(self, user: str = USERS[0]) -> str:
        return f"{self.root.name}-{user}"

    def setup(self) -> None:
        self.root.mkdir(parents=True)
        os.chmod(self.root, 0o755)
        _private_key(self.root / "host_key")
        _private_key(self.root / "id_client")
        keys = self.root / "authorized_keys"
        keys.mkdir()
        os.chmod(keys, 0o755)
        pub = (self.root / "id_client.pub").read_text()
        for user in USERS:
            (keys / user).write_text(pub)
            os.chmod(keys / user, 0o644)
        host_pub = " ".join((self.root / "host_key.pub").read_text().split()[:2])
        (self.root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        (self.root / "empty_known_hosts").write_text("")
        (self.root / "sshd_config").write_text(self._sshd_config())
        self.ssh_config.write_text(self._ssh_config())
        self.rsync_log.touch()
        os.chmod(self.rsync_log, 0o666)
        self.rsync_wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {self.rsync_log}\nexec rsync "$@"\n')
        os.chmod(self.rsync_wrapper, 0o755)

    def _sshd_config(self) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {self.root / 'host_key'}",
                f"PidFile {self.root / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.root / 'authorized_keys'}/%u",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin no",
                f"AllowUsers {' '.join(USERS)}",
                "LogLevel VERBOSE",
                "MaxSessions 64",
                "MaxStartups 64:30:128",
                "PrintMotd no",
                "X11Forwarding no",
                "",
            ]
        )

    def _ssh_config(self) -> str:
        blocks = []
        for user in USERS:
            blocks.append(f"Host {self.alias(user)}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {user}\n")
        blocks.append(
            f"Host {self.root.name}-unknown-key\n  HostName 127.0.0.1\n  Port {self.port}\n  User {USERS[0]}\n"
            f"  UserKnownHostsFile {self.root / 'empty_known_hosts'}\n"
        )
        blocks.append(
            f"Host {self.root.name}-jump\n  HostName 127.0.0.1\n  Port {self.port}\n  User {USERS[1]}\n"
            f"  ProxyJump {self.alias(USERS[0])}\n"
        )
        blocks.append(
            f"Host {self.root.name}-*\n  IdentityFile {self.root / 'id_client'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.root / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n"
        )
        return "\n".join(blocks)

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(self.root / "sshd_config"), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()}")
            probes = self._log_text().count("kex_exchange_identification")
            connected = False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                connected = True
            if connected:
                # the probe is a connection too: wait until it is logged, so counts start stable
                while self._log_text().count("kex_exchange_identification") == probes and time.monotonic() < deadline:
                    time.sleep(0.02)
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port} within 10 s")

    def _signal_tree(self, sig: int) -> None:
        if self.proc is None:
            return
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def pause(self) -> None:
        """SIGSTOP the server and every session process: the link looks dead, nothing is refused.

        Repeated until no new process shows up: one may fork while the tree is being stopped.
        """
        if self.proc is None:
            return
        stopped: set[int] = set()
        for _ in range(50):
            new = [p for p in [self.proc.pid, *_descendants(self.proc.pid)] if p not in stopped]
            if not new:
                return
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)

    def resume(self) -> None:
        self._signal_tree(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server and all its sessions (the connections drop)."""
        if self.proc is None:
            return
        tree = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def connections(self) -> int:
        """TCP connections the server accepted so far (LogLevel VERBOSE 'Connection from')."""
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if "Connection from" in line)

    def rsync_calls(self) -> list[str]:
        return self.rsync_log.read_text().splitlines()

    def wait_for_log(self, needle: str, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log.read_text(errors="replace"):
                return True
            time.sleep(0.05)
        return False


def new_server(tag: str = "srv") -> SSHServer:
    server = SSHServer(BASE / f"{tag}-{secrets.token_hex(3)}")
    server.setup()
    server.start()
    return server


def kill_run_processes(run_id: str, users: tuple[str, ...] = USERS) -> None:
    """Kill, by pid, what this test run left on the "hosts": runners, jobs and their orphans.

    Only processes of the test users whose command line or working dir names this run's
    remote dirs: another test session on the same machine shares the users.
    """
    import pwd

    uids = {pwd.getpwnam(u).pw_uid for u in users}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid not in uids:
                continue
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if run_id in cmdline or run_id in cwd:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


@dataclass
class SSHTestEnv:
    """The session's server, test users and remote Python; ``overrides`` builds launcher settings."""

    server: SSHServer
    python: str
    run_id: str

    def home(self, user: str = USERS[0]) -> Path:
        return Path("/home") / user

    def remote_dir(self, name: str, user: str = USERS[0]) -> str:
        """A fresh remote_dir for one test (``~/hrl-tests/<run>/<name>``)."""
        return f"{TESTS_DIR}/{self.run_id}/{name}"  # relative: under the remote home

    def remote_path(self, name: str, user: str = USERS[0]) -> Path:
        return self.home(user) / TESTS_DIR / self.run_id / name

    def overrides(self, name: str, *, hosts: str | None = None, **extra: object) -> list[str]:
        """``hydra.launcher.*`` overrides of a fast, loopback remote_ssh launch."""
        settings: dict[str, object] = {
            "hosts": hosts or f"[{self.server.alias()}]",
            "ssh_config": str(self.server.ssh_config),
            "python": self.python,
            "remote_dir": self.remote_dir(name),
            "poll_interval_s": 0.1,
            "connect_timeout_s": 5,
            "command_timeout_s": 30,
            "retries": 1,
            "kill_grace_s": 1,
        }
        settings.update(extra)
        return [f"hydra.launcher.{k}={v}" for k, v in settings.items()]

    def settings(self, name: str, **extra: object) -> dict[str, object]:
        """The same as a plain dict for ``RemoteSSHSettings.from_mapping``."""
        cfg: dict[str, object] = {
            "hosts": [self.server.alias()],
            "ssh_config": str(self.server.ssh_config),
            "python": self.python,
            "remote_dir": self.remote_dir(name),
            "poll_interval_s": 0.1,
            "connect_timeout_s": 5,
            "command_timeout_s": 30,
            "retries": 1,
            "kill_grace_s": 1,
        }
        cfg.update(extra)
        return cfg


@pytest.fixture(scope="session", name="ssh_env")
def ssh_env_fixture() -> Iterator[SSHTestEnv]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with _machine_lock():  # other test sessions on this machine share users and venv
        ensure_users()
        python = ensure_remote_python()
    server = new_server("sshd")
    env = SSHTestEnv(server=server, python=python, run_id=f"run-{os.getpid()}-{secrets.token_hex(2)}")
    try:
        yield env
    finally:
        server.stop()
        kill_run_processes(env.run_id)
        remove_shared_dirs()
        for user in USERS:
            shutil.rmtree(env.home(user) / TESTS_DIR / env.run_id, ignore_errors=True)
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(name="extra_sshd")
def extra_sshd_fixture() -> Iterator[SSHServer]:
    """A second server of its own, for fault tests that stop or freeze it."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with _machine_lock():
        ensure_users()
    server = new_server("sshd2")
    try:
        yield server
    finally:
        server.resume()
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


# --- a small project to launch -------------------------------------------------------------
APP = '''\
"""Test app for remote_ssh: behaves according to its config, reports where and how it ran."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    started = time.time()
    if cfg.record:
        with open(cfg.record, "a") as f:
            f.write(f"{cfg.x} {os.getpid()} {os.getuid()} {started}\\n")
    deadline = time.time() + 60
    while cfg.wait_for and not os.path.exists(cfg.wait_for) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(cfg.sleep)
    if cfg.x in cfg.raise_on:
        raise ValueError(f"bad x={cfg.x}")
    if cfg.x in cfg.exit_on:
        print(f"job {cfg.x} exits hard", file=sys.stderr, flush=True)
        os._exit(3)
    if cfg.orphan:
        argv = ["sh", "-c", "trap '' TERM; exec sleep 300"] if cfg.orphan == "stubborn" else ["sleep", "300"]
        child = subprocess.Popen(argv)
        (out / "orphan.pid").write_text(str(child.pid))
    import helper

    result = {
        "x": cfg.x,
        "text": cfg.text,
        "helper": helper.VERSION,
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "slot": os.environ.get("HRL_SLOT"),
        "token": os.environ.get("HRL_TEST_TOKEN"),
        "started": started,
        "ended": time.time(),
    }
    (out / "result.json").write_text(json.dumps(result))
    print(f"done x={cfg.x}")
    return result


if __name__ == "__main__":
    main()
'''

APP_CONFIG = """\
x: 0
text: ""
record: ""
wait_for: ""
sleep: 0
raise_on: []
exit_on: []
orphan: ""
hydra:
  job:
    chdir: false
"""


def make_project(root: Path, version: str = "v1") -> Path:
    """A project dir: app.py, conf/, helper.py, plus files the default excludes keep home."""
    (root / "conf").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(APP_CONFIG)
    (root / "helper.py").write_text(f'VERSION = "{version}"\n')
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"\0" * 1024)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    return root


_SHARED_ROOT = Path(f"/tmp/hrl-shared-{os.getpid()}-{secrets.token_hex(3)}")


def shared_dir(prefix: str) -> Path:
    """A world-writable dir the jobs (test users) and the test (root) both use.

    All of them live under one directory per process, removed by :func:`remove_shared_dirs`.
    """
    _SHARED_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = _SHARED_ROOT / f"{prefix}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    return path


def remove_shared_dirs() -> None:
    shutil.rmtree(_SHARED_ROOT, ignore_errors=True)


def shared_file(prefix: str) -> Path:
    """A file in a :func:`shared_dir` that every test user may append to."""
    path = shared_dir(prefix) / "file.txt"
    path.touch()
    os.chmod(path, 0o666)
    return path
