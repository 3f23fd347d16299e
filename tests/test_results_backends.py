"""``results``, ``files``, ``link`` and ``report`` on sweeps of the remote backends, run for real:
remote_ssh against the loopback sshd (pulled ``--bare``: the big files stay on the host until
``files --copy`` fetches them), slurm on the single-node test cluster, ec2 on the moto server
(jobs finished but not pulled: their files are listed from S3). The commands run in this process
through ``launcher_core.cli.main``, as ``launcher-core`` would run them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from launcher_core import cli, results, sweeps
from launcher_core.jobs import JobState, PullFilter
from launcher_core.state import StateStore
from tests.conftest import run_app


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def job_rows(sweep_dir: Path) -> list[Any]:
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return store.jobs()


# --- remote_ssh, pulled --bare ----------------------------------------------------------------
@pytest.mark.ssh
def test_remote_ssh_bare_pull_lists_big_files_as_remote_and_copy_fetches_them(
    ssh_env: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.sshd import make_project

    proj = make_project(tmp_path / "proj")
    app = (proj / "app.py").read_text()
    big = '    (out / "big.bin").write_bytes(bytes([cfg.x]) * 200_000)\n    import helper\n'
    (proj / "app.py").write_text(app.replace("    import helper\n", big, 1))
    sweep = proj / "multirun" / "bare"
    argv = ["-m", "hydra/launcher=remote_ssh", f"hydra.sweep.dir={sweep}", "x=1,2,3", "raise_on=[2]"]
    proc = run_app(proj / "app.py", argv + ssh_env.overrides("results-bare", wait=False), cwd=proj, timeout=240)
    assert proc.returncode == 0, proc.stderr
    _pull_until_done(sweep, PullFilter(max_size_bytes=10_000))
    assert [r.pull_mode for r in job_rows(sweep)] == ["bare"] * 3

    code, out, err = run_cli(capsys, "results", str(sweep), "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["x"], r["state"]) for r in rows] == [(1, "completed"), (2, "failed"), (3, "completed")]
    assert rows[0]["return.x"] == 1 and rows[0]["helper"] == "v1"  # a returned key named like a swept one
    assert rows[1]["reason"] == "ValueError: bad x=2" and rows[0]["host"] == ssh_env.server.alias()

    code, out, err = run_cli(capsys, "files", str(sweep), "*.bin", "--format", "json")
    assert code == 0, err
    listed = [(r["#"], Path(r["path"]).name, r["size"], r["where"]) for r in json.loads(out)]
    assert listed == [(0, "big.bin", 200_000, "remote"), (2, "big.bin", 200_000, "remote")]
    assert not (sweep / "0" / "big.bin").exists()

    dest = tmp_path / "copies"
    code, out, err = run_cli(capsys, "files", str(sweep), "*.bin", "--copy", str(dest))
    assert code == 0, err
    assert (dest / "x=1" / "big.bin").read_bytes() == bytes([1]) * 200_000
    assert (dest / "x=3" / "big.bin").read_bytes() == bytes([3]) * 200_000
    assert (sweep / "0" / "big.bin").stat().st_size == 200_000  # fetched into the sweep dir as a full pull
    assert [r.pull_mode for r in job_rows(sweep)] == ["full", "bare", "full"]  # only jobs with remote matches
    code, out, _ = run_cli(capsys, "files", str(sweep), "*.bin", "--format", "json")
    assert {r["where"] for r in json.loads(out)} == {"local"}

    code, out, err = run_cli(capsys, "link", str(sweep), str(tmp_path / "links"))
    assert code == 0 and (tmp_path / "links" / "x=2").resolve() == (sweep / "1").resolve(), err


def _pull_until_done(sweep_dir: Path, pull_filter: PullFilter, timeout_s: float = 90) -> None:
    from launcher_core.collect.pull import PullOptions, pull_sweep_once

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pull_sweep_once(sweep_dir, PullOptions(once=True, pull_filter=pull_filter)).finished:
            return
        time.sleep(0.3)
    raise AssertionError(f"{sweep_dir} not pulled after {timeout_s} s")


# --- slurm ----------------------------------------------------------------------------------------
def _slurm_task(cfg: Any) -> Any:
    from pathlib import Path as _Path

    from hydra.core.hydra_config import HydraConfig

    out = _Path(HydraConfig.get().runtime.output_dir)
    (out / "ckpt").mkdir()
    (out / "ckpt" / "last.pt").write_text(f"{cfg.model} {cfg.lr}")
    if cfg.model == "broken":
        raise ValueError("broken model")
    return {"val": {"acc": round(cfg.lr * 10, 6)}, "model_seen": cfg.model}


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_slurm_sweep_results_link_files_and_report(
    slurm_cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.slurm_cluster import launch_sweep

    sweep = tmp_path / "slurm-sweep"
    jobs = [["+model=cnn", "+lr=0.01"], ["+model=cnn", "+lr=0.1"], ["+model=broken", "+lr=0.1"]]
    overrides = [f"hydra.sweep.dir={sweep}", "hydra.launcher.poll_interval_s=0.3", "hydra.launcher.timeout_min=5"]
    launch_sweep(_slurm_task, jobs, overrides)

    table = results.load(sweep)
    assert table.swept_keys == ["model", "lr"]
    assert [(r.params["model"], r.state, r.values.get("val.acc")) for r in table] == [
        ("cnn", "completed", 0.1),
        ("cnn", "completed", 1.0),
        ("broken", "failed", None),
    ]
    assert table[2].reason is not None and "broken model" in table[2].reason
    assert "host" in table.columns  # the node, when the backend recorded one (see the closing note of the issue)

    code, out, err = run_cli(capsys, "results", str(sweep), "--sort=-val.acc", "--top", "1", "--format", "csv")
    assert code == 0, err
    assert out.splitlines()[1].startswith("1,cnn,0.1,completed,")

    code, out, err = run_cli(capsys, "files", str(sweep), "ckpt/*.pt", "--format", "json")
    assert code == 0, err
    assert [(r["#"], r["where"]) for r in json.loads(out)] == [(0, "local"), (1, "local"), (2, "local")]

    code, _out, err = run_cli(capsys, "link", str(sweep), str(tmp_path / "tb"), "--by", "lr,model")
    assert code == 0, err
    assert (tmp_path / "tb" / "lr=0.1,model=broken").resolve() == (sweep / "2").resolve()

    code, out, err = run_cli(capsys, "report", str(sweep), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "broken model" in page and "Plotly.newPlot('metric-0'" in page


# --- ec2: finished, not pulled ---------------------------------------------------------------
@pytest.mark.ec2
@pytest.mark.usefixtures("hydra_restore_singletons")
def test_ec2_files_of_jobs_not_pulled_are_listed_from_s3_and_fetched_on_copy(
    aws: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.ec2_fixtures import multirun, wait_for

    sweep = aws.tmp / "sweep"
    multirun(sweep, aws.launcher_settings(wait=False, jobs_per_instance=3), ["x=1,2,3"], fail_on=[2])

    def finished() -> bool:
        sweeps.refresh_states(sweep)  # what `launcher-core status` does: poll, fetch nothing
        return all(r.state.is_terminal for r in job_rows(sweep))

    wait_for(finished, 60, "the jobs to finish")
    assert {r.state for r in job_rows(sweep)} == {JobState.COMPLETED, JobState.FAILED}

    code, out, err = run_cli(capsys, "results", str(sweep), "--format", "json")
    assert code == 0, err
    states = [(r["x"], r["state"]) for r in json.loads(out)]
    assert states == [(1, "completed (not pulled)"), (2, "failed (not pulled)"), (3, "completed (not pulled)")]

    code, out, err = run_cli(capsys, "files", str(sweep), "artifact.txt", "--format", "json")
    assert code == 0, err
    listed = [(r["#"], r["where"], r["size"]) for r in json.loads(out)]
    assert listed == [(i, "remote", len("x=1\n")) for i in range(3)]

    dest = aws.tmp / "copies"
    code, out, err = run_cli(capsys, "files", str(sweep), "artifact.txt", "--copy", str(dest))
    assert code == 0, err
    assert [(dest / f"x={x}" / "artifact.txt").read_text() for x in (1, 2, 3)] == ["x=1\n", "x=2\n", "x=3\n"]
    assert [r.state for r in job_rows(sweep)] == [JobState.PULLED] * 3  # fetched as the pull daemon would

    table = results.load(sweep)
    assert [r.values.get("square") for r in table] == [1, None, 9]  # the results came home with the files
    assert table[1].reason == "ValueError: bad value x=2"
