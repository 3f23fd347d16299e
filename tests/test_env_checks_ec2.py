"""ec2: the instance checks the jobs' environment after ``setup_commands`` and before any job
starts (issue 28), and a failing setup command is named as the jobs' reason.

A real moto server on loopback and the instance agent running the real user-data (tests/
ec2_fixtures.py). The "instance" Python with packages outside the rule is the test's own Python
with the real omegaconf 2.2.3 put first on its path by a setup command, as a venv activation would.
"""

from __future__ import annotations

import importlib.metadata
import shlex

import pytest

from launcher_core.jobs import JobState
from launcher_core.runtime.worker import JobLostError
from tests.ec2_fixtures import AwsWorld, multirun, rows, wait_for
from tests.test_env_checks_ssh import OLD_OMEGACONF, old_omegaconf_site

pytestmark = [pytest.mark.ec2, pytest.mark.usefixtures("hydra_restore_singletons")]


def test_a_failing_setup_command_is_named_as_the_jobs_reason(aws: AwsWorld) -> None:
    sweep_dir = aws.tmp / "sweep"
    after = aws.tmp / "after"
    bad = "echo 'E: Unable to locate package libfoo' >&2; apt-get-stand-in() { return 100; }; apt-get-stand-in"
    setup = ["echo preparing", bad, f"touch {after}"]

    with pytest.raises(JobLostError, match=r"setup_commands failed with exit code 100 at setup_commands\[1\]"):
        multirun(sweep_dir, aws.launcher_settings(setup_commands=setup), ["x=1,2"], mode="ok")

    reasons = {row.exit_reason for row in rows(sweep_dir).values()}
    assert len(reasons) == 1, reasons
    (reason,) = reasons
    assert f"at setup_commands[1] `{bad}`:" in reason, reason
    assert "E: Unable to locate package libfoo" in reason
    assert {row.outcome or row.state for row in rows(sweep_dir).values()} == {JobState.FAILED}
    assert not after.exists()  # nothing after the failing command ran
    wait_for(lambda: not aws.running_instances(), 10, "the instance to terminate itself")


def test_packages_outside_the_rule_fail_the_jobs_before_any_task_starts(aws: AwsWorld) -> None:
    site = old_omegaconf_site()
    sweep_dir = aws.tmp / "sweep"
    setup = [f"export PYTHONPATH={shlex.quote(str(site))}"]  # as activating an old venv would

    with pytest.raises(JobLostError, match="cannot run them"):
        multirun(sweep_dir, aws.launcher_settings(setup_commands=setup), ["x=1,2"], mode="ok")

    here = importlib.metadata.version("omegaconf")
    job_rows = rows(sweep_dir).values()
    for row in job_rows:
        reason = row.exit_reason or ""
        assert reason.startswith("the jobs' Python on this instance cannot run them (checked after setup_commands):")
        assert f"omegaconf: {OLD_OMEGACONF} there, {here} here" in reason, reason
        assert "fix: `" in reason and "omegaconf==2.3.*" in reason
        assert (row.outcome or row.state) is JobState.FAILED
        # the job's task never started: no output dir content came back (the task writes artifact.txt)
        assert not (row.output_dir / "artifact.txt").exists()
        assert not (row.output_dir / ".launcher" / "stdout.log").exists()
    wait_for(lambda: not aws.running_instances(), 10, "the instance to terminate itself")

    # without the old package the same sweep runs (a new sweep dir: a fresh launch)
    good = multirun(aws.tmp / "sweep2", aws.launcher_settings(), ["x=1,2"], mode="ok")
    assert [r.return_value["square"] for r in good] == [1, 4]


def test_the_shipped_rule_judges_as_the_pre_flight_does() -> None:
    """The agent runs the rule shipped with the runtime (``runtime.envcheck``): the same rows for
    the same answer as the pre-flight here, with this machine's versions and the payload's needs
    as the instance gets them."""
    import json

    from launcher_core.backends.ec2.userdata import environment_check
    from launcher_core.preflight import PROBE, python_checks
    from launcher_core.runtime.ec2_agent import judge_probe
    from launcher_core.runtime.payload import PayloadNeeds

    for needs in (None, PayloadNeeds(), PayloadNeeds(by_value=("a lambda",), python="3.11", cloudpickle="3.1")):
        check = json.loads(json.dumps(environment_check(["pip install x"], needs)))  # as the agent reads it
        assert check["probe"] == PROBE and check["setup_commands"] == ["pip install x"]
        here = check["here"]
        for python, packages in (
            ("3.9.1", {d: here[d] for d in ("hydra-core", "omegaconf", "cloudpickle")}),
            ("3.99.0", {"hydra-core": here["hydra-core"], "omegaconf": OLD_OMEGACONF, "cloudpickle": "2.2.0"}),
        ):
            answer = "HRLPROBE " + json.dumps({"python": python, "executable": "/p", "packages": packages})
            expected = [
                {"check": r.check, "status": r.status, "detail": r.detail, "fix": r.fix}
                for r in python_checks("i-1", answer, python="py", key="", needs=needs)
            ]
            assert judge_probe(check, answer, "py", "i-1") == expected
