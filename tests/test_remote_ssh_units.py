"""remote_ssh pieces that need no sshd: settings, host parsing, the remote shell scripts (run
here with /bin/sh against real processes), the runner's retry guard, code sync helpers, the
plugin stand-ins of the remote worker and the shipped config presets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

from launcher_core.backends import remote_ssh as rs
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState, PullFilter
from launcher_core.remote import scripts, workspace
from launcher_core.remote.codesync import (
    DEFAULT_EXCLUDES,
    excludes_for_local_outputs,
    filter_args,
    git_state,
    snapshot_rsync_args,
)
from launcher_core.remote.ssh import HostAddress, SSHOptions, describe, resolve_host
from launcher_core.runtime import runner as remote_runner
from launcher_core.runtime.procs import process_start_time
from tests.conftest import REPO_ROOT

# --- settings and hosts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, destination, port",
    [
        ("gpu1", "gpu1", None),
        ("alice@gpu1", "alice@gpu1", None),
        ("alice@gpu1.example.org:2222", "alice@gpu1.example.org", 2222),
        ("ssh://bob@10.0.0.5:22/", "bob@10.0.0.5", 22),
        ("carol@[::1]:2200", "carol@::1", 2200),
    ],
)
def test_host_addresses(text: str, destination: str, port: int | None) -> None:
    address = HostAddress.parse(text)
    assert (address.destination, address.port, address.label) == (destination, port, text.strip())


@pytest.mark.parametrize("text", ["", "-oProxyCommand=evil", "a b", "host:99999", "a@b@c", "host:port"])
def test_bad_host_addresses_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="hydra.launcher.hosts"):
        HostAddress.parse(text)


def test_settings_from_mapping_with_per_host_slots(tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text("")
    settings = rs.RemoteSSHSettings.from_mapping(
        {
            "hosts": ["a", {"host": "me@b:2222", "max_parallel": 4, "remote_dir": "/scratch/me"}],
            "max_parallel": 2,
            "ssh_config": str(cfg),
            "env": {"setup": "conda", "conda_env": "py311", "vars": {"WANDB_MODE": "offline", "N": 3}},
        }
    )
    assert [(h.address.label, h.max_parallel, h.remote_dir) for h in settings.hosts] == [
        ("a", 2, None),
        ("me@b:2222", 4, "/scratch/me"),
    ]
    assert settings.env_vars == (("WANDB_MODE", "offline"), ("N", "3"))
    stored = settings.stored_config()
    assert "env" not in stored and "prepare_commands" not in stored  # may hold secrets
    again = rs.from_config(stored)
    assert again.settings.hosts == settings.hosts and again.settings.ssh == settings.ssh
    assert again.detached is True


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({}, r"hydra.launcher.hosts is empty"),
        ({"hosts": []}, r"hydra.launcher.hosts is empty"),
        ({"hosts": ["a", "a"]}, r"names \['a'\] more than once"),
        ({"hosts": [{"host": "a", "slots": 2}]}, r"hosts\[0\] has unknown keys \['slots'\]"),
        ({"hosts": [{"host": "a", "max_parallel": 0}]}, r"hosts\[0\].max_parallel must be an integer >= 1"),
        ({"hosts": ["a"], "max_parallel": 1.5}, r"hydra.launcher.max_parallel must be an integer >= 1"),
        ({"hosts": ["a"], "poll_interval_s": 0}, r"poll_interval_s must be a number > 0"),
        ({"hosts": ["a"], "retries": -1}, r"retries must be an integer >= 0"),
        ({"hosts": ["a"], "ssh_config": "/nonexistent/cfg"}, r"ssh_config: '/nonexistent/cfg' is not a file"),
        ({"hosts": ["a"], "env": {"setup": "pipenv"}}, r"env.setup must be none \| uv \| conda"),
        ({"hosts": ["a"], "env": {"setup": "conda"}}, r"env.conda_env must name the conda environment"),
        ({"hosts": ["a"], "env": {"vars": {"BAD-NAME": "x"}}}, r"'BAD-NAME' is not a valid environment variable"),
        ({"hosts": ["a"], "remote_dir": "a\nb"}, r"remote_dir must be a non-empty single-line string"),
        ({"hosts": ["a"], "rsync_exclude": "*.tmp"}, r"rsync_exclude must be a list of strings"),
    ],
)
def test_bad_settings_name_the_key(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rs.RemoteSSHSettings.from_mapping(cfg)


def test_hydra_config_defaults_match_the_backend() -> None:
    from hydra_plugins.remote_launcher.config import RemoteSSHLauncherConf

    defaults = {f.name: f for f in fields(RemoteSSHLauncherConf)}
    assert tuple(defaults["rsync_exclude"].default_factory()) == DEFAULT_EXCLUDES  # type: ignore[misc]
    plain = {k: (f.default_factory() if callable(f.default_factory) else f.default) for k, f in defaults.items()}
    plain["env"] = {}
    plain["hosts"] = ["h"]
    settings = rs.RemoteSSHSettings.from_mapping(plain)
    assert settings.ssh == SSHOptions()
    assert settings.python == "python3" and settings.wait is True


def test_jobs_are_spread_over_hosts_by_slots() -> None:
    buckets = rs.assign_to_hosts(list(range(9)), [2, 1])
    assert [len(b) for b in buckets] == [6, 3]
    assert buckets[0][:2] == [0, 2] and buckets[1][0] == 1  # interleaved, not in blocks
    assert [len(b) for b in rs.assign_to_hosts(list(range(2)), [1, 1, 1])] == [1, 1, 0]


# --- ssh -G ---------------------------------------------------------------------------------
def test_resolve_host_reads_the_users_ssh_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host gpu\n  HostName 10.1.2.3\n  User alice\n  Port 2222\n  ProxyJump bastion\n"
        f"  UserKnownHostsFile {tmp_path}/kh\n"
    )
    settings = resolve_host(SSHOptions(ssh_config=str(cfg)), HostAddress.parse("gpu"))
    assert describe(settings) == "alice@10.1.2.3:2222 via bastion"
    assert settings["userknownhostsfile"] == [f"{tmp_path}/kh"]


def test_bad_ssh_config_is_reported_with_the_host(tmp_path: Path) -> None:
    from launcher_core.errors import BackendError

    cfg = tmp_path / "config"
    cfg.write_text("Host gpu\n  NoSuchOption yes\n")
    with pytest.raises(BackendError, match="host gpu: ssh cannot read its configuration"):
        resolve_host(SSHOptions(ssh_config=str(cfg)), HostAddress.parse("gpu"))


# --- remote scripts, run here ---------------------------------------------------------------
def _sh(script: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(["/bin/sh", "-s"], input=script, capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _job_dir(root: Path, name: str) -> Path:
    d = root / name / ".launcher"
    d.mkdir(parents=True)
    return d


def _pid_line(pid: int) -> str:
    return f"{pid} {process_start_time(pid)}\n"


def _poll(jobs: list[tuple[str, Path, Path]], grace_s: float = 1.0) -> dict[str, list[str]]:
    out = _sh(scripts.poll_script([(j, str(d), str(r)) for j, d, r in jobs], grace_s))
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()}


def test_poll_script_reports_every_state_of_the_table(tmp_path: Path) -> None:
    runner = tmp_path / "runner.pid"
    runner.write_text(_pid_line(os.getpid()))  # a live runner
    dead_runner = tmp_path / "dead.pid"
    dead_runner.write_text("999999 1\n")
    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        running = _job_dir(tmp_path, "running")
        (running / "pid").write_text(_pid_line(live.pid))
        done = _job_dir(tmp_path, "done")
        (done / "pid").write_text("999999 1\n")
        (done / "exit_status").write_text("0\n")
        (done / "result.pkl").write_bytes(b"x")
        raised = _job_dir(tmp_path, "raised")
        (raised / "pid").write_text("999999 1\n")
        (raised / "exit_status").write_text("1\n")
        (raised / "result.pkl").write_bytes(b"x")
        lost = _job_dir(tmp_path, "lost")
        (lost / "pid").write_text("999999 1\n")
        reused = _job_dir(tmp_path, "reused")  # the PID now belongs to another process
        (reused / "pid").write_text(f"{live.pid} 12345\n")
        queued = _job_dir(tmp_path, "queued")
        orphaned = _job_dir(tmp_path, "orphaned")
        cancelled = _job_dir(tmp_path, "cancelled")
        (cancelled / "cancelled").touch()
        got = _poll(
            [
                ("running", running, runner),
                ("done", done, runner),
                ("raised", raised, runner),
                ("lost", lost, runner),
                ("reused", reused, runner),
                ("queued", queued, runner),
                ("orphaned", orphaned, dead_runner),
                ("cancelled", cancelled, runner),
            ]
        )
    finally:
        live.kill()
        live.wait()
    assert got == {
        "running": ["running"],
        "done": ["done", "0", "1"],
        "raised": ["done", "1", "1"],
        "lost": ["lost"],
        "reused": ["lost"],
        "queued": ["queued"],
        "orphaned": ["orphaned"],
        "cancelled": ["cancelled"],
    }
    states = {j: scripts.status_from_line(w, "h").state for j, w in got.items()}
    assert states == {
        "running": JobState.RUNNING,
        "done": JobState.COMPLETED,
        "raised": JobState.FAILED,
        "lost": JobState.FAILED,
        "reused": JobState.FAILED,
        "queued": JobState.SUBMITTED,
        "orphaned": JobState.FAILED,
        "cancelled": JobState.CANCELLED,
    }


def test_poll_script_kills_the_orphans_of_a_finished_job(tmp_path: Path) -> None:
    """Exit status written, leader gone, group still alive: SIGTERM, then SIGKILL after the grace."""
    d = _job_dir(tmp_path, "job")
    # a group whose leader exits at once, leaving a child that ignores SIGTERM
    leader = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sleep 60 >/dev/null 2>&1 & echo $!; echo \"$$\""],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    out, _ = leader.communicate(timeout=10)
    child, pgid = (int(x) for x in out.split())
    (d / "pid").write_text(f"{pgid} 1\n")
    (d / "exit_status").write_text("0\n")
    try:
        assert _poll([("j", d, tmp_path / "none")], grace_s=1)["j"] == ["cleanup"]
        assert (d / "cleanup").exists()
        time.sleep(0.2)
        assert Path(f"/proc/{child}").exists()  # SIGTERM is ignored by this one
        deadline = time.monotonic() + 10
        words = ["cleanup"]
        while words == ["cleanup"] and time.monotonic() < deadline:
            time.sleep(0.3)
            _reap(child)
            words = _poll([("j", d, tmp_path / "none")], grace_s=1)["j"]
        assert words == ["done", "0", "0"]
    finally:
        _kill(child)


def _reap(pid: int) -> None:
    """If this process is a child subreaper (local_pool tests make it one), the orphan is ours to reap."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def test_cancel_script_stops_process_groups_and_queued_jobs(tmp_path: Path) -> None:
    running = _job_dir(tmp_path, "running")
    queued = _job_dir(tmp_path, "queued")
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (running / "pid").write_text(_pid_line(proc.pid))
    reaper = threading.Thread(target=proc.wait)  # as the runner does: no zombie keeps the group
    reaper.start()
    tic = time.monotonic()
    assert "HRL cancelled" in _sh(scripts.cancel_script([str(running), str(queued)], grace_s=5))
    reaper.join(5)
    assert proc.returncode == -signal.SIGTERM
    assert time.monotonic() - tic < 3  # did not need the grace period: SIGTERM was enough
    assert (running / "cancelled").exists() and (queued / "cancelled").exists()


def test_paths_with_shell_syntax_stay_data(tmp_path: Path) -> None:
    """Every path goes through shlex.quote: a remote_dir full of shell syntax creates dirs, runs nothing."""
    canary = tmp_path / "canary"
    weird = f"dir with 'quotes' \"dq\" $(touch {canary}) `touch {canary}`; touch {canary}"
    script = scripts.prepare_script(
        remote_dir=f"~/{weird}", sweep_id="s-1", tag="t1", rel_sweep=f"multirun/{weird}", host_key="h"
    )
    info = scripts.parse_kv(_sh(script, env={**os.environ, "HOME": str(tmp_path)}))
    assert info["remote_dir"] == f"{tmp_path}/{weird}"
    assert info["sweep_dir"] == f"{tmp_path}/{weird}/runs/multirun/{weird}"
    assert Path(info["sweep_dir"], ".launcher", "remote_ssh", "sweep_id").read_text() == "s-1\n"
    assert not canary.exists()
    # another sweep with the same relative dir is moved aside instead of mixing outputs
    other = scripts.parse_kv(
        _sh(
            scripts.prepare_script(
                remote_dir=f"~/{weird}", sweep_id="s-2", tag="t1", rel_sweep=f"multirun/{weird}", host_key="h"
            ),
            env={**os.environ, "HOME": str(tmp_path)},
        )
    )
    assert other["sweep_dir"] == f"{tmp_path}/{weird}/runs/by-id/s-2"


def test_env_prelude_quotes_values_and_activates_conda(tmp_path: Path) -> None:
    """A fake conda proves the activation runs in the job shell; values stay verbatim."""
    conda = tmp_path / "conda"
    conda.write_text("#!/bin/sh\necho 'conda() { CONDA_DEFAULT_ENV=\"$2\"; export CONDA_DEFAULT_ENV; }'\n")
    conda.chmod(0o755)
    settings = rs.RemoteSSHSettings.from_mapping(
        {
            "hosts": ["h"],
            "env": {"setup": "conda", "conda_env": "my env", "conda_command": str(conda), "vars": {"V": "a'b $(x)"}},
            "prepare_commands": ["export FROM_PREPARE=yes"],
        }
    )
    prelude = rs.env_prelude(settings, snapshot=str(tmp_path), pythonpath=["/p 1", "/p2"], extra_env={"E": "1"})
    out = _sh(prelude + '\necho "$PYTHONPATH|$V|$E|$CONDA_DEFAULT_ENV|$FROM_PREPARE|$(pwd)"\n', env={"PATH": "/bin"})
    assert out.strip() == f"/p 1:/p2|a'b $(x)|1|my env|yes|{tmp_path}"


def test_uv_setup_runs_jobs_through_uv() -> None:
    settings = rs.RemoteSSHSettings.from_mapping({"hosts": ["h"], "env": {"setup": "uv"}})
    assert settings.python_command == "uv run --no-sync python"
    script = scripts.finish_snapshot_script(
        prelude="cd /x", remote_dir="/r", snapshot="/r/s", latest="a/b", uv_sync="uv"
    )
    assert "\nuv sync\n" in script
    explicit = rs.RemoteSSHSettings.from_mapping({"hosts": ["h"], "env": {"setup": "uv"}, "python": "/v/bin/python"})
    assert explicit.python_command == "/v/bin/python"


def test_fetch_filter_keeps_launcher_files_in_bare_pulls() -> None:
    assert "--max-size=1000" in workspace.fetch_filter_args(PullFilter(max_size_bytes=1000))
    args = workspace.fetch_filter_args(PullFilter(exclude=("*.ckpt",)))
    assert args.index("--include=.launcher/***") < args.index("--exclude=*.ckpt")
    assert workspace.fetch_filter_args(None) == ["--exclude=.launcher/job.pkl", "--exclude=.launcher/cleanup"]


# --- the runner's retry guard ---------------------------------------------------------------
def test_runner_repeated_batch_reports_the_first_answer_and_starts_nothing_twice(tmp_path: Path) -> None:
    jobs = []
    for index, name in enumerate(("a", "b")):
        d = _job_dir(tmp_path / "sweep", name)
        (d / "exit_status").write_text("0\n")  # stale markers of an earlier attempt
        jobs.append({"job_id": name, "launcher_dir": str(d), "index": index})
    batch = {
        "batch_id": "b1",
        "batch_dir": str(tmp_path / "batches"),
        "slots_dir": str(tmp_path / "slots"),
        "max_parallel": 1,
        "cwd": str(tmp_path),
        "sweep_payload": str(tmp_path / "missing.pkl"),  # the jobs fail fast: no payload
        "table": str(tmp_path / "batch.json"),
        "jobs": jobs,
    }
    batch_file = tmp_path / "batch.json"
    batch_file.write_text(json.dumps(batch))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "launcher_core.runtime.runner", str(batch_file)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"{remote_runner.STARTED} a", f"{remote_runner.STARTED} b"]
    deadline = time.monotonic() + 30
    while not all(Path(j["launcher_dir"], "exit_status").exists() for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [Path(j["launcher_dir"], "pid").read_text() for j in jobs]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert second.returncode == 0 and second.stdout == first.stdout
    time.sleep(0.3)
    assert [Path(j["launcher_dir"], "pid").read_text() for j in jobs] == pids  # nothing started again
    assert "missing.pkl" in Path(jobs[0]["launcher_dir"], "stderr.log").read_text()


# --- code sync ------------------------------------------------------------------------------
def test_rsync_filters_and_snapshot_arguments(tmp_path: Path) -> None:
    args = filter_args(["/data/keep/***"], ["/data/*", "*.tmp"], ["/multirun/x/"])
    assert args == ["--include=/data/keep/***", "--exclude=/data/*", "--exclude=*.tmp", "--exclude=/multirun/x/"]
    full = snapshot_rsync_args(tmp_path, "h:/r/s/", filters=args, link_dest="/r/prev")
    assert full[-2:] == [f"{tmp_path}/", "h:/r/s/"] and "--link-dest=/r/prev" in full
    assert excludes_for_local_outputs(tmp_path, tmp_path / "multirun" / "x") == ["/multirun/x/"]
    assert excludes_for_local_outputs(tmp_path, Path("/elsewhere")) == []


def test_git_state_records_commit_diff_and_untracked(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(tmp_path), *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    (tmp_path / "a.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "a.py")
    git("commit", "-q", "-m", "c")
    clean = git_state(tmp_path)
    assert clean.commit == git("rev-parse", "HEAD").strip() and not clean.dirty
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("")
    dirty = git_state(tmp_path)
    assert dirty.dirty and "+x = 2" in dirty.diff and dirty.untracked == ["new.py"]
    assert git_state(Path("/")).error is not None  # not a repository: recorded, never raised


# --- presets ----------------------------------------------------------------------------------
def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> object:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("preset", ["ssh_host", "gpu_box"])
def test_shipped_cluster_presets_select_remote_ssh(preset: str, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    conf = tmp_path / "conf"
    (conf / "cluster").mkdir(parents=True)
    (conf / "config.yaml").write_text("lr: 0.1\n")
    (conf / "cluster" / f"{preset}.yaml").write_text((REPO_ROOT / "conf" / "cluster" / f"{preset}.yaml").read_text())
    cfg = _compose(conf, "config", [f"+cluster={preset}"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # type: ignore[attr-defined]
    assert launcher["_target_"].endswith("RemoteSSHLauncher")
    settings = rs.RemoteSSHSettings.from_mapping({k: v for k, v in launcher.items() if k != "_target_"})
    assert settings.hosts
    if preset == "gpu_box":
        assert settings.gpus_per_job == 1 and settings.hosts[0].max_parallel >= 1


def test_example_app_cluster_preset(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = _compose(REPO_ROOT / "example_app" / "conf", "config", ["+cluster=ssh_example"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # type: ignore[attr-defined]
    assert launcher["_target_"].endswith("RemoteSSHLauncher")
    settings = rs.RemoteSSHSettings.from_mapping({k: v for k, v in launcher.items() if k != "_target_"})
    assert [h.address.label for h in settings.hosts]
    assert cfg.hydra.sweeper._target_.endswith("PairedSweeper")  # type: ignore[attr-defined]


# --- partial starts: counts that add up -------------------------------------------------------
def test_a_partial_start_counts_every_started_job_and_names_the_others() -> None:
    """One host started 3 of 4 jobs (two of them with the same overrides), another none: the
    message counts the 3 that run, names the one that did not, and carries all 3 handles."""
    from launcher_core.backends.remote_ssh import backend as rsb
    from launcher_core.errors import BackendError, SubmitError
    from launcher_core.jobs import JobSpec, job_id_for

    specs = [JobSpec(job_id_for("s", i, ["t=2"]), i, ["t=2"], Path(f"/s/{i}")) for i in range(4)]
    started = {s.job_id: {"host": "a"} for s in specs[:3]}
    host_a = SubmitError(rsb._not_started("a", specs[3:], 4), started)
    err = rsb._partial_error({"a": host_a, "b": BackendError("host b: unreachable")}, {}, 6)
    text = str(err)
    assert "host a: 1 of 4 jobs were not started (#3 t=2)" in text
    assert "host b: unreachable" in text
    assert "3 of 6 jobs were started and keep running" in text
    assert "none of" not in text
    assert set(err.started) == set(started)
