"""The spill launcher's EC2 budget (``max_cost_usd``) against the moto server and the instance
agents of tests/ec2_fixtures.py (everything on 127.0.0.1).

The price is set so that a few instance-minutes reach the budget: 60 USD per instance-hour is
1 USD per instance-minute, and each instance counts at least a minute (EC2's billing minimum), so
each instance the target starts costs at least 1 USD. Each job records where it ran (``ec2`` when
it sees an instance's metadata endpoint, else the user it runs as) in one file outside the job
dirs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from launcher_core import results as res
from launcher_core.jobs import JobState
from tests.ec2_fixtures import AwsWorld
from tests.test_spill import CONFIG, _argv, _lines, _local_preset, _output, _preset, _rows, _targets

pytestmark = [pytest.mark.ec2, pytest.mark.slow, pytest.mark.timeout(240)]

APP = '''\
"""Records where and when it ran (start and done lines), returns its number."""
import getpass
import os
import time

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    num = HydraConfig.get().job.num
    where = "ec2" if os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") else getpass.getuser()
    started = time.time()
    with open(cfg.record, "a") as f:
        f.write(f"start {num} {where} {started}\\n")
    time.sleep(cfg.t)
    with open(cfg.record, "a") as f:
        f.write(f"done {num} {where} {started} {time.time()}\\n")
    return {"num": num, "where": where}


if __name__ == "__main__":
    main()
'''
PRICE = 60.0  # USD per instance-hour: 1 USD per instance-minute


def _project(root: Path) -> Path:
    (root / "conf" / "cluster").mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "conf" / "config.yaml").write_text(CONFIG)
    return root


def _ec2_preset(proj: Path, aws: AwsWorld, name: str = "ec2_t", **extra: Any) -> None:
    settings = aws.launcher_settings(jobs_per_instance=1, code_dir=str(proj), setup_commands=[], **extra)
    _preset(proj, name, "ec2", settings)


def _run(argv: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["COLUMNS"] = "400"  # `status` prints its summary lines unwrapped
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(["-m", "launcher_core", *args], cwd, timeout=60)


def _starts(record: Path) -> dict[int, list[str]]:
    """Job number -> where each of its runs started."""
    out: dict[int, list[str]] = {}
    for w in _lines(record):
        if w[0] == "start":
            out.setdefault(int(w[1]), []).append(w[2])
    return out


def _done(record: Path) -> dict[int, tuple[str, float, float]]:
    return {int(w[1]): (w[2], float(w[3]), float(w[4])) for w in _lines(record) if w[0] == "done"}


def _meta(sweep_dir: Path) -> dict[str, Any]:
    from launcher_core.state import StateStore

    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        return store.meta()


def test_ec2_target_stops_taking_jobs_at_its_budget_and_the_rest_go_to_local_pool(
    aws: AwsWorld, tmp_path: Path
) -> None:
    """ec2_t (2 slots, one instance per job, budget 2 USD = two instances) before loc_a (1 slot):
    the first two jobs start two instances, which reach the budget; a warning says so, ec2_t takes
    no job after (although its slots free up while jobs are still held), and every other job runs
    on loc_a. Every job runs once and completes; status and results print the cost so far."""
    n_jobs, budget = 8, 2.0
    proj = _project(tmp_path / "proj")
    _ec2_preset(proj, aws)
    _local_preset(proj, "loc_a", n_jobs=1)
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    targets = _targets(
        f"{{cluster: ec2_t, max_jobs: 2, max_cost_usd: {budget:g}, price_per_hour_usd: {PRICE:g}}}",
        "{cluster: loc_a, max_jobs: 1}",
    )
    proc = _run(_argv(proj, sweep_dir, record, targets, n_jobs, 1.5), proj)
    assert proc.returncode == 0, _output(proc)

    starts = _starts(record)
    assert {n: len(w) for n, w in starts.items()} == dict.fromkeys(range(n_jobs), 1), _lines(record)
    done = _done(record)
    assert sorted(done) == list(range(n_jobs))
    on_ec2 = {n for n, (where, _t0, _t1) in done.items() if where == "ec2"}
    assert on_ec2 == {0, 1}, done  # the first round filled ec2_t's two slots, then its budget was reached
    # ec2_t's slots were free again while loc_a still had jobs to start: the budget kept them off it
    last_ec2_end = max(done[n][2] for n in on_ec2)
    assert any(t0 > last_ec2_end for n, (_w, t0, _t1) in done.items() if n not in on_ec2), done
    assert len(aws.instances()) == 2  # one instance per job placed there, none after

    said = proc.stdout + proc.stderr
    assert re.search(
        r"spill: target ec2_t \(ec2\): its cost \$\d+\.\d\d reached max_cost_usd=\$2; no more jobs go there", said
    ), _output(proc)
    assert re.search(r"ec2_t\s+2 placed, .*\$\d+\.\d\d spent \(budget reached\)", proc.stderr), proc.stderr[-3000:]
    assert re.search(r"cost so far\s+\$\d+\.\d\d", proc.stderr), proc.stderr[-3000:]

    assert {r.state for r in _rows(sweep_dir).values()} == {JobState.PULLED}
    table = res.load(sweep_dir)
    assert {row.num: row.where for row in table} == {n: "ec2_t" if n in on_ec2 else "loc_a" for n in range(n_jobs)}
    assert all(row.state == "completed" for row in table), table
    cost = float(_meta(sweep_dir)["cost_usd"])
    assert cost >= budget, cost

    status = _cli("status", str(sweep_dir), cwd=proj)
    assert status.returncode == 0, _output(status)
    assert f"cost so far: ${cost:.2f}" in status.stdout, status.stdout[-3000:]
    results = _cli("results", str(sweep_dir), cwd=proj)
    assert results.returncode == 0, _output(results)
    assert f"cost so far: ${cost:.2f}" in results.stderr, results.stderr[-3000:]
    assert "cost so far" not in results.stdout  # the table on stdout stays machine-readable
    aws.runner.wait_idle(60)


def test_jobs_no_target_can_take_within_the_budget_end_failed_naming_it(aws: AwsWorld, tmp_path: Path) -> None:
    """ec2_t alone, budget 1 USD (its first instance): job 0 runs there; the others cannot be
    placed anywhere, end failed with a reason naming the budget, and the launch exits non-zero."""
    n_jobs = 3
    proj = _project(tmp_path / "proj")
    _ec2_preset(proj, aws)
    record = tmp_path / "record.txt"
    sweep_dir = proj / "multirun" / "s"
    targets = _targets(f"{{cluster: ec2_t, max_jobs: 1, max_cost_usd: 1, price_per_hour_usd: {PRICE:g}}}")
    proc = _run(_argv(proj, sweep_dir, record, targets, n_jobs, 0.5), proj)

    assert proc.returncode != 0, _output(proc)
    assert _starts(record) == {0: ["ec2"]}, _lines(record)
    assert len(aws.instances()) == 1
    rows = _rows(sweep_dir)
    assert (rows[0].state, rows[0].outcome) == (JobState.PULLED, JobState.COMPLETED), rows[0]
    budget_reason = re.compile(r"ec2_t: its cost \$1\.\d\d reached max_cost_usd=\$1")
    for n in (1, 2):
        row = rows[n]
        assert JobState.FAILED in (row.state, row.outcome), row
        assert row.handle is None, row  # never placed anywhere
        assert row.exit_reason and budget_reason.search(row.exit_reason), row.exit_reason
    said = proc.stdout + proc.stderr
    assert re.search(r"2 jobs were not run: no target can take more jobs \(ec2_t: its cost", said), _output(proc)
    # what Hydra raises for them says they never ran (not that a process was lost)
    assert re.search(r"JobNotRunError: job #1 \(.*\) failed: not run: no target can take more jobs", said), said[-3000:]
    table = {row.num: row for row in res.load(sweep_dir)}
    assert table[0].state == "completed" and table[0].where == "ec2_t"
    assert table[1].failed and table[2].failed
    assert float(_meta(sweep_dir)["cost_usd"]) >= 1.0
    aws.runner.wait_idle(60)
