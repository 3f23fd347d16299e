"""The pre-flight's verdicts on hosts' answers, under the rule of what must match (docs): another
Python minor version or cloudpickle passes unless the task travels pickled by value, hydra-core
and omegaconf must share this machine's major.minor; and the cache of hosts that passed (atomic
file, keyed by settings, expiring). Real environments of other versions: tests/test_version_matrix.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

from launcher_core.preflight import (
    FAIL,
    OK,
    WARN,
    Check,
    PreflightCache,
    failure_message,
    local_versions,
    payload_requirements,
    python_checks,
)
from launcher_core.runtime.payload import PayloadNeeds


def _answer(python: str, **packages: str) -> str:
    here = local_versions()
    found = {d: here[d] for d in ("hydra-core", "omegaconf", "cloudpickle")} | packages
    return "noise from a profile\nHRLPROBE " + json.dumps(
        {"python": python, "executable": "/x/python", "packages": found}
    )


def _other_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


BY_VALUE = PayloadNeeds(by_value=("the task function <lambda> is not defined at the top level",), cloudpickle="3.1")


def test_another_minor_python_version_passes_unless_the_task_travels_by_value() -> None:
    here = local_versions()["python"]
    other = _other_minor(here) + ".0"
    with payload_requirements(PayloadNeeds()):  # task by reference, configs as data
        rows = python_checks("gpu1", _answer(other), python="python3", key="k")
    assert all(r.status == OK for r in rows), rows
    with payload_requirements(BY_VALUE):
        rows = python_checks("gpu1", _answer(other), python="python3", key="k")
    version = next(r for r in rows if r.check == "python version")
    assert version.status == FAIL and f"python3 is Python {other}" in version.detail
    assert "is not defined at the top level" in version.detail and f"needs Python {here} there" in version.detail
    assert version.fix.startswith(f"point hydra.launcher.python at a Python {here} on gpu1")
    rows = python_checks("gpu1", _answer(other), python="python3", key="k")  # `cluster test`: not known
    assert next(r for r in rows if r.check == "python version").status == WARN


def test_a_python_older_than_3_10_is_refused() -> None:
    with payload_requirements(PayloadNeeds()):
        rows = python_checks("gpu1", _answer("3.9.18"), python="py", key="k")
    version = next(r for r in rows if r.check == "python version")
    assert version.status == FAIL and "jobs need Python >= 3.10" in version.detail


def test_hydra_core_and_omegaconf_of_another_minor_are_refused() -> None:
    with payload_requirements(PayloadNeeds()):
        answer = _answer(f"{local_versions()['python']}.1", **{"hydra-core": "1.1.2", "omegaconf": "2.1.0"})
        rows = {r.check: r for r in python_checks("gpu1", answer, python="py", key="k")}
    here = local_versions()
    assert rows["hydra-core"].status == FAIL and f"1.1.2 there, {here['hydra-core']} here" in rows["hydra-core"].detail
    assert rows["hydra-core"].fix == f"`py -m pip install 'hydra-core=={_minor(here['hydra-core'])}.*'` on gpu1"
    assert rows["omegaconf"].status == FAIL
    assert rows["cloudpickle"].status == OK and rows["python version"].status == OK


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_cloudpickle_must_match_only_for_a_task_that_travels_by_value() -> None:
    answer = _answer(f"{local_versions()['python']}.1", cloudpickle="2.2.0")
    with payload_requirements(PayloadNeeds()):
        assert {r.status for r in python_checks("gpu1", answer, python="py", key="k")} == {OK}
    with payload_requirements(BY_VALUE):
        row = next(r for r in python_checks("gpu1", answer, python="py", key="k") if r.check == "cloudpickle")
    assert row.status == FAIL and f"2.2.0 there, {local_versions()['cloudpickle']} here" in row.detail
    assert "is not defined at the top level" in row.detail


def test_the_cache_remembers_passing_hosts_per_settings_and_expires(tmp_path: Path) -> None:
    path = tmp_path / ".launcher" / "preflight.json"
    cache = PreflightCache(path)
    cache.passed("gpu1", "key-a")
    cache.save()
    assert not list(path.parent.glob(".preflight-*"))  # the temp file was renamed into place
    again = PreflightCache(path)
    assert again.fresh("gpu1", "key-a") and not again.fresh("gpu1", "key-b") and not again.fresh("gpu2", "key-a")
    expired = PreflightCache(path, ttl_s=0.0)
    time.sleep(0.01)
    assert not expired.fresh("gpu1", "key-a")
    path.write_text("{broken")
    assert not PreflightCache(path).fresh("gpu1", "key-a")  # a damaged cache costs a round trip, nothing else


def test_the_failure_message_names_host_check_and_fix() -> None:
    text = failure_message([Check("rsync", "gpu1", FAIL, "missing", "install rsync")], 3)
    assert text.splitlines() == [
        "pre-flight check failed:",
        "  gpu1: rsync: missing",
        "    fix: install rsync",
        "none of the 3 jobs was started; fix the setting and relaunch.",
    ]
