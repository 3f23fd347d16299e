"""OpenSSH connections: one authenticated ControlMaster per host, and every remote script and
rsync run as a session on it (bounded in time, retried on a fresh master after transport errors).

Design: docs/remote_ssh.md ("Connections"); why OpenSSH, not paramiko: docs/design.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from launcher_core.errors import BackendError, ConfigError

log = logging.getLogger("launcher_core.remote.ssh")

T = TypeVar("T")

# rsync exit codes that mean "the transport broke" (worth a retry), see rsync(1) EXIT VALUES.
RSYNC_TRANSPORT_CODES = frozenset({10, 12, 30, 35, 255})
SSH_TRANSPORT_CODE = 255

# stderr fragments of failures that a retry cannot fix
_FATAL_PATTERNS = (
    ("Host key verification failed", "host key verification failed"),
    ("REMOTE HOST IDENTIFICATION HAS CHANGED", "the host key CHANGED"),
    ("No matching host key", "no matching host key type"),
    ("Permission denied", "authentication failed (permission denied)"),
    ("Could not resolve hostname", "the host name cannot be resolved"),
    ("Bad configuration option", "the ssh config file has an error"),
    ("Too many authentication failures", "too many authentication failures"),
)

_HOST_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s\[\]]+)(?::(?P<port>\d+))?$")


class SSHTransportError(BackendError):
    """ssh or rsync could not talk to the host (connection refused, timeout, link died)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class RemoteCommandError(BackendError):
    """A remote script ran but exited with an error (never retried: it would fail again)."""


@dataclass(frozen=True)
class HostAddress:
    """Where ssh connects: an alias from ssh_config, or ``user@host[:port]``."""

    label: str  # as the user wrote it; also the key of handles and logs
    destination: str  # the destination argument of ssh (alias, host or user@host)
    port: int | None = None

    @classmethod
    def parse(cls, text: str, key: str = "hydra.launcher.hosts") -> HostAddress:
        label = text = str(text).strip()
        if text.startswith("ssh://"):
            text = text[len("ssh://") :].rstrip("/")
        match = _HOST_RE.match(text)
        if not text or match is None or text.startswith("-"):
            raise ConfigError(
                f"{key}: {text!r} is not a host: use an ssh_config alias like 'gpu1' or 'user@host' or 'user@host:2222'"
            )
        host = match.group("host").strip("[]")
        user = match.group("user")
        port = match.group("port")
        if port is not None and not 0 < int(port) < 65536:
            raise ConfigError(f"{key}: port {port} of {text!r} is out of range")
        destination = f"{user}@{host}" if user else host
        return cls(label=label, destination=destination, port=int(port) if port else None)


@dataclass(frozen=True)
class SSHOptions:
    """Connection settings shared by every host of a sweep (from ``hydra.launcher``)."""

    ssh_config: str | None = None
    connect_timeout_s: float = 15.0
    command_timeout_s: float = 120.0
    rsync_timeout_s: float = 900.0
    server_alive_interval_s: float = 10.0
    server_alive_count_max: int = 3
    accept_new_host_keys: bool = False
    batch_mode: bool | None = None  # None: interactive auth (2FA) only when stdin is a TTY
    control_persist_s: int = 600
    retries: int = 3
    rsync_path: str | None = None  # --rsync-path on the remote side
    ssh_binary: str = "ssh"
    rsync_binary: str = "rsync"


@dataclass
class ConnectionStats:
    """What a connection did; the benchmark and tests read it."""

    masters_started: int = 0
    commands: int = 0
    rsyncs: int = 0
    retries: int = 0


def resolve_host(options: SSHOptions, address: HostAddress, timeout_s: float = 15.0) -> dict[str, list[str]]:
    """The effective OpenSSH settings of a host (``ssh -G``): what ``ssh`` itself would use.

    ``ssh -G`` evaluates the config file (Host and Match blocks, includes, defaults) without
    connecting, so error messages can name the real HostName/User/Port/known_hosts file.
    """
    argv = [options.ssh_binary, "-G", *_config_args(options, address), address.destination]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"host {address.label}: cannot run {options.ssh_binary} -G: {exc}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit code {proc.returncode}"
        raise BackendError(f"host {address.label}: ssh cannot read its configuration: {detail}")
    settings: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key:
            settings.setdefault(key.lower(), []).append(value)
    return settings


def _config_args(options: SSHOptions, address: HostAddress) -> list[str]:
    args: list[str] = []
    if options.ssh_config:
        args += ["-F", options.ssh_config]
    if address.port is not None:
        args += ["-p", str(address.port)]
    return args


def describe(settings: dict[str, list[str]]) -> str:
    """``user@hostname:port (via jump)`` from ``ssh -G`` output, for messages."""

    def first(key: str) -> str:
        return (settings.get(key) or [""])[0]

    text = f"{first('user')}@{first('hostname')}:{first('port')}"
    jump = first("proxyjump")
    if jump and jump != "none":
        text += f" via {jump}"
    return text


class SSHConnection:
    """One host: a ControlMaster started on first use, commands and rsyncs multiplexed on it.

    Thread-safe for one user at a time per host (the backend uses one thread per host).
    """

    def __init__(self, address: HostAddress, options: SSHOptions, socket: Path) -> None:
        self.address = address
        self.options = options
        self.socket = socket
        self.stats = ConnectionStats()
        self.settings: dict[str, list[str]] | None = None
        self._master_pid: int | None = None
        self._started = False
        self._lock = threading.RLock()

    @property
    def label(self) -> str:
        return self.address.label

    # --- argv building --------------------------------------------------------------------
    def _common_args(self) -> list[str]:
        opts = self.options
        return [
            *_config_args(opts, self.address),
            "-o",
            f"ControlPath={self.socket}",
            "-o",
            f"StrictHostKeyChecking={'accept-new' if opts.accept_new_host_keys else 'yes'}",
            "-o",
            f"ConnectTimeout={max(1, round(opts.connect_timeout_s))}",
            "-o",
            f"ServerAliveInterval={max(1, round(opts.server_alive_interval_s))}",
            "-o",
            f"ServerAliveCountMax={max(1, opts.server_alive_count_max)}",
            "-o",
            "ClearAllForwardings=yes",
            "-T",
        ]

    def client_args(self) -> list[str]:
        """ssh argv (without destination) of a client that may only use the master."""
        return [
            self.options.ssh_binary,
            *self._common_args(),
            "-o",
            "ControlMaster=no",
            "-o",
            "BatchMode=yes",
            # if the master is gone, fail instead of opening a new connection behind our back
            "-o",
            "ProxyCommand=false",
        ]

    def rsync_shell(self) -> str:
        """The ``rsync -e`` value: ssh through this host's master."""
        return shlex.join(self.client_args())

    def remote(self, path: str) -> str:
        """rsync's ``host:path`` for a remote path."""
        return f"{self.address.destination}:{path}"

    def interactive(self) -> bool:
        """Whether the login may prompt (password, 2FA) on the terminal."""
        if self.options.batch_mode is not None:
            return not self.options.batch_mode
        try:
            return sys.stdin is not None and sys.stdin.isatty()
        except (ValueError, OSError):
            return False

    # --- master ---------------------------------------------------------------------------
    def ensure_master(self) -> None:
        with self._lock:
            if self._started and self._master_alive():
                return
            self._stop_master()
            self._start_master()

    def _start_master(self) -> None:
        if self.settings is None:
            self.settings = resolve_host(self.options, self.address)
        interactive = self.interactive()
        argv = [
            self.options.ssh_binary,
            *self._common_args(),
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPersist={max(1, self.options.control_persist_s)}",
            "-o",
            f"BatchMode={'no' if interactive else 'yes'}",
            "-f",
            "-N",
            self.address.destination,
        ]
        # A backgrounded master keeps inherited pipes open: send its stderr to a file, never a pipe.
        timeout = self.options.connect_timeout_s + (300.0 if interactive else 30.0)
        with tempfile.TemporaryFile(mode="w+b") as err:
            try:
                proc = subprocess.run(
                    argv,
                    stdin=None if interactive else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=timeout,
                )
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
            err.seek(0)
            stderr = err.read().decode(errors="replace").strip()
        self.stats.masters_started += 1
        if code != 0:
            raise self._connect_error(code, stderr)
        self._started = True
        self._master_pid = self._query_master_pid()
        log.debug("ssh master for %s started (pid %s)", self.label, self._master_pid)

    def _connect_error(self, code: int | None, stderr: str) -> SSHTransportError:
        where = describe(self.settings) if self.settings else self.address.destination
        if code is None:
            return SSHTransportError(f"host {self.label} ({where}): connecting timed out")
        for needle, meaning in _FATAL_PATTERNS:
            if needle in stderr:
                hint = ""
                if "host key" in meaning or "CHANGED" in meaning:
                    known = " ".join((self.settings or {}).get("userknownhostsfile", []))
                    hint = (
                        f". Add the host's key to the known_hosts file ({known}), e.g. after checking its "
                        "fingerprint: `ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts`; or set "
                        "hydra.launcher.accept_new_host_keys=true to accept a key never seen before "
                        "(a changed key is always refused)"
                    )
                return SSHTransportError(
                    f"host {self.label} ({where}): {meaning}{hint}\nssh said: {_tail(stderr)}", retryable=False
                )
        return SSHTransportError(f"host {self.label} ({where}): cannot connect: {_tail(stderr) or f'exit {code}'}")

    def _control(self, command: str, timeout_s: float = 10.0) -> subprocess.CompletedProcess[str] | None:
        argv = [
            self.options.ssh_binary,
            *_config_args(self.options, self.address),
            "-o",
            f"ControlPath={self.socket}",
            "-O",
            command,
            self.address.destination,
        ]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None

    def _query_master_pid(self) -> int | None:
        proc = self._control("check")
        if proc is None or proc.returncode != 0:
            return None
        match = re.search(r"pid=(\d+)", proc.stderr + proc.stdout)
        return int(match.group(1)) if match else None

    def _master_alive(self) -> bool:
        if not self.socket.exists():
            return False
        if self._master_pid is not None:
            return _is_ssh_process(self._master_pid)
        proc = self._control("check")  # pid unknown: ask the master itself (local, no connection)
        return proc is not None and proc.returncode == 0

    def _stop_master(self) -> None:
        """Close the master; kill it if it does not answer (a stopped server can make it hang)."""
        pid = self._master_pid
        self._master_pid = None
        self._started = False
        if self.socket.exists():
            proc = self._control("exit", timeout_s=5.0)
            if proc is None or proc.returncode != 0:
                log.debug("ssh -O exit for %s failed; killing the master", self.label)
        if pid is not None:
            _terminate_ssh(pid)
        self.socket.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._stop_master()

    # --- commands -------------------------------------------------------------------------
    def run_script(self, script: str, *, what: str, timeout_s: float | None = None) -> str:
        """Run a POSIX sh script on the host (through the master); return its stdout.

        Raises ``SSHTransportError`` when ssh itself failed (exit 255 or timeout) and
        ``RemoteCommandError`` when the script failed.
        """
        return self.run_script_bytes(script, what=what, timeout_s=timeout_s).decode(errors="replace")

    def run_script_bytes(self, script: str, *, what: str, timeout_s: float | None = None) -> bytes:
        """:meth:`run_script`, returning stdout as bytes."""
        timeout = timeout_s or self.options.command_timeout_s
        argv = [*self.client_args(), self.address.destination, "sh -s"]
        self.stats.commands += 1
        try:
            proc = subprocess.run(argv, input=script.encode(), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SSHTransportError(f"host {self.label}: {what} got no answer within {timeout:g} s") from exc
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == SSH_TRANSPORT_CODE:
            raise SSHTransportError(f"host {self.label}: {what}: ssh failed: {_tail(stderr) or 'exit 255'}")
        if proc.returncode != 0:
            stdout = proc.stdout.decode(errors="replace")
            output = _tail("\n".join(s for s in (stdout.strip(), stderr.strip()) if s), 40)
            raise RemoteCommandError(f"host {self.label}: {what} failed (exit {proc.returncode}):\n{output}")
        return proc.stdout

    def rsync(self, args: Sequence[str], *, what: str, timeout_s: float | None = None) -> bytes:
        """Run rsync through the master; ``args`` holds sources/destination (use :meth:`remote`).
        Returns rsync's stdout (what ``--list-only`` lists)."""
        opts = self.options
        timeout = timeout_s or opts.rsync_timeout_s
        # -s: file names travel inside the rsync protocol, never through the remote shell
        argv = [opts.rsync_binary, "-s", "-e", self.rsync_shell(), f"--timeout={max(5, round(opts.command_timeout_s))}"]
        if opts.rsync_path:
            argv.append(f"--rsync-path={opts.rsync_path}")
        argv += list(args)
        self.stats.rsyncs += 1
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise SSHTransportError(f"host {self.label}: {what}: rsync did not finish within {timeout:g} s") from exc
        if proc.returncode == 0:
            return proc.stdout
        stderr = _tail(proc.stderr.decode(errors="replace"), 20)
        if proc.returncode in RSYNC_TRANSPORT_CODES:
            raise SSHTransportError(f"host {self.label}: {what}: rsync lost the connection: {stderr}")
        raise RemoteCommandError(f"host {self.label}: {what}: rsync failed (exit {proc.returncode}): {stderr}")

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the master up; on transport failures restart it, bounded, then fail.

        ``fn`` must be safe to repeat (every remote step of the backend is idempotent).
        """
        attempts = self.options.retries + 1
        last: SSHTransportError | None = None
        for attempt in range(1, attempts + 1):
            try:
                with self._lock:
                    self.ensure_master()
                    return fn()
            except SSHTransportError as exc:
                last = exc
                with self._lock:
                    self._stop_master()  # a hung master would hang the retry too
                if not exc.retryable or attempt == attempts:
                    break
                self.stats.retries += 1
                delay = min(2.0 ** (attempt - 1), 10.0)
                log.warning("%s (attempt %d of %d); retrying in %.0f s", exc, attempt, attempts, delay)
                time.sleep(delay)
        assert last is not None
        tried = f" after {attempt} attempts" if attempt > 1 else ""
        raise BackendError(f"{what} on host {self.label} failed{tried}: {last}") from last


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _is_ssh_process(pid: int) -> bool:
    """A live (not zombie) ``ssh`` process: a master whose parent is PID 1 may never be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    state = stat[stat.rfind(")") + 2 :].split()[0]
    return comm == "ssh" and state not in ("Z", "X")


def _terminate_ssh(pid: int, grace_s: float = 2.0) -> None:
    """SIGTERM (then SIGKILL) a master process, only while it still is an ``ssh`` process."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        if not _is_ssh_process(pid):
            break
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _is_ssh_process(pid):
            time.sleep(0.02)
    # a master forked by -f is our child only if this process is a child subreaper: reap it then
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class ConnectionPool:
    """The masters of one backend, one per host label, and their private socket directory."""

    options: SSHOptions
    connections: dict[str, SSHConnection] = field(default_factory=dict)
    _socket_dir: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, address: HostAddress) -> SSHConnection:
        with self._lock:
            return self._get(address)

    def _get(self, address: HostAddress) -> SSHConnection:
        conn = self.connections.get(address.label)
        if conn is None:
            if self._socket_dir is None:
                # short path in /tmp: unix socket paths are limited to ~104 bytes
                self._socket_dir = Path(tempfile.mkdtemp(prefix="hrl-ssh-", dir="/tmp"))
            conn = SSHConnection(address, self.options, self._socket_dir / f"{len(self.connections)}.sock")
            self.connections[address.label] = conn
        return conn

    def stats(self) -> ConnectionStats:
        total = ConnectionStats()
        for conn in self.connections.values():
            total.masters_started += conn.stats.masters_started
            total.commands += conn.stats.commands
            total.rsyncs += conn.stats.rsyncs
            total.retries += conn.stats.retries
        return total

    def close(self) -> None:
        for conn in self.connections.values():
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - closing the others matters more
                log.warning("closing the ssh connection to %s failed: %s", conn.label, exc)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
