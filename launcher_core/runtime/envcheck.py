"""The rule of what must match between the launching side and the job side, and its probe.

Shipped with the runtime so that the same rule judges a host at pre-flight
(:mod:`launcher_core.preflight`), after a host's environment was prepared (``uv sync``), and on
an EC2 instance after its ``setup_commands`` (:mod:`launcher_core.runtime.ec2_agent`).

The rule: the job side runs Python >= 3.10 with hydra-core and omegaconf of the launching side's
major.minor (the configs travel as their pickled nodes) and any cloudpickle. Only a payload with
parts that travel pickled by value (:class:`launcher_core.runtime.payload.PayloadNeeds`: a task
function the job side cannot import) also needs the launching side's Python minor version and
cloudpickle major.minor there. When the payload is not known (``launcher-core cluster test``),
what only such a payload needs is a warning.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"
# what the job side needs (distribution, module)
JOB_SIDE_PACKAGES = (("hydra-core", "hydra"), ("omegaconf", "omegaconf"), ("cloudpickle", "cloudpickle"))
SAME_MINOR = ("hydra-core", "omegaconf")  # the configs travel as pickled nodes of their classes
OLDEST_JOB_PYTHON = (3, 10)  # what the shipped runtime runs on (pyproject's requires-python)


@dataclass(frozen=True)
class Check:
    """One row of a pre-flight: what was checked on which host, the result and the fix."""

    check: str
    host: str
    status: str  # ok | warn (not a reason to refuse) | fail
    detail: str = ""
    fix: str = ""
    key: str = ""  # the cache key of the host's settings (set by the backend)

    @property
    def ok(self) -> bool:
        return self.status != FAIL


def local_versions() -> dict[str, str]:
    """Python (major.minor) and job-side package versions of this interpreter."""
    import importlib.metadata

    out = {"python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    for dist, _module in JOB_SIDE_PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


# runs on hosts with `python -c`: standard library only, prints one JSON line
PROBE = (
    "import json,sys\n"
    "r={'python':'%d.%d.%d'%sys.version_info[:3],'executable':sys.executable,'packages':{}}\n"
    "for d,m in (('hydra-core','hydra'),('omegaconf','omegaconf'),('cloudpickle','cloudpickle')):\n"
    "    try:\n"
    "        mod=__import__(m)\n"
    "        r['packages'][d]=str(getattr(mod,'__version__','?'))\n"
    "    except Exception as e:\n"
    "        m=str(e).splitlines()[0][:200] if str(e) else ''\n"
    "        r['packages'][d]='ERROR '+type(e).__name__+(': '+m if m else '')\n"
    "print('HRLPROBE '+json.dumps(r))\n"
)


@dataclass(frozen=True)
class _Judge:
    """The facts a verdict depends on: the launching side's versions and the payload's needs."""

    host: str
    python: str
    key: str
    where: str
    here: dict[str, str]
    needs: Any  # PayloadNeeds, or None when not known

    @property
    def by_value(self) -> str:
        """Why parts of the payload travel by value ("" when none do)."""
        return self.needs.describe() if self.needs is not None and not self.needs.portable else ""


def python_checks(
    host: str,
    answer: str | None,
    *,
    python: str,
    key: str,
    needs: Any,
    here: dict[str, str] | None = None,
    where: str = "hydra.launcher.python",
    packages: bool = True,
) -> list[Check]:
    """Rows for the probe's answer (the output of ``python -c PROBE``, None if it did not run),
    judged against ``here`` (the launching side's :func:`local_versions`) and ``needs``."""
    judge = _Judge(host, python, key, where, dict(here or local_versions()), needs)
    probe = _parse_probe(answer)
    if probe is None:
        shown = " ".join((answer or "").split())[:200] or "nothing"
        return [
            Check(
                "python",
                host,
                FAIL,
                f"{python!r} is not a working Python on {host}: it printed {shown!r}",
                f"set {where} to the command of a Python >= 3.10 there (e.g. ~/venv/bin/python)",
                key,
            )
        ]
    rows = [_python_row(judge, str(probe.get("python", "?")), str(probe.get("executable", "?")))]
    if not packages:
        return rows
    found = probe.get("packages") or {}
    for dist, _module in JOB_SIDE_PACKAGES:
        rows.append(_package_row(judge, dist, str(found.get(dist, "ERROR missing"))))
    return rows


def _python_row(judge: _Judge, version: str, executable: str) -> Check:
    here = judge.here["python"]
    detail = f"{judge.python} is Python {version} ({executable})"
    try:
        there = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        there = (0, 0)
    if there < OLDEST_JOB_PYTHON:
        fix = f"point {judge.where} at a Python >= 3.10 on {judge.host}"
        return Check("python version", judge.host, FAIL, detail + "; jobs need Python >= 3.10", fix, judge.key)
    if major_minor(version) == here:
        return Check("python version", judge.host, OK, detail, "", judge.key)
    if judge.by_value:
        return Check(
            "python version",
            judge.host,
            FAIL,
            f"{detail}; {judge.by_value}, which needs Python {here} there as here",
            f"point {judge.where} at a Python {here} on {judge.host}, or make the task importable from the code dir",
            judge.key,
        )
    if judge.needs is None:
        note = f"{detail}; only a task that travels pickled by value needs {here} there as here"
        return Check("python version", judge.host, WARN, note, "", judge.key)
    return Check("python version", judge.host, OK, detail, "", judge.key)


def _package_row(judge: _Judge, dist: str, there: str) -> Check:
    here = judge.here[dist]
    minor = major_minor(here)
    install = f"`{judge.python} -m pip install '{dist}=={minor}.*'` on {judge.host}"
    if there.startswith("ERROR"):
        return Check(
            dist,
            judge.host,
            FAIL,
            f"not importable by {judge.python}: {there[6:]}",
            f"install it there: `{judge.python} -m pip install '{dist}=={here}'` (or use a Python that has it)",
            judge.key,
        )
    if major_minor(there) == minor:
        return Check(dist, judge.host, OK, there, "", judge.key)
    if dist in SAME_MINOR:
        detail = f"{there} there, {here} here: the jobs' configs travel as {dist} {minor}.x objects"
        return Check(dist, judge.host, FAIL, detail, install, judge.key)
    if judge.by_value:
        detail = f"{there} there, {here} here: {judge.by_value}, which needs cloudpickle {minor}.x there"
        return Check(dist, judge.host, FAIL, detail, install + ", or make the task importable", judge.key)
    if judge.needs is None:
        detail = f"{there} there, {here} here: only a task travelling pickled by value needs {minor}.x"
        return Check(dist, judge.host, WARN, detail, "", judge.key)
    return Check(dist, judge.host, OK, there, "", judge.key)


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _parse_probe(answer: str | None) -> dict[str, Any] | None:
    for line in (answer or "").splitlines():
        if line.startswith("HRLPROBE "):
            try:
                value = json.loads(line[len("HRLPROBE ") :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
