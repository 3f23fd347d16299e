"""A real single-node Slurm 22.05 cluster on this machine, for the tests and the benchmark.

``SlurmCluster(root).start()`` brings up munged, a private mariadbd, slurmdbd, slurmctld and
slurmd (Debian packages, see :data:`APT_PACKAGES`) on loopback ports; ``stop()`` cancels what
is left in the queue and stops every daemon it started by its PID file. Client commands find
the cluster through ``$SLURM_CONF`` (:attr:`SlurmCluster.env`).

Facts this relies on (Debian 12, Slurm 22.05):

* munged runs as the ``munge`` user and needs ``/run/munge``; one already running is reused
  (and left running), one started here is stopped with the cluster.
* mariadbd gets a private datadir, socket and port and runs with ``--skip-grant-tables``: no
  ``mariadb-install-db`` needed and slurmdbd connects as root without a password (loopback only).
* slurmdbd reads ``slurmdbd.conf`` (mode 600) from the folder of ``$SLURM_CONF``; the cluster
  must be added once with ``sacctmgr -i add cluster``.
* ``proctrack/linuxproc`` + ``task/none`` (no cgroups in here); ``select/cons_tres`` with
  ``CR_Core_Memory`` and a ``DefMemPerCPU`` (else every job takes the whole node);
  ``batch_sched_delay=0`` (else arrays start at 2 tasks / 3 s); more CPUs than the machine has
  are declared with ``SlurmdParameters=config_overrides`` so that more tasks run at once.
* GPUs (``gpus``): ``GresTypes=gpu``, ``Gres=gpu:N`` on the node and a ``gres.conf`` with
  ``AutoDetect=off`` whose ``File=`` entries are empty files (slurmd only needs them to exist);
  ``AccountingStorageTRES=gres/gpu`` puts them in sacct's ``ReqTRES``/``AllocTRES``.
* ``PreemptType=preempt/partition_prio`` with ``PreemptMode=CANCEL``: a job of a partition with a
  higher ``PriorityTier`` (``scontrol create partition``) cancels the jobs it needs the resources
  of, which end ``PREEMPTED`` and are not requeued, whatever their ``--requeue``.
* PID 1 here reaps slowly: a killed daemon can linger as a zombie, so "gone" means "no such
  PID or state Z in /proc/PID/status".

The pytest fixtures at the bottom are registered as a plugin by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server")
BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mariadbd")
CLUSTER_NAME = "hrltest"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_PID_FILE = Path("/run/munge/munged.pid")
STOP_TIMES_LOG = Path(tempfile.gettempdir()) / "hrl-slurm-stop-times.log"  # see SlurmCluster.stop


class ClusterError(RuntimeError):
    """The test cluster could not be brought up."""


# --- packages ----------------------------------------------------------------------------------
def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_packages(timeout_s: float = 600.0) -> str | None:
    """Install the Debian packages if they are missing; return why the cluster cannot run, or None."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"Slurm test cluster needs the Debian packages {' '.join(APT_PACKAGES)} (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=timeout_s, check=False)
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not install {' '.join(APT_PACKAGES)}: {exc}"
    still = missing_binaries()
    if still:
        return f"could not install {' '.join(APT_PACKAGES)} (missing {still}): {proc.stderr[-500:]}"
    return None


LMOD_PACKAGE = "lmod"  # Debian's Lmod: the site module system the ``modules`` tests load modulefiles with
LMOD_SITE_DIR = Path("/etc/lmod/modules")  # on Debian's default MODULEPATH (/etc/lmod/modulespath)


def ensure_lmod(timeout_s: float = 600.0) -> str | None:
    """Install Debian's ``lmod`` if it is missing; return why it cannot be used, or None."""
    if Path("/etc/profile.d/lmod.sh").exists() and LMOD_SITE_DIR.is_dir():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"the modules tests need Debian's {LMOD_PACKAGE} package (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", LMOD_PACKAGE],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not install {LMOD_PACKAGE}: {exc}"
    if not Path("/etc/profile.d/lmod.sh").exists():
        return f"could not install {LMOD_PACKAGE}: {proc.stderr[-500:]}"
    LMOD_SITE_DIR.mkdir(parents=True, exist_ok=True)
    return None


# --- processes ---------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie waiting for a slow PID 1."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    match = re.search(r"^State:\s+(\S)", status, re.M)
    return bool(match) and match.group(1) not in ("Z", "X")


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_pid(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if ``pid`` is still alive after ``timeout_s``; bounded."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check, timeout_s: float, logs: Sequence[Path] = (), interval_s: float = 0.1) -> None:
    """Call ``check()`` until it is truthy; raise ``ClusterError`` with log tails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    tails = "\n".join(f"--- {p} ---\n{_tail(p)}" for p in logs)
    raise ClusterError(f"{what} not ready after {timeout_s:g} s\n{tails}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the cluster -------------------------------------------------------------------------------
@dataclass
class SlurmCluster:
    """One single-node cluster living in ``root``. Use as a context manager or start()/stop()."""

    root: Path
    cpus: int = 8
    max_array_size: int = 1001
    def_mem_per_cpu_mb: int = 100
    kill_wait_s: int = 2
    gpus: int = 0  # GPUs the node declares (gres/gpu); their "devices" are empty files, see _gres_lines
    max_job_count: int = 10000  # jobs slurmctld keeps (finished ones stay MinJobAge=300 s); the benchmark raises it
    hostname: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    started: list[str] = field(default_factory=list)  # daemons we started, in start order
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.etc = self.root / "etc"
        self.log_dir = self.root / "log"
        self.run_dir = self.root / "run"
        self.conf = self.etc / "slurm.conf"
        self.ports = {name: free_port() for name in ("ctld", "slurmd", "dbd", "mysql")}

    # public ------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point Slurm's client commands at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def command_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run(self, *argv: str, timeout_s: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(argv), env=self.command_env(), capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 90.0) -> None:
        """Bring every daemon up; on failure stop what was started and raise ``ClusterError``."""
        deadline = time.monotonic() + timeout_s
        for d in (self.etc, self.log_dir, self.run_dir, self.root / "state", self.root / "spool", self.root / "db"):
            d.mkdir(parents=True, exist_ok=True)
        self._kill_leftovers()
        try:
            self._write_configs()
            self._start_munge(deadline)
            self._start_mariadb(deadline)
            self._start_slurmdbd(deadline)
            self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME, timeout_s=_left(deadline))
            self._start_slurmctld(deadline)
            self._start_slurmd(deadline)
            wait_for("sacct", self.sacct_works, _left(deadline), [self.log_dir / "slurmdbd.log"], 0.3)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel remaining jobs, then stop our daemons (newest first) by PID file; bounded. How
        long each step took goes to ``STOP_TIMES_LOG`` (a slow teardown shows which step)."""
        steps: list[str] = []
        tic = time.monotonic()
        if "slurmctld" in self.started:
            try:
                self.run("scancel", "--full", "--quiet", f"--partition={self.partition}", timeout_s=10, check=False)
                wait_for("empty queue", self.queue_empty, 20.0, interval_s=0.3)
            except (ClusterError, OSError, subprocess.TimeoutExpired):
                pass
            steps.append(f"empty queue {time.monotonic() - tic:.1f}s")
        for name in reversed(self.started):
            tic = time.monotonic()
            self._stop_daemon(name)
            steps.append(f"{name} {time.monotonic() - tic:.1f}s")
        self.started.clear()
        with contextlib.suppress(OSError), STOP_TIMES_LOG.open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {self.root}: {', '.join(steps)}\n")

    def _stop_daemon(self, name: str) -> None:
        """Stop by PID file (or the PID we started), then reap our child so no zombie is left."""
        proc = self.procs.pop(name, None)
        pid = read_pid(self._pid_file(name)) or (proc.pid if proc else None)
        if pid is not None:
            stop_pid(pid)
        if proc is not None:
            if proc.poll() is None:
                stop_pid(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    partition = "debug"

    def sacct_works(self) -> bool:
        return self.run("sacct", "-n", "-X", "-j", "1", timeout_s=10, check=False).returncode == 0

    def queue_empty(self) -> bool:
        proc = self.run("squeue", "-h", "-o", "%i", timeout_s=10, check=False)
        return proc.returncode == 0 and not proc.stdout.strip()

    def node_state(self) -> str:
        proc = self.run("sinfo", "-h", "-N", "-o", "%T", timeout_s=10, check=False)
        return proc.stdout.strip()

    def stop_slurmdbd(self) -> None:
        """Take accounting away (sacct fails) until :meth:`restart_slurmdbd`."""
        self._stop_daemon("slurmdbd")
        if "slurmdbd" in self.started:
            self.started.remove("slurmdbd")

    def restart_slurmdbd(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        self._start_slurmdbd(deadline)
        wait_for("sacct", self.sacct_works, _left(deadline), [self.log_dir / "slurmdbd.log"], 0.3)

    def max_array_size_from_config(self) -> int:
        out = self.run("scontrol", "show", "config").stdout
        match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
        assert match, out
        return int(match.group(1))

    # configs -----------------------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return MUNGE_PID_FILE if name == "munged" else self.run_dir / f"{name}.pid"

    def _hardware(self) -> dict[str, str]:
        """``slurmd -C``'s view of this machine (CPUs, boards, sockets, cores, memory)."""
        out = subprocess.run(
            [_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        first = out.splitlines()[0]
        return dict(item.split("=", 1) for item in first.split() if "=" in item)

    def _write_configs(self) -> None:
        hw = self._hardware()
        real_cpus = int(hw.get("CPUs", "1"))
        cpus = max(self.cpus, real_cpus)
        memory = int(hw.get("RealMemory", "1024"))
        mem_per_cpu = min(self.def_mem_per_cpu_mb, max(1, memory // cpus))
        lines = [
            f"ClusterName={CLUSTER_NAME}",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={self.ports['ctld']}",
            f"SlurmdPort={self.ports['slurmd']}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CryptoType=crypto/munge",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self._pid_file('slurmctld')}",
            f"SlurmdPidFile={self._pid_file('slurmd')}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            f"DefMemPerCPU={mem_per_cpu}",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",
            f"MaxArraySize={self.max_array_size}",
            f"MaxJobCount={max(self.max_job_count, 2 * self.max_array_size)}",
            f"KillWait={self.kill_wait_s}",
            "ReturnToService=2",
            # a partition of a higher PriorityTier (created by a test) preempts this one's jobs by
            # cancelling them (state PREEMPTED, never requeued); with one partition, nothing is
            "PreemptType=preempt/partition_prio",
            "PreemptMode=CANCEL",
            "MpiDefault=none",
            "InactiveLimit=0",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.ports['dbd']}",
            "JobCompType=jobcomp/none",
            "SlurmdParameters=config_overrides",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            *self._gres_lines(),
            f"NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory}"
            + (f" Gres=gpu:{self.gpus}" if self.gpus else "")
            + " State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={self.ports['dbd']}",
                    "SlurmUser=root",
                    f"PidFile={self._pid_file('slurmdbd')}",
                    f"LogFile={self.log_dir / 'slurmdbd.log'}",
                    "DebugLevel=info",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={self.ports['mysql']}",
                    "StorageUser=root",
                    "StorageLoc=slurm_acct_db",
                ]
            )
            + "\n"
        )
        os.chmod(dbd, 0o600)

    def _gres_lines(self) -> list[str]:
        """slurm.conf lines declaring ``gpus`` GPUs, and their ``gres.conf`` (next to slurm.conf).

        There is no GPU here: each "device" is an empty file (slurmd only checks that a ``File=``
        exists; with ``task/none`` nothing is constrained by device). Slurm still schedules the
        GPUs as a consumable resource, accounts them (``gres/gpu`` in sacct's TRES) and sets
        ``CUDA_VISIBLE_DEVICES`` to the indices a job got.
        """
        gres_conf = self.etc / "gres.conf"
        if not self.gpus:
            gres_conf.unlink(missing_ok=True)
            return []
        devices = self.root / "gpu-devices"
        devices.mkdir(exist_ok=True)
        for i in range(self.gpus):
            (devices / f"gpu{i}").touch()
        gres_conf.write_text(
            f"AutoDetect=off\nNodeName={self.hostname} Name=gpu File={devices}/gpu[0-{self.gpus - 1}]\n"
        )
        return ["GresTypes=gpu", "AccountingStorageTRES=gres/gpu"]

    # daemons -----------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], log_name: str | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / (log_name or f"{name}.out"), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                argv,
                env=self.command_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.started.append(name)
        self.procs[name] = proc
        return proc

    def _start_munge(self, deadline: float) -> None:
        if _munge_works():
            return  # a munged is already serving the default socket (ours from before, or the system's)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        stale = read_pid(MUNGE_PID_FILE)
        if stale is not None and not pid_alive(stale):
            MUNGE_PID_FILE.unlink(missing_ok=True)
        subprocess.run(
            ["runuser", "-u", "munge", "--", _which("munged") or "munged", "--force"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        self.started.append("munged")  # ours: stopped with the cluster (one already running is left alone)
        wait_for("munged", _munge_works, _left(deadline), [Path("/var/log/munge/munged.log")])

    def _start_mariadb(self, deadline: float) -> None:
        datadir = self.root / "db"
        self._spawn(
            "mariadbd",
            [
                _which("mariadbd") or "mariadbd",
                "--no-defaults",
                f"--datadir={datadir}",
                f"--socket={self.run_dir / 'mysql.sock'}",
                f"--port={self.ports['mysql']}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self._pid_file('mariadbd')}",
                "--user=root",
                "--skip-grant-tables",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-buffer-pool-size=64M",
                "--innodb-log-file-size=16M",
                f"--log-error={self.log_dir / 'mariadbd.log'}",
            ],
        )
        wait_for("mariadbd", lambda: _port_open(self.ports["mysql"]), _left(deadline), [self.log_dir / "mariadbd.log"])

    def _start_slurmdbd(self, deadline: float) -> None:
        self._spawn("slurmdbd", [_which("slurmdbd") or "slurmdbd", "-D"])
        wait_for(
            "slurmdbd",
            lambda: self.run("sacctmgr", "-n", "show", "cluster", timeout_s=10, check=False).returncode == 0,
            _left(deadline),
            [self.log_dir / "slurmdbd.log", self.log_dir / "slurmdbd.out"],
            0.3,
        )

    def _start_slurmctld(self, deadline: float) -> None:
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-i"])
        wait_for(
            "slurmctld",
            lambda: self.run("scontrol", "ping", timeout_s=10, check=False).stdout.count("UP") > 0,
            _left(deadline),
            [self.log_dir / "slurmctld.log", self.log_dir / "slurmctld.out"],
            0.2,
        )

    def _start_slurmd(self, deadline: float) -> None:
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-N", self.hostname])
        wait_for(
            "slurmd (node idle)",
            lambda: self.node_state() in ("idle", "mixed"),
            _left(deadline),
            [self.log_dir / "slurmd.log", self.log_dir / "slurmctld.log"],
            0.2,
        )

    def _kill_leftovers(self) -> None:
        """Stop daemons a crashed earlier run left behind in this root (by PID file)."""
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd"):
            pid = read_pid(self._pid_file(name))
            if pid is not None and pid_alive(pid):
                stop_pid(pid)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.5)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists() or _which("munge") is None:
        return False
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=False)
        if cred.returncode != 0:
            return False
        ok = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ok.returncode == 0


# --- helpers for tests and the benchmark --------------------------------------------------------
SLURM_COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "scontrol")
STANDIN_DIR = Path(__file__).resolve().parent / "container_standin"


class CommandLog:
    """Wrapper scripts named like Slurm's commands that log each call, then exec the real binary.

    Put :attr:`bin_dir` first on ``PATH``; :meth:`calls` counts the logged calls per command.
    """

    def __init__(self, root: Path, commands: Sequence[str] = SLURM_COMMANDS) -> None:
        self.bin_dir = Path(root) / "bin"
        self.log = Path(root) / "calls.log"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        self.log.chmod(0o666)  # jobs and ssh logins of other users log here too
        for name in commands:
            real = _which(name)
            if real is None:
                raise ClusterError(f"{name} not found")
            script = self.bin_dir / name
            script.write_text(
                f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >>{shlex.quote(str(self.log))}\nexec {shlex.quote(real)} "$@"\n'
            )
            script.chmod(0o755)

    def lines(self, command: str | None = None) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [line for line in lines if command is None or line.split(" ", 1)[0] == command]

    def calls(self, command: str) -> int:
        return len(self.lines(command))

    def reset(self) -> None:
        self.log.write_text("")


def skeleton_image(path: Path, marker: str = "inside the test image") -> Path:
    """A directory image for charliecloud: empty dirs plus /etc/hrl-container-marker; the
    stand-in ``singularity`` binds the host's /usr into it, so no debootstrap is needed."""
    for d in ("usr", "etc", "dev", "proc", "sys", "tmp", "home", "root", "run", "var", "mnt"):
        (path / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        if not (path / link).is_symlink():
            (path / link).symlink_to(f"usr/{link}")
    for name in ("passwd", "group", "hosts", "resolv.conf"):
        (path / "etc" / name).touch()
    (path / "etc" / "hrl-container-marker").write_text(marker + "\n")
    return path


def launch_sweep(
    task_function: object,
    job_overrides: Sequence[Sequence[str]],
    overrides: Sequence[str],
    task_name: str = "slurm_test",
) -> list:
    """Launch one batch through ``hydra/launcher=slurm`` in this process, as Hydra's sweeper
    would, and return the launcher's ``JobReturn`` list (failed jobs included, nothing raised).

    Use with the ``hydra_restore_singletons`` fixture; ``overrides`` configure Hydra
    (``hydra.sweep.dir=...``, ``hydra.launcher.*``), ``job_overrides`` are the jobs' own.
    """
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name=task_name, config_search_path=create_config_search_path(None))
    cfg = hydra.compose_config(
        config_name=None, overrides=["hydra/launcher=slurm", *overrides], run_mode=RunMode.MULTIRUN
    )
    HydraConfig.instance().set_config(cfg)
    context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=context,
        task_function=task_function,
        config=cfg,  # type: ignore[arg-type]
    )
    return list(launcher.launch([list(o) for o in job_overrides], initial_job_idx=0))


def default_output_files() -> set[Path]:
    """``slurm-<id>.out`` files (Slurm's default output, in a job's working dir) in the repository and
    the current dir: every job of ours names its ``--output``, so the session fixture fails on new ones."""
    dirs = {Path(__file__).resolve().parent.parent, Path.cwd()}
    return {p for d in dirs for p in d.glob("slurm-*.out")}


def wait_until(what: str, check, timeout_s: float, interval_s: float = 0.5):
    """Poll ``check()`` until it returns something truthy (returned); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout_s:g} s")
        time.sleep(interval_s)


# --- pytest fixtures ---------------------------------------------------------------------------
# Registered as a plugin by tests/conftest.py (never imported by a test module); the cluster is
# started once per session however many modules use it.
try:
    import pytest
except ImportError:  # the benchmark imports this module without pytest
    pytest = None  # type: ignore[assignment]

TEST_MAX_ARRAY_SIZE = 5
TEST_GPUS = 4  # the node's stand-in GPUs (gres/gpu, see SlurmCluster._gres_lines)


if pytest is not None:

    @pytest.fixture(scope="session", name="slurm_cluster")
    def slurm_cluster_fixture() -> Iterator[SlurmCluster]:
        """The session's cluster (MaxArraySize=5 so that splitting is exercised, 4 stand-in GPUs);
        skips without Slurm."""
        reason = ensure_packages()
        if reason is not None:
            pytest.skip(reason)
        root = Path(tempfile.mkdtemp(prefix="hrl-slurm-"))
        os.chmod(root, 0o755)  # non-root users (the login_host tests' ssh logins) read slurm.conf
        cluster = SlurmCluster(root, max_array_size=TEST_MAX_ARRAY_SIZE, gpus=TEST_GPUS)
        saved = {k: os.environ.get(k) for k in cluster.env}
        strays_before = default_output_files()
        cluster.start()
        os.environ.update(cluster.env)
        try:
            yield cluster
        finally:
            cluster.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(root, ignore_errors=True)
            strays = sorted(default_output_files() - strays_before)
            for path in strays:
                path.unlink(missing_ok=True)
            assert not strays, f"jobs without an --output wrote Slurm's default output files: {strays}"

    @pytest.fixture(name="slurm_calls")
    def slurm_calls_fixture(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CommandLog:
        """Every Slurm command run from here on (also inside jobs) is logged: ``slurm_calls.calls("sbatch")``."""
        log = CommandLog(tmp_path / "slurm-calls")
        monkeypatch.setenv("PATH", f"{log.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        return log
