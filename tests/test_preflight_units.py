"""The pre-flight's verdicts on a host's answers that this machine cannot produce for real (only
one Python minor version is installed here): another minor version, an incompatible hydra-core;
and the cache of hosts that passed (atomic file, keyed by settings, expiring)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from launcher_core.preflight import (
    FAIL,
    OK,
    Check,
    PreflightCache,
    failure_message,
    local_versions,
    python_checks,
)


def _answer(python: str, **packages: str) -> str:
    here = local_versions()
    found = {d: here[d] for d in ("hydra-core", "omegaconf", "cloudpickle")} | packages
    return "noise from a profile\nHRLPROBE " + json.dumps(
        {"python": python, "executable": "/x/python", "packages": found}
    )


def test_another_minor_python_version_is_refused_with_the_fix() -> None:
    here = local_versions()["python"]
    major, minor = here.split(".")
    other = f"{major}.{int(minor) + 1}.0"
    rows = python_checks("gpu1", _answer(other), python="python3", key="k")
    version = next(r for r in rows if r.check == "python version")
    assert version.status == FAIL and f"python3 is Python {other}" in version.detail
    assert (
        f"this machine runs {here}" in version.detail
        and version.fix == f"point hydra.launcher.python at a Python {here} on gpu1"
    )
    assert all(r.status == OK for r in rows if r.check != "python version")


def test_an_incompatible_package_version_is_refused_and_a_matching_one_passes() -> None:
    rows = {
        r.check: r
        for r in python_checks(
            "gpu1", _answer(f"{local_versions()['python']}.1", **{"hydra-core": "1.1.2"}), python="py", key="k"
        )
    }
    assert rows["hydra-core"].status == FAIL and "1.1.2 there" in rows["hydra-core"].detail
    assert f"`py -m pip install 'hydra-core=={local_versions()['hydra-core']}'` on gpu1" == rows["hydra-core"].fix
    assert rows["cloudpickle"].status == OK and rows["python version"].status == OK


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
