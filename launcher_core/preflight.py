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

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher_core.errors import ConfigError
from launcher_core.runtime import envcheck
from launcher_core.runtime.envcheck import FAIL, JOB_SIDE_PACKAGES, OK, PROBE, WARN, Check, local_versions
from launcher_core.runtime.markers import LAUNCHER_DIR

__all__ = [
    "FAIL",
    "OK",
    "PROBE",
    "WARN",
    "Check",
    "PreflightRequest",
    "local_versions",
    "python_checks",
    "run_preflight",
]

if TYPE_CHECKING:
    from launcher_core.backends.base import Backend
    from launcher_core.jobs import SweepInfo

log = logging.getLogger("launcher_core.preflight")

CACHE_FILE = "preflight.json"  # in the sweep's .launcher/
CACHE_TTL_S = 24 * 3600.0

# What the payload of the sweep being checked needs (runtime.payload.PayloadNeeds), set by
# run_preflight around the backend's checks (payload_requirements), so that the backends' probes
# need not pass it along. None: not known (`cluster test`).
_payload_needs: Any = None


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


@contextlib.contextmanager
def payload_requirements(needs: Any) -> Iterator[None]:
    """Judge the hosts' answers against what this payload needs (``runtime.payload.PayloadNeeds``)."""
    global _payload_needs
    previous, _payload_needs = _payload_needs, needs
    try:
        yield
    finally:
        _payload_needs = previous


def current_payload_needs() -> Any:
    """The needs the pre-flight in progress judges against (None outside one, or not known)."""
    return _payload_needs


def python_checks(
    host: str,
    answer: str | None,
    *,
    python: str,
    key: str,
    where: str = "hydra.launcher.python",
    packages: bool = True,
    needs: Any = None,
) -> list[Check]:
    """The rule (:func:`launcher_core.runtime.envcheck.python_checks`) on a host's probe answer,
    against this machine's versions and ``needs`` (default: the pre-flight in progress's)."""
    return envcheck.python_checks(
        host,
        answer,
        python=python,
        key=key,
        needs=needs if needs is not None else _payload_needs,
        here=local_versions(),
        where=where,
        packages=packages,
    )


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
    cache = PreflightCache(sweep.sweep_dir / LAUNCHER_DIR / CACHE_FILE)
    request = PreflightRequest(n_jobs=n_jobs, cache=cache, sweep=sweep)
    with payload_requirements(sweep.payload_needs):
        rows = backend.preflight(request)
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
