"""Pre-flight checks: is every host able to run the jobs, asked before anything is submitted.

Backends implement :meth:`launcher_core.backends.base.Backend.preflight` (one round trip per
host, in ``backends/<name>/preflight.py``) and return :class:`Check` rows; this module holds what
they share: the row, the request, the cache of hosts that passed, the table ``launcher-core
cluster test`` prints and :func:`run_preflight`, the launch-time hook of the controller.

The cache lives in the sweep's ``.launcher/preflight.json``: a host that passed is not asked
again for :data:`CACHE_TTL_S` as long as what is checked (the backend's settings for that host
and the local versions they are compared with) did not change, so the batches of a multirun and
a relaunch of the same sweep cost no round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.errors import ConfigError

if TYPE_CHECKING:
    from launcher_core.backends.base import Backend
    from launcher_core.jobs import SweepInfo

log = logging.getLogger("launcher_core.preflight")

CACHE_FILE = "preflight.json"  # in the sweep's .launcher/
CACHE_TTL_S = 24 * 3600.0
OK, WARN, FAIL = "ok", "warn", "fail"
# what the job side needs (distribution, module)
JOB_SIDE_PACKAGES = (("hydra-core", "hydra"), ("omegaconf", "omegaconf"), ("cloudpickle", "cloudpickle"))
# the configs travel as pickled OmegaConf nodes of Hydra's own classes: the same major.minor
SAME_MINOR = ("hydra-core", "omegaconf")
OLDEST_JOB_PYTHON = (3, 10)  # what the shipped runtime runs on (pyproject's requires-python)

# What the payload of the sweep being checked needs (runtime.payload.PayloadNeeds), set by
# run_preflight around the backend's checks: a module global rather than a parameter so the
# backends' probes and their host threads need not pass it along. None: not known (`cluster
# test`), then what only a task travelling by value needs is a warning.
_payload_needs: Any = None


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


@dataclass
class PreflightRequest:
    """What a backend is asked to check: ``n_jobs`` jobs (None: every host, as ``cluster test``),
    ``deep`` checks (a tiny job on a compute node), and the cache of hosts that passed."""

    n_jobs: int | None = None
    deep: bool = False
    cache: PreflightCache | None = None
    sweep: SweepInfo | None = None  # the sweep being launched (None for `cluster test`)
    cached_hosts: list[str] = field(default_factory=list)

    def is_cached(self, host: str, key: str) -> bool:
        """Whether ``host`` passed with these settings lately (then the backend skips it)."""
        if self.cache is not None and self.cache.fresh(host, key):
            self.cached_hosts.append(host)
            return True
        return False


def fingerprint(*parts: Any) -> str:
    """A cache key of what a host is checked with: its settings and this machine's versions."""
    needs = (
        None if _payload_needs is None else [_payload_needs.by_value, _payload_needs.python, _payload_needs.cloudpickle]
    )
    text = json.dumps([local_versions(), needs, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def local_versions() -> dict[str, str]:
    """Python and job-side package versions here, which hosts must match."""
    import importlib.metadata

    out = {"python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    for dist, _module in JOB_SIDE_PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


# --- the Python probe (runs on hosts: standard library only, prints one JSON line) ------------
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


def python_checks(
    host: str,
    answer: str | None,
    *,
    python: str,
    key: str,
    where: str = "hydra.launcher.python",
    packages: bool = True,
) -> list[Check]:
    """Rows for the probe's answer (the output of ``python -c PROBE``, None if it did not run).

    The rule (README, "What must match"): the job side runs Python >= 3.10 with hydra-core and
    omegaconf of this machine's major.minor (the configs travel as their pickled nodes) and any
    cloudpickle >= 2.2. Only a payload with parts that travel pickled by value (a task function
    the job side cannot import, see :mod:`launcher_core.runtime.payload`) also needs this
    machine's Python minor version and cloudpickle major.minor there.
    """
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
    rows = [_python_row(host, str(probe.get("python", "?")), str(probe.get("executable", "?")), python, where, key)]
    if not packages:
        return rows
    found = probe.get("packages") or {}
    here = local_versions()
    for dist, _module in JOB_SIDE_PACKAGES:
        rows.append(_package_row(host, dist, str(found.get(dist, "ERROR missing")), here[dist], python, key))
    return rows


def _by_value_note() -> str:
    needs = _payload_needs
    return needs.describe() if needs is not None and not needs.portable else ""


def _python_row(host: str, version: str, executable: str, python: str, where: str, key: str) -> Check:
    here = local_versions()["python"]
    detail = f"{python} is Python {version} ({executable})"
    try:
        there = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        there = (0, 0)
    if there < OLDEST_JOB_PYTHON:
        return Check(
            "python version",
            host,
            FAIL,
            detail + "; jobs need Python >= 3.10",
            f"point {where} at a Python >= 3.10 on {host}",
            key,
        )
    if _major_minor(version) == here:
        return Check("python version", host, OK, detail, "", key)
    why = _by_value_note()
    if why:
        return Check(
            "python version",
            host,
            FAIL,
            f"{detail}; {why}, which needs Python {here} there as here",
            f"point {where} at a Python {here} on {host}, or make the task importable from the code dir",
            key,
        )
    if _payload_needs is None:
        return Check(
            "python version",
            host,
            WARN,
            f"{detail}; only a task that travels pickled by value needs {here} there as here",
            "",
            key,
        )
    return Check("python version", host, OK, detail, "", key)


def _package_row(host: str, dist: str, there: str, here: str, python: str, key: str) -> Check:
    pin = f"{dist}=={here}"
    if there.startswith("ERROR"):
        return Check(
            dist,
            host,
            FAIL,
            f"not importable by {python}: {there[6:]}",
            f"install it there: `{python} -m pip install '{pin}'` (or use a Python that has it)",
            key,
        )
    if dist in SAME_MINOR and _major_minor(there) != _major_minor(here):
        return Check(
            dist,
            host,
            FAIL,
            f"{there} there, {here} here: the jobs' configs travel as {dist} {_major_minor(here)}.x objects",
            f"`{python} -m pip install '{dist}=={_major_minor(here)}.*'` on {host}",
            key,
        )
    if dist == "cloudpickle" and _major_minor(there) != _major_minor(here):
        why = _by_value_note()
        if why:
            return Check(
                dist,
                host,
                FAIL,
                f"{there} there, {here} here: {why}, which needs cloudpickle {_major_minor(here)}.x there",
                f"`{python} -m pip install '{dist}=={_major_minor(here)}.*'` on {host}, or make the task importable",
                key,
            )
        if _payload_needs is None:
            return Check(
                dist,
                host,
                WARN,
                f"{there} there, {here} here: only a task travelling pickled by value needs {_major_minor(here)}.x",
                "",
                key,
            )
    return Check(dist, host, OK, there, "", key)


def _major_minor(version: str) -> str:
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


# --- the cache ----------------------------------------------------------------------------------
class PreflightCache:
    """Hosts that passed, per settings key, in one JSON file written atomically (temp + rename)."""

    def __init__(self, path: Path, ttl_s: float = CACHE_TTL_S) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._entries = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def fresh(self, host: str, key: str) -> bool:
        entry = self._entries.get(host)
        if not isinstance(entry, dict) or entry.get("key") != key:
            return False
        return time.time() - float(entry.get("at", 0)) < self.ttl_s

    def passed(self, host: str, key: str) -> None:
        self._entries[host] = {"key": key, "at": time.time()}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".preflight-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._entries, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --- the launch-time hook -------------------------------------------------------------------------
def run_preflight(backend: Backend, sweep: SweepInfo, n_jobs: int) -> None:
    """Check every host that gets jobs before any is submitted: one line per host when all is
    well, else a :class:`ConfigError` naming each host, what is wrong and the fix (nothing was
    submitted). Hosts that passed are remembered in the sweep's ``.launcher/preflight.json``."""
    global _payload_needs
    cache = PreflightCache(sweep.sweep_dir / ".launcher" / CACHE_FILE)
    request = PreflightRequest(n_jobs=n_jobs, cache=cache, sweep=sweep)
    _payload_needs = sweep.payload_needs
    try:
        rows = backend.preflight(request)
    finally:
        _payload_needs = None
    failed = [r for r in rows if not r.ok]
    if failed:
        raise ConfigError(failure_message(failed, n_jobs))
    for host, host_rows in group_by_host(rows).items():
        key = next((r.key for r in host_rows if r.key), "")
        if key:
            cache.passed(host, key)
        log.info("pre-flight %s: %s", host, summary_line(host_rows))
    for host in request.cached_hosts:
        log.info("pre-flight %s: ok (passed earlier with these settings)", host)
    if rows:
        try:
            cache.save()
        except OSError as exc:  # only costs a round trip next time
            log.warning("could not save the pre-flight cache %s: %s", cache.path, exc)


def group_by_host(rows: Sequence[Check]) -> dict[str, list[Check]]:
    out: dict[str, list[Check]] = {}
    for row in rows:
        out.setdefault(row.host, []).append(row)
    return out


def summary_line(rows: Sequence[Check]) -> str:
    """``ok (python 3.11.2, hydra-core 1.3.2, ...)``; warnings are added after it."""
    details = [f"{r.check} {r.detail}" if r.check in dict(JOB_SIDE_PACKAGES) else r.detail for r in rows if r.ok]
    warnings = [f"warning: {r.check}: {r.detail}" for r in rows if r.status == WARN]
    shown = "; ".join(d for d in details if d and not d.startswith("warning"))
    text = f"ok ({shown})" if shown else "ok"
    return text + "".join(f"; {w}" for w in warnings)


def failure_message(failed: Sequence[Check], n_jobs: int | None) -> str:
    lines = ["pre-flight check failed:"]
    for row in failed:
        lines.append(f"  {row.host}: {row.check}: {row.detail}")
        if row.fix:
            lines.append(f"    fix: {row.fix}")
    if n_jobs is not None:
        lines.append(f"none of the {n_jobs} jobs was started; fix the setting and relaunch.")
    return "\n".join(lines)


def print_table(rows: Sequence[Check], console: Any = None, title: str = "pre-flight") -> None:
    """The table of ``launcher-core cluster test``: check, host, result, fix."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=200 if not sys.stdout.isatty() else None)
    table = Table(title=title, show_header=True)
    for col in ("check", "host", "result", "fix"):
        table.add_column(col, overflow="fold")
    styles = {OK: "green", WARN: "yellow", FAIL: "red"}
    for row in rows:
        result = f"[{styles[row.status]}]{row.status}[/]" + (f": {row.detail}" if row.detail else "")
        table.add_row(row.check, row.host, result, row.fix)
    console.print(table)


def rows_to_json(rows: Sequence[Check]) -> list[Mapping[str, str]]:
    return [{"check": r.check, "host": r.host, "status": r.status, "detail": r.detail, "fix": r.fix} for r in rows]
