"""ec2 backend: hostile override values, sweep dir and sweep subdir reach the task verbatim.

Runs a real sweep through Hydra, the controller, boto3 and a moto server on loopback; the
"instances" are the test agents of tests/ec2_fixtures.py, which run each instance's user-data
with bash on this machine (EC2 itself cannot exist here). Every hostile string tries to create a
canary file, by absolute path (tests/hostile.py) or relative to whatever shell would run it: the
test asserts that no such file exists anywhere, on the launching side or on the instances' side.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from launcher_core.runtime.worker import job_entry, omega_literal, relocate_config
from launcher_core.sweep import quote_value
from tests.ec2_fixtures import AwsWorld, meta, multirun, wait_for
from tests.hostile import hostile_values, sweep_override

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]

REL_CANARY = "INJECTED-REL"
PER_INSTANCE = 5  # jobs_per_instance: several instances, several jobs at once on each
# What a shell prints when it tries to run a fragment of a value as a command.
SHELL_ERRORS = re.compile(r"command not found|syntax error|unexpected EOF|bad substitution|touch:")
# S3 objects that may carry the hostile strings: Python reads them (pickle, JSON) or they are
# the job's own files; none of them is ever given to a shell.
PAYLOAD_KEY = re.compile(r"/(runs/[^/]+/jobs/[^/]+/out/.+|runs/[^/]+/g\d+/plan\.json|sweep-[0-9a-f]+\.pkl)$")


def _hostile_subdir() -> str:
    """``hydra.sweep.subdir`` as typed: one path part per job, full of shell syntax and backslashes.

    No literal ``${`` though: Hydra's own ``run_job`` re-reads the output dir as OmegaConf text
    (``hydra.runtime.output_dir``), so no launcher can run a job whose dir holds one.
    """
    shell = f'it\'s "q" $(touch {REL_CANARY}) `touch {REL_CANARY}`; touch {REL_CANARY} | cat'
    return "n${hydra.job.num} " + shell + " $HOME back\\slash \\"


def _resolved_subdir(num: int) -> str:
    """What Hydra makes of :func:`_hostile_subdir` for job ``num``: the dir name on both sides."""
    return str(OmegaConf.create({"hydra": {"job": {"num": num}}, "subdir": _hostile_subdir()}).subdir)


def _canaries_anywhere(roots: list[Path], names: set[str]) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.name in names]


def _user_data(aws: AwsWorld) -> dict[str, str]:
    ec2 = aws.client("ec2")
    try:
        found = {}
        for iid in aws.instances():
            attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
            found[iid] = base64.b64decode(attr["UserData"].get("Value", "")).decode()
        return found
    finally:
        ec2.close()


@pytest.mark.timeout(300)
def test_hostile_values_sweep_dir_and_subdir_reach_the_task_verbatim(
    aws: AwsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = aws.tmp / "INJECTED"
    values = hostile_values(canary)
    assert len(values) >= 10
    local_cwd = aws.tmp / "local-cwd"  # where a relative `touch` on the launching side would land
    local_cwd.mkdir()
    monkeypatch.chdir(local_cwd)
    sweep_dir = aws.tmp / f'it\'s a "swept" $(touch {REL_CANARY}) `touch {REL_CANARY}` dir; touch {REL_CANARY}'
    tag_note = f"a; touch {REL_CANARY} $(touch {REL_CANARY}) 'q\" `touch {REL_CANARY}`"
    instances = math.ceil(len(values) / PER_INSTANCE)
    launcher = aws.launcher_settings(jobs_per_instance=PER_INSTANCE, tags={"project": "hrl-tests", "note": tag_note})
    overrides = [sweep_override("x", values), f"hydra.sweep.subdir={quote_value(_hostile_subdir())}"]

    returns = multirun(sweep_dir, launcher, overrides, mode="echo")

    # every task got its value verbatim, in the instance-side dir named by the hostile subdir
    assert [r.status for r in returns] == [JobStatus.COMPLETED] * len(values)
    assert [r.return_value["x"] for r in returns] == values
    sweep_id = meta(sweep_dir)["sweep_id"]
    assert re.fullmatch(r"[A-Za-z0-9._-]+", sweep_id), sweep_id  # what reaches tags, keys, user-data
    subdirs = [_resolved_subdir(n) for n in range(len(values))]
    assert subdirs[1].startswith("n1 it's") and subdirs[1].endswith(" $HOME back\\slash \\")
    remote_sweep = f"{aws.tmp / 'remote'}/{sweep_id}/sweep"
    assert [r.return_value["output_dir"] for r in returns] == [f"{remote_sweep}/{s}" for s in subdirs]
    # ... and its files came home into the hostile local dirs
    for value, subdir in zip(values, subdirs):
        assert (sweep_dir / subdir / "artifact.txt").read_text() == f"x={value}\n"
        assert (sweep_dir / subdir / ".launcher" / "result.pkl").is_file()

    # nothing ran: no canary on the launching side, in the instances' dirs or the remote dir
    wait_for(lambda: not aws.running_instances(), 20, "the instances to terminate themselves")
    aws.runner.wait_idle(20)
    assert not canary.exists()
    assert _canaries_anywhere([aws.tmp], {canary.name, REL_CANARY}) == []
    for run in aws.runner.runs.values():
        assert not SHELL_ERRORS.search(run.console), run.console
        assert not run.shutdown_called and "terminated instance" in run.console, run.console
    tags = [{t["Key"]: t["Value"] for t in inst["Tags"]} for inst in aws.instances().values()]
    assert len(tags) == instances and all(t["note"] == tag_note for t in tags)

    # no hostile string reaches a shell: not the user-data, and in S3 only objects read by Python
    user_data = _user_data(aws)
    assert len(user_data) == instances
    for script in user_data.values():
        assert canary.name not in script and REL_CANARY not in script and "hydra.job.num" not in script
    carriers = {k for k, v in aws.s3_objects().items() if REL_CANARY.encode() in v or canary.name.encode() in v}
    assert all(PAYLOAD_KEY.search(k) for k in carriers), sorted(carriers)
    assert {k.rsplit("/", 1)[-1] for k in carriers} >= {"plan.json", "artifact.txt"}  # the plan is the job table
    plans = [json.loads(v) for k, v in aws.s3_objects().items() if k.endswith("/plan.json")]
    planned = sorted(job["output_dir"] for plan in plans for job in plan["jobs"])
    assert planned == sorted(f"{remote_sweep}/{s}" for s in subdirs)


@pytest.mark.parametrize(
    "text",
    [
        "n${x}",
        "a\\${x}",
        "a\\\\${x}\\",
        "\\\\${x}${y}\\${",
        "end\\",
        "mid\\\\dle}",
        "$${x} $(x) ${",
        "${oc.env:HOME}",
    ],
)
def test_instance_side_paths_are_not_interpolated_by_omegaconf(text: str) -> None:
    """Sweep subdir, sweep dir and cwd are written into the job config as literals: OmegaConf on
    the instance must read back exactly the local text, whatever backslashes precede a ``${``."""
    literal = omega_literal(text)
    assert OmegaConf.create({"v": literal, "x": "X", "y": "Y"}).v == text


def test_job_config_is_relocated_on_the_instance_as_literals() -> None:
    """What the job does with its job table entry where it runs: sweep dir, subdir and the
    instance's cwd become literals (OmegaConf must not interpolate a ``${`` in them)."""
    cfg = OmegaConf.create(
        {"hydra": {"sweep": {"dir": "multirun/${x}", "subdir": "${num}"}, "runtime": {"cwd": "/local"}}, "x": 1}
    )
    subdir = "n1 a\\${y} $HOME"
    entry = job_entry(0, [], "/r/result.pkl", "/r/s-1/sweep", subdir, "/r/s-1/ws ${z}/code")
    relocate_config(cfg, entry)
    assert (cfg.hydra.sweep.dir, cfg.hydra.sweep.subdir) == ("/r/s-1/sweep", subdir)
    assert cfg.hydra.runtime.cwd == "/r/s-1/ws ${z}/code"
