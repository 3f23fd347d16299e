"""Per-job GPUs on remote_ssh (``resources_from.gpus_per_job``) against the loopback sshd.

The project has config groups ``model=small|large|cpu`` whose ``trainer.gpus`` differ; the host
declares 4 GPUs (``hydra.launcher.gpus=4``). There is no GPU here: the runner only hands out GPU
ids (lock files), so each job reports the ``CUDA_VISIBLE_DEVICES`` it was given and when it ran,
and the test checks that no id was given to two jobs running at the same time. The one stand-in
is ``nvidia-smi`` for the pre-flight (``tests/gpu_standin.py`` on the test user's PATH, 4 GPUs).
The GPU locks are machine-wide (``launcher_core/runtime/gpus.py``): each launch here uses a lock
dir of its own, so other test runs on this machine do not take part.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from tests.conftest import run_app
from tests.gpu_standin import install_nvidia_smi
from tests.sshd import SSHTestEnv, shared_dir
from tests.test_remote_ssh import states

pytestmark = pytest.mark.ssh

APP = '''\
import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    started = time.time()
    time.sleep(cfg.sleep)
    seen = {
        "model": cfg.model.name,
        "gpus": cfg.trainer.gpus,
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started": started,
        "ended": time.time(),
    }
    (Path(HydraConfig.get().runtime.output_dir) / "seen.json").write_text(json.dumps(seen))
    return seen


if __name__ == "__main__":
    main()
'''

GPUS = {"small": 1, "large": 3, "cpu": 0, "huge": 8}


def _project(root: Path) -> Path:
    (root / "conf" / "model").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(
        "defaults:\n  - model: small\n  - _self_\nseed: 0\nsleep: 0\nhydra:\n  job:\n    chdir: false\n"
    )
    for name, gpus in GPUS.items():
        (root / "conf" / "model" / f"{name}.yaml").write_text(
            f"# @package _global_\nmodel:\n  name: {name}\ntrainer:\n  gpus: {gpus}\n"
        )
    (root / "conf" / "model" / "nogpus.yaml").write_text("# @package _global_\nmodel:\n  name: nogpus\n")
    return root


def _stand_in_nvidia_smi(count: int) -> Path:
    bin_dir = shared_dir("hrl-gpus") / "bin"
    install_nvidia_smi(bin_dir, count)  # stands in for the GPU driver (tests/gpu_standin.py)
    return bin_dir


def _launch(env: SSHTestEnv, proj: Path, name: str, *args: str, **settings: object):
    sweep = proj / "multirun" / name
    bin_dir = _stand_in_nvidia_smi(4)
    argv = [
        "-m",
        "hydra/launcher=remote_ssh",
        f"hydra.sweep.dir={sweep}",
        "+hydra.launcher.resources_from={gpus_per_job:trainer.gpus}",
        *args,
        *env.overrides(
            name,
            prepare_commands=f'["PATH={bin_dir}:$PATH; export PATH"]',
            gpu_lock_dir=shared_dir("hrl-gpu-locks"),
            **settings,
        ),
    ]
    return run_app(proj / "app.py", argv, cwd=proj, timeout=240), sweep


@pytest.mark.timeout(240)
def test_each_job_gets_its_own_number_of_free_gpus_never_shared(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    """seed=0,1,2 x model=large,small,cpu on a 4-GPU host with 4 slots: 3 + 1 GPUs fit together,
    two large jobs never do; a CPU job of the sweep gets no GPU (empty CUDA_VISIBLE_DEVICES)."""
    proj = _project(tmp_path / "proj")
    proc, sweep = _launch(
        ssh_env, proj, "gpus", "seed=0,1,2", "model=large,small,cpu", "sleep=1.5", gpus=4, max_parallel=4
    )
    assert proc.returncode == 0, proc.stderr
    seen = [json.loads((sweep / str(i) / "seen.json").read_text()) for i in range(9)]
    assert [s["model"] for s in seen] == ["large", "small", "cpu"] * 3
    for s in seen:
        ids = [int(i) for i in s["cuda"].split(",")] if s["cuda"] else []
        assert s["cuda"] is not None and len(ids) == len(set(ids)) == GPUS[s["model"]], s
        assert set(ids) <= {0, 1, 2, 3}, s
        s["ids"] = set(ids)
    overlapping = 0
    for a in range(9):
        for b in range(a + 1, 9):
            x, y = seen[a], seen[b]
            if x["started"] < y["ended"] and y["started"] < x["ended"]:
                overlapping += 1
                assert not (x["ids"] & y["ids"]), (x, y)  # no GPU given to two running jobs
                assert not (x["model"] == y["model"] == "large"), (x, y)  # 3 + 3 > 4: never together
    # it was a real test: large and small jobs did run at the same time, each on its own GPUs
    assert any(
        {seen[a]["model"], seen[b]["model"]} == {"large", "small"}
        and seen[a]["started"] < seen[b]["ended"]
        and seen[b]["started"] < seen[a]["ended"]
        for a in range(9)
        for b in range(a + 1, 9)
    )
    assert overlapping >= 3
    assert {s for s, _ in states(sweep).values()} == {JobState.PULLED}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "model, message",
    [
        ("huge", "asks for 8 GPUs, more than any host has"),
        ("nogpus", "hydra.launcher.resources_from.gpus_per_job: trainer.gpus is not set in the job's config"),
    ],
)
def test_a_job_that_cannot_be_placed_is_refused_before_anything_starts(
    ssh_env: SSHTestEnv, tmp_path: Path, model: str, message: str
) -> None:
    proj = _project(tmp_path / "proj")
    name = f"refused-{model}"
    proc, sweep = _launch(ssh_env, proj, name, f"model=small,{model}", gpus=4, max_parallel=2)
    assert proc.returncode != 0
    assert f"job #1 (model={model})" in proc.stderr and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not ssh_env.remote_path(name).exists()  # no host was touched
    assert not (sweep / "0").exists()


def test_per_job_gpus_need_each_hosts_gpu_count() -> None:
    from launcher_core.backends.remote_ssh.settings import RemoteSSHSettings

    per_job = {"resources_from": {"gpus_per_job": "trainer.gpus"}}
    with pytest.raises(ConfigError, match=r"resources_from.gpus_per_job needs the GPU count of every host: "
                       r"set hydra.launcher.gpus \(all hosts\) or hydra.launcher.hosts\[1\].gpus for b"):
        RemoteSSHSettings.from_mapping({"hosts": [{"host": "a", "gpus": 2}, "b"], **per_job})
    settings = RemoteSSHSettings.from_mapping({"hosts": [{"host": "a", "gpus": 2}, "b"], "gpus": 8, **per_job})
    assert [h.gpus for h in settings.hosts] == [2, 8]
    with pytest.raises(ConfigError, match=r"gpus_per_job=2 but a has 1 GPUs"):
        RemoteSSHSettings.from_mapping({"hosts": [{"host": "a", "gpus": 1}], "gpus_per_job": 2})
    with pytest.raises(ConfigError, match=r"hydra.launcher.jobs_per_gpu must be an integer >= 1"):
        RemoteSSHSettings.from_mapping({"hosts": [{"host": "a", "gpus": 1}], "jobs_per_gpu": 0})
    with pytest.raises(ConfigError, match=r"resources_from.max_parallel: not a per-job resource here"):
        RemoteSSHSettings.from_mapping({"hosts": ["a"], "resources_from": {"max_parallel": "x"}})


def test_jobs_go_only_to_hosts_with_enough_gpus() -> None:
    from launcher_core.backends.remote_ssh import assign_to_hosts

    gpus = {"a": 1, "b": 4}
    jobs = [("a-fits", 1), ("needs-4", 4), ("x", 0), ("needs-2", 2), ("y", 1)]
    buckets = assign_to_hosts(jobs, [1, 1], lambda job, i: job[1] <= list(gpus.values())[i])
    assert ("needs-4", 4) in buckets[1] and ("needs-2", 2) in buckets[1]
    assert all(job[1] <= 1 for job in buckets[0]) and sum(map(len, buckets)) == len(jobs)
