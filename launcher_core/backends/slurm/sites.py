"""Where the cluster is: :class:`LocalSite` (this machine is a login node sharing the file
system with the compute nodes) or :class:`LoginSite` (``login_host``: a login node over SSH,
with the workspace layer of :mod:`launcher_core.remote`); see docs/slurm.md ("What runs where")."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher_core.backends.base import CleanReport, CleanRequest, Handle, remote_paths_of
from launcher_core.backends.slurm.accounting import (
    NODE_LOAD_ARGS,
    ExitInfo,
    SlurmCommands,
    exit_info_of,
    parse_node_loads,
)
from launcher_core.backends.slurm.handle import SlurmHandle
from launcher_core.backends.slurm.nodes import (
    SCONTROL_LINE,
    SCONTROL_TIMEOUT_S,
    TaskGpus,
    arrays_of,
    parse_task_gpus,
    scontrol_argv,
    scontrol_script,
)
from launcher_core.backends.slurm.options import SlurmOptions
from launcher_core.backends.slurm.sbatch import EXIT_FILE, RANKS_DIR, SLURM_DIR, TIMEOUTS_FILE
from launcher_core.errors import BackendError
from launcher_core.jobs import LAUNCHER_DIR, RESULT_FILE, JobSpec, SweepInfo
from launcher_core.runtime.worker import CODE_SNAPSHOT_ENV

log = logging.getLogger("launcher_core.slurm")

PYLIB_REL = f"{LAUNCHER_DIR}/{SLURM_DIR}/pylib"  # the shipped runtime, in the sweep dir (local and mirrored)


class LocalSite:
    """The launching machine is a login node: it runs the Slurm commands and shares the file
    system with the compute nodes, so job files are written and read in place."""

    def __init__(self, options: SlurmOptions) -> None:
        self.options = options
        self.commands = SlurmCommands(options.command_timeout_s)
        self.sweep_dir = ""
        self.code_dir = ""
        self.pythonpath: list[str] = []
        self.worker_module = "launcher_core.runtime.worker"
        self.default_python = sys.executable
        self.job_env: dict[str, str] = {}

    def prepare(self, sweep: SweepInfo, script_dirs: Sequence[str], dry_run: bool) -> None:
        self.sweep_dir, self.code_dir = str(sweep.sweep_dir), str(sweep.code_dir)
        self.pythonpath = list(script_dirs)
        if sweep.code_snapshot is not None:  # jobs import the code as it was at launch
            self.job_env = {CODE_SNAPSHOT_ENV: json.dumps([self.code_dir, str(sweep.code_snapshot)])}
        if not dry_run:
            for command in self.options.prepare_commands:
                log.info("prepare command: %s", command)
                proc = subprocess.run(
                    ["bash", "-c", command], cwd=sweep.code_dir, capture_output=True, text=True, timeout=3600
                )
                if proc.returncode != 0:
                    raise BackendError(_prepare_failed(command, proc.returncode, proc.stderr))

    def cluster_job_dir(self, spec: JobSpec) -> tuple[str, str]:
        """(output dir on the cluster, path relative to the sweep dir or "")."""
        return str(spec.output_dir), ""

    def upload(self, paths: Sequence[Path], cluster_dirs: Sequence[str]) -> None:
        """Nothing to upload: the files already are where the cluster reads them."""

    def exit_info(self, handles: Mapping[str, SlurmHandle]) -> dict[str, ExitInfo]:
        out = {}
        for job_id, handle in handles.items():
            ldir = Path(handle.launcher_dir)
            try:
                words = (ldir / EXIT_FILE).read_text().split()
            except OSError:
                words = []
            out[job_id] = exit_info_of(words, (ldir / RESULT_FILE).exists())
        return out

    def fetch(self, jobs: Mapping[str, SlurmHandle], local_dirs: Mapping[str, Path], pull_filter: Any) -> None:
        """Nothing to fetch: the cluster wrote the results into the shared sweep dir."""

    def before_poll(self, handles: Mapping[str, Handle]) -> None:
        """Nothing to prepare: :meth:`nodes_and_tails` reads here."""

    def nodes_and_tails(self, running: Mapping[str, Handle]) -> tuple[dict[str, Any], dict[str, Any], TaskGpus]:
        """The nodes' load (one ``sinfo``), the last stdout line of each running job, read in the
        shared sweep dir, and the GPUs of the running tasks (one ``scontrol`` per array)."""
        from launcher_core.machines import read_local_job

        if not running:
            return {}, {}, TaskGpus()
        proc = self.commands.run(["sinfo", *NODE_LOAD_ARGS])
        loads = parse_node_loads(proc.stdout if proc.returncode == 0 else "")
        tails = {j: read_local_job(Path(SlurmHandle.of(h).launcher_dir), None) for j, h in running.items()}
        lines: list[str] = []
        for array in arrays_of(SlurmHandle.of(h).slurm_job_id for h in running.values()):
            try:
                answer = self.commands.run(scontrol_argv(array), timeout_s=SCONTROL_TIMEOUT_S)
            except BackendError as exc:  # the GPUs go unnamed; the rest of the view stands
                log.debug("scontrol for array %s: %s", array, exc)
                continue
            lines += answer.stdout.splitlines() if answer.returncode == 0 else []
        return loads, tails, parse_task_gpus(lines)

    def read_log(self, handle: SlurmHandle, name: str, offset: int) -> bytes:
        try:
            with open(Path(handle.launcher_dir) / name, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def close(self) -> None:
        self.commands.close()


_RIDER_END = "__HRL_RIDER_END__"
NODE_LINE = "HRL-NODE"


class RemoteSlurmCommands(SlurmCommands):
    """Slurm's commands on the login node: each one is a session on the one SSH master connection
    (:mod:`launcher_core.remote.ssh`), after the ``login_setup`` lines (PATH, SLURM_CONF, module load)."""

    def __init__(self, conn: Any, setup: Sequence[str], timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.conn = conn
        self.setup = list(setup)
        # a script that rides along with the next command, in its session (``top``'s node probe);
        # its output lands in rider_output
        self.rider: str | None = None
        self.rider_output: str | None = None

    def run(self, argv: Sequence[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        self.calls[argv[0]] += 1
        rider, self.rider = self.rider, None
        script = "\n".join(
            [
                *self.setup,
                *([f"(\n{rider}\n) 2>/dev/null", f"echo {_RIDER_END}"] if rider is not None else []),
                'e="${TMPDIR:-/tmp}/hrl-err.$$"',
                f'{shlex.join(argv)} 2>"$e"',
                "rc=$?",
                'printf "\\n%s %s\\n" __HRL_RC__ "$rc"',
                'cat "$e"; rm -f "$e"',
            ]
        )
        out = self.script(script, what=argv[0], timeout_s=timeout_s)
        if rider is not None:
            self.rider_output, _, out = out.partition(f"{_RIDER_END}\n")
        stdout, sep, rest = out.rpartition("\n__HRL_RC__ ")
        if not sep:
            raise BackendError(f"{argv[0]} on {self.conn.label}: unexpected answer {out[-300:]!r}")
        code, _, stderr = rest.partition("\n")
        return subprocess.CompletedProcess(list(argv), int(code.strip() or 1), stdout, stderr)

    def shell(self, text: str, *, what: str, timeout_s: float | None = None) -> str:
        """Run a sh script on the login node after the ``login_setup`` lines (Slurm's commands
        work there as in :meth:`run`): one session."""
        return self.script("\n".join([*self.setup, text]), what=what, timeout_s=timeout_s)

    def script(self, text: str, *, what: str, timeout_s: float | None = None) -> str:
        """Run a sh script on the login node (bounded, retried on transport errors)."""
        timeout = timeout_s or self.timeout_s
        return self.conn.call(what, lambda: self.conn.run_script(text, what=what, timeout_s=timeout))


class LoginSite:
    """``login_host``: every Slurm command runs on the login node over one SSH connection, in
    remote_ssh's workspace layout there (:mod:`launcher_core.remote.workspace`); docs/slurm.md,
    "What runs where" and "``login_host`` in more detail"."""

    def __init__(self, options: SlurmOptions) -> None:
        from launcher_core.remote.ssh import ConnectionPool, HostAddress, SSHOptions

        assert options.login_host is not None
        self.options = options
        self.address = HostAddress.parse(options.login_host, "hydra.launcher.login_host")
        ssh = SSHOptions(ssh_config=options.ssh_config, command_timeout_s=options.command_timeout_s)
        self.pool = ConnectionPool(ssh)
        self.conn = self.pool.get(self.address)
        self.commands = RemoteSlurmCommands(self.conn, options.login_setup, options.command_timeout_s)
        self.sweep_dir = self.code_dir = self.local_sweep_dir = ""
        self.pythonpath: list[str] = []
        self.worker_module = "launcher_core.runtime.remote_worker"
        self.job_env: dict[str, str] = {}  # the login node's own snapshot is the frozen code
        self.default_python = "python3"
        self._runtime_files: list[str] = []  # the shipped runtime, relative to the local sweep dir
        self._arrays: list[str] = []  # the arrays whose GPUs ride along with the next poll

    def prepare(self, sweep: SweepInfo, script_dirs: Sequence[str], dry_run: bool) -> None:
        """Claim the mirrored sweep dir, sync the code into a new snapshot, ship the runtime and
        run ``prepare_commands`` there; a dry run only works out the paths (no connection)."""
        from launcher_core.remote.codesync import git_state, write_git_state
        from launcher_core.remote.workspace import (
            claim_workspace,
            default_remote_dir,
            new_snapshot_tag,
            path_inside,
            ship_runtime,
            sync_code_snapshot,
        )

        self.local_sweep_dir = str(sweep.sweep_dir)
        tag = new_snapshot_tag()
        remote_dir = self.options.remote_dir or default_remote_dir(sweep.code_dir)
        rel_sweep = path_inside(sweep.sweep_dir, sweep.code_dir)
        if dry_run:  # no connection: the layout prepare_script would claim, on a host where it is free
            shown = _home_relative(remote_dir)
            if not shown.startswith("/"):
                log.warning(
                    "dry run: remote_dir %r is in the home dir on %s, shown as ~", remote_dir, self.address.label
                )
            sweep_dir = f"{shown}/runs/{rel_sweep}" if rel_sweep else f"{shown}/runs/by-id/{sweep.sweep_id}"
            self._set_layout(sweep, script_dirs, shown, sweep_dir, tag)
            return
        workspace = claim_workspace(
            self.conn,
            remote_dir=remote_dir,
            sweep_id=sweep.sweep_id,
            tag=tag,
            rel_sweep=rel_sweep,
            host_key="slurm",
            where=f"login host {self.address.label}",
        )
        self._set_layout(sweep, script_dirs, workspace.remote_dir, workspace.sweep_dir, tag)
        write_git_state(git_state(Path(sweep.code_dir)), sweep.sweep_dir / LAUNCHER_DIR / SLURM_DIR / "code")
        if not workspace.snapshot_complete:
            sync_code_snapshot(self.conn, workspace, Path(sweep.code_dir), sweep.sweep_dir)
        self._runtime_files = ship_runtime(sweep.sweep_dir, PYLIB_REL)
        for command in self.options.prepare_commands:
            log.info("prepare command on %s: %s", self.address.label, command)
            body = "\n".join([*self.options.login_setup, f"cd {shlex.quote(self.code_dir)}", command])
            self.commands.script(body, what=f"prepare command {command!r}", timeout_s=3600)

    def _set_layout(
        self, sweep: SweepInfo, script_dirs: Sequence[str], remote_dir: str, sweep_dir: str, tag: str
    ) -> None:
        """Cluster paths of the sweep dir, the code snapshot and the jobs' PYTHONPATH."""
        from launcher_core.remote.workspace import path_inside

        self.sweep_dir = sweep_dir
        self.code_dir = f"{remote_dir}/snapshots/{sweep.sweep_id}/{tag}"
        rel_scripts = [path_inside(Path(d), sweep.code_dir) for d in script_dirs]
        pylib = f"{self.sweep_dir}/{PYLIB_REL}"
        self.pythonpath = [pylib, self.code_dir, *(f"{self.code_dir}/{r}" for r in rel_scripts if r)]

    def cluster_job_dir(self, spec: JobSpec) -> tuple[str, str]:
        from launcher_core.remote.workspace import path_inside

        rel = path_inside(spec.output_dir, self.local_sweep_dir)
        if not rel:
            raise BackendError(
                f"job #{spec.idx}: with login_host the sweep dir is mirrored on the cluster, so the job's "
                f"output dir {spec.output_dir} must be inside the sweep dir {self.local_sweep_dir}"
            )
        return f"{self.sweep_dir}/{rel}", rel

    def upload(self, paths: Sequence[Path], cluster_dirs: Sequence[str]) -> None:
        """One rsync of the files and the shipped runtime (local sweep dir -> remote sweep dir);
        stale results of earlier attempts in ``cluster_dirs`` (launcher dirs) are removed first."""
        from launcher_core.remote.workspace import upload_files

        local_root = Path(self.local_sweep_dir)
        files = [str(p.relative_to(local_root)) for p in paths] + self._runtime_files
        names = (RESULT_FILE, EXIT_FILE, TIMEOUTS_FILE, RANKS_DIR)
        stale = " ".join(shlex.quote(f"{d}/{name}") for d in cluster_dirs for name in names)
        logs = shlex.quote(f"{self.sweep_dir}/{LAUNCHER_DIR}/{SLURM_DIR}/logs")
        self.commands.script(f"mkdir -p {logs}\nrm -rf {stale}", what="preparing the job dirs")
        upload_files(self.conn, local_root, self.sweep_dir, files, what="upload of job files")

    def exit_info(self, handles: Mapping[str, SlurmHandle]) -> dict[str, ExitInfo]:
        """One ssh session: ``JOB_ID CODE|- 0|1`` per job."""
        lines = []
        for job_id, handle in handles.items():
            ldir = shlex.quote(handle.launcher_dir)
            lines.append(
                f"c=- n=; [ -s {ldir}/{EXIT_FILE} ] && read -r c n < {ldir}/{EXIT_FILE}; "
                f'r=0; [ -f {ldir}/{RESULT_FILE} ] && r=1; echo {shlex.quote(job_id)} "$r" "$c" ${{n:+"$n"}}'
            )
        out = self.commands.script("\n".join(lines), what="reading exit codes") if lines else ""
        info = {}
        for line in out.splitlines():
            words = line.split()  # JOB_ID 0|1 CODE|- [NODE]
            if len(words) in (3, 4) and words[0] in handles:
                info[words[0]] = exit_info_of(words[2:], words[1] == "1")
        return info

    def before_poll(self, handles: Mapping[str, Handle]) -> None:
        """The nodes' load (``sinfo``), the GPUs of the running tasks (``scontrol`` per array) and
        the jobs' log tails ride along with the poll's first command on the login node: one
        session for all (:meth:`nodes_and_tails` reads them)."""
        from launcher_core.machines import tail_script

        jobs = [(j, SlurmHandle.of(h).launcher_dir) for j, h in handles.items()]
        self._arrays = arrays_of(SlurmHandle.of(h).slurm_job_id for h in handles.values())
        sinfo = shlex.join(["sinfo", *NODE_LOAD_ARGS])
        self.commands.rider = f"{sinfo} | sed 's/^/{NODE_LINE} /'\n{scontrol_script(self._arrays)}\n{tail_script(jobs)}"
        self.commands.rider_output = None

    def nodes_and_tails(self, running: Mapping[str, Handle]) -> tuple[dict[str, Any], dict[str, Any], TaskGpus]:
        """What :meth:`before_poll` sent along (in a session of its own if no command took it)."""
        from launcher_core.machines import parse_probe

        rider, self.commands.rider = self.commands.rider, None
        out = self.commands.rider_output
        if out is None and rider is not None and running:
            out = self.commands.script(rider, what="reading the nodes and job logs")
        self.commands.rider_output = None
        if out is None:
            return {}, {}, TaskGpus()
        self.commands.calls["sinfo"] += 1
        self.commands.calls["scontrol"] += len(self._arrays)
        lines = out.split("\n")
        loads = parse_node_loads("\n".join(line[len(NODE_LINE) + 1 :] for line in lines if line.startswith(NODE_LINE)))
        gpus = parse_task_gpus(line[len(SCONTROL_LINE) + 1 :] for line in lines if line.startswith(SCONTROL_LINE))
        tails = parse_probe(out)[1]
        return loads, {j: tails[j] for j in running if j in tails}, gpus

    def fetch(self, jobs: Mapping[str, SlurmHandle], local_dirs: Mapping[str, Path], pull_filter: Any) -> None:
        from launcher_core.remote.workspace import fetch_job_dirs

        fetch_job_dirs(self.conn, jobs, local_dirs, pull_filter)

    def clean(self, request: CleanRequest) -> CleanReport:
        """Delete the mirrored job dirs (and, with ``sweep_handles``, the mirrored sweep dir and the
        sweep's snapshots) on the login node, with remote_ssh's checked paths and script."""
        from launcher_core.remote.workspace import clean_host, clean_workspaces

        label = self.address.label
        return clean_workspaces(
            request,
            host_of=lambda _h: label,
            remote_dir_of=lambda h: login_remote_dir(h, request.sweep_id),
            run=lambda plans: ({host: clean_host(self.conn, request.sweep_id, p) for host, p in plans.items()}, {}),
        )

    def read_log(self, handle: SlurmHandle, name: str, offset: int) -> bytes:
        from launcher_core.remote.workspace import read_remote_log

        return read_remote_log(self.conn, f"{handle.launcher_dir}/{name}", offset)

    def close(self) -> None:
        self.pool.close()


def login_remote_dir(handle: Handle, sweep_id: str) -> str:
    """The ``remote_dir`` of a login_host job, from its snapshot path
    ``<remote_dir>/snapshots/<sweep_id>/<tag>`` (handles do not store it); checked for cleaning."""
    from launcher_core.remote.paths import CleanRefused, check_root

    snapshot = remote_paths_of(handle).remote_cwd
    parts = str(snapshot or "").rstrip("/").split("/")
    if len(parts) < 4 or parts[-3] != "snapshots" or parts[-2] != sweep_id or not parts[-1]:
        raise CleanRefused(
            f"refusing to clean: the snapshot path {snapshot!r} of a job handle is not "
            f"<remote_dir>/snapshots/{sweep_id}/<tag>"
        )
    return check_root("/".join(parts[:-3]), f"the remote_dir of the snapshot path {snapshot!r}, i.e.")


def _home_relative(remote_dir: str) -> str:
    """``remote_dir`` as the login host resolves it (see ``remote_path_expr``), with ``~`` for the home
    dir there, which a dry run cannot ask for."""
    if remote_dir.startswith(("/", "~/")):
        return remote_dir
    return "~" if remote_dir in ("", "~") else f"~/{remote_dir}"


def _prepare_failed(command: str, code: int, stderr: str) -> str:
    return f"hydra.launcher.prepare_commands: {command!r} failed with code {code}: {stderr.strip()[-2000:]}"
