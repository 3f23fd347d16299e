"""The spill launcher's parts that need no service: its settings, the state store's moves (what a
relaunch finishes after a kill during a move), its handle, and `cluster test` of a spill preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher_core.backends.registry import descriptor
from launcher_core.backends.spill import spill_settings
from launcher_core.backends.spill.handle import SpillHandle
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobSpec, JobState, job_id_for
from launcher_core.state import StateStore


def _specs(n: int, root: Path) -> list[JobSpec]:
    return [JobSpec(job_id_for("sweep", i, [f"x={i}"]), i, [f"x={i}"], root / str(i)) for i in range(n)]


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([], "hydra.launcher.targets: give at least one target"),
        ([{"cluster": "a"}], "hydra.launcher.targets[0].max_jobs must be an integer >= 1"),
        ([{"cluster": "a", "max_jobs": 2}, {"cluster": "b", "max_jobs": 0}], "targets[1].max_jobs"),
        ([{"cluster": "a", "max_jobs": 2, "max_job": 3}], "hydra.launcher.targets[0].max_job: not a target setting"),
        ([{"cluster": "a", "max_jobs": 1}, {"cluster": "a", "max_jobs": 1}], "targets[1]: the name 'a'"),
        ([{"cluster": "a", "max_jobs": 1, "max_queue_wait_min": 0}], "targets[0].max_queue_wait_min must be"),
        ([{"cluster": "a", "max_jobs": 1, "max_cost_usd": -1}], "targets[0].max_cost_usd must be"),
        ([{"cluster": "a", "max_jobs": 1, "name": "x/y"}], "targets[0].name must be a word without '/'"),
    ],
)
def test_bad_settings_name_the_key(targets: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        spill_settings({"targets": targets})


def test_settings_keep_order_names_and_limits() -> None:
    settings = spill_settings(
        {
            "targets": [
                {"cluster": "local_gpus", "max_jobs": 4},
                {"cluster": "slurm_gpu", "max_jobs": 64, "max_queue_wait_min": 20, "name": "cluster"},
            ],
            "retry_elsewhere": True,
        }
    )
    assert [(t.name, t.cluster, t.max_jobs, t.position) for t in settings.targets] == [
        ("local_gpus", "local_gpus", 4, 0),
        ("cluster", "slurm_gpu", 64, 1),
    ]
    assert settings.targets[1].max_queue_wait_min == 20.0 and settings.retry_elsewhere and settings.wait


def test_a_move_is_finished_by_the_store_in_one_step(tmp_path: Path) -> None:
    """Recorded before the backend is asked; finishing it makes a withdrawn job pending with no
    handle (a first submission next time) and leaves a job that started where it is."""
    store = StateStore(tmp_path / "state.db")
    specs = _specs(3, tmp_path)
    store.add_jobs(specs)
    handles = {
        s.job_id: SpillHandle(target="queue", backend="local_pool", placed_at=1.0, inner={"host": "h", "pid_file": "p"})
        for s in specs
    }
    store.mark_submitted(handles, launch_id="L1")
    moving = {s.job_id: handles[s.job_id] for s in specs[:2]}
    store.record_moves(moving)
    assert set(store.open_moves()) == set(moving)  # what a relaunch after a kill here would finish
    assert SpillHandle.of(store.open_moves()[specs[0].job_id]).target == "queue"

    store.finish_moves(moving, withdrawn=[specs[0].job_id])
    rows = {r.job_id: r for r in store.jobs()}
    assert rows[specs[0].job_id].state is JobState.PENDING and rows[specs[0].job_id].handle is None
    assert rows[specs[0].job_id].submitted_at is None  # its next submission goes through the intents
    assert rows[specs[1].job_id].state is JobState.SUBMITTED and rows[specs[1].job_id].handle  # it started: stays
    assert rows[specs[2].job_id].handle
    assert store.open_moves() == {}
    assert store.moves() == {specs[0].job_id: ["queue/h"]}
    store.close()


def test_the_handle_answers_with_its_target_and_the_inner_handle() -> None:
    inner = {"host": "gpu1", "pid_file": "/x/pid"}
    handle = SpillHandle(target="lab", backend="local_pool", placed_at=5.0, inner=inner)
    again = descriptor("spill").handle(handle.to_json())
    assert again == handle and again.to_json() == handle.to_json()
    assert again.host_label() == "lab/gpu1" and again.describe() == "lab/gpu1" and again.placement() == "lab"


def test_cluster_test_of_a_spill_preset_checks_each_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`launcher-core cluster test` runs every target's pre-flight and shows each failing row; a
    target with nothing to check (local_pool) adds none."""
    from launcher_core.cli import main

    conf = tmp_path / "conf" / "cluster"
    conf.mkdir(parents=True)
    (conf / "here.yaml").write_text("# @package _global_\ndefaults:\n  - override /hydra/launcher: local_pool\n")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host nowhere\n  HostName 127.0.0.1\n  Port 9\n")  # loopback: nothing listens on 9
    (conf / "far.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: remote_ssh\n"
        f"hydra:\n  launcher:\n    hosts: [nowhere]\n    ssh_config: {ssh_config}\n    connect_timeout_s: 2\n"
    )
    (conf / "both.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: spill\n"
        "hydra:\n  launcher:\n    targets:\n      - {cluster: here, max_jobs: 2}\n      - {cluster: far, max_jobs: 2}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["cluster", "test", "both"]) == 1
    out = capsys.readouterr().out
    assert "pre-flight of cluster both (spill)" in out and "nowhere" in out


SECRET_APP = """\
import os

import hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    return os.environ.get("TOKEN")


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_a_secret_in_a_target_override_reaches_the_job_and_no_file(tmp_path: Path) -> None:
    """``overrides: ["env_vars.TOKEN=..."]`` of a target sets the job's variable; Hydra's records
    (multirun.yaml, each job's .hydra/) and the state store carry REDACTED, never the value."""
    import os
    import subprocess
    import sys

    from launcher_core.runtime.worker import load_job_return

    (tmp_path / "conf" / "cluster").mkdir(parents=True)
    (tmp_path / "app.py").write_text(SECRET_APP)
    (tmp_path / "conf" / "config.yaml").write_text("x: 0\n")
    (tmp_path / "conf" / "cluster" / "here.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: local_pool\n"
    )
    secret = "s3cret-value-42"
    targets = f'hydra.launcher.targets=[{{cluster: here, max_jobs: 1, overrides: ["env_vars.TOKEN={secret}"]}}]'
    sweep = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "app.py", "-m", "hydra/launcher=spill", targets, "x=1,2", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_job_return(sweep / "0" / ".launcher" / "result.pkl").return_value == secret
    leaks = [p for p in sweep.rglob("*") if p.is_file() and secret.encode() in p.read_bytes() and p.suffix != ".pkl"]
    assert leaks == []
    assert "TOKEN=REDACTED" in (sweep / "multirun.yaml").read_text()
    assert secret not in proc.stdout + proc.stderr
