"""The SSH hosts of a ``remote_ssh`` launch, as both the backend and its pre-flight use them: one
connection per host, work fanned out to the hosts in parallel threads (one host failing does not
stop the others), interactive logins done first, one host at a time, and the outages of hosts
that could not be polled ridden out with backoff.

Both :mod:`.backend` and :mod:`.preflight` import this module; it imports neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from launcher_core.backends.remote_ssh.settings import HostSettings, RemoteSSHSettings
from launcher_core.errors import BackendError
from launcher_core.remote.ssh import ConnectionPool, ConnectionStats, HostAddress, SSHConnection

log = logging.getLogger("launcher_core.remote_ssh")

T = TypeVar("T")
R = TypeVar("R")

MAX_HOST_THREADS = 8


def assign_to_hosts(
    jobs: Sequence[T], weights: Sequence[int], fits: Callable[[T, int], bool] | None = None
) -> list[list[T]]:
    """Spread jobs over hosts in proportion to their slots (smooth weighted round robin), each
    job among the hosts it ``fits`` on (all by default; a job that fits none is the caller's to
    refuse first: it goes to the first host)."""
    buckets: list[list[T]] = [[] for _ in weights]
    current = [0] * len(weights)
    everywhere = list(range(len(weights)))
    for job in jobs:
        hosts = [i for i in everywhere if fits(job, i)] if fits is not None else everywhere
        hosts = hosts or everywhere[:1]
        for i in hosts:
            current[i] += weights[i]
        best = max(hosts, key=lambda i: current[i])
        current[best] -= sum(weights[i] for i in hosts)
        buckets[best].append(job)
    return buckets


@dataclass
class Outage:
    """A host that could not be polled since ``since`` (monotonic seconds)."""

    since: float
    failures: int = 0
    retry_at: float = 0.0
    reported: float = 0.0


class HostPool:
    """The hosts of ``settings`` (and any other host named by a label, e.g. from a stored handle):
    their SSH connections, the parallel fan-out of work to them and their outages."""

    def __init__(self, settings: RemoteSSHSettings) -> None:
        self.settings = settings
        self.pool = ConnectionPool(settings.ssh)
        self._hosts_by_label = {h.address.label: h for h in settings.hosts}
        self._outages: dict[str, Outage] = {}  # hosts that could not be polled lately

    def host(self, label: str) -> HostSettings:
        """The settings of the configured host ``label`` (KeyError: not one of them)."""
        return self._hosts_by_label[label]

    def conn(self, label: str) -> SSHConnection:
        """The (shared, lazily started) connection to the host ``label``."""
        host = self._hosts_by_label.get(label)
        address = host.address if host else HostAddress.parse(label)
        return self.pool.get(address)

    def ensure_logins(self, labels: Iterable[str]) -> None:
        """Interactive logins (password, 2FA) are done one host at a time, before any thread."""
        conns = [self.conn(label) for label in labels]
        if any(c.interactive() for c in conns):
            for conn in conns:
                conn.call("login", lambda: None)

    def per_host(
        self, work: Mapping[str, T], fn: Callable[[str, T], R]
    ) -> tuple[dict[str, R], dict[str, BackendError]]:
        """Run ``fn(label, item)`` for every host of ``work``, in parallel; one host failing does
        not stop the others. Returns the results and the errors, both by host label."""
        results: dict[str, R] = {}
        errors: dict[str, BackendError] = {}

        def record(label: str, call: Callable[[], R]) -> None:
            try:
                results[label] = call()
            except BackendError as exc:
                errors[label] = exc
            except Exception as exc:  # noqa: BLE001 - e.g. a local disk error: name the host, keep the others
                error = BackendError(f"host {label}: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                errors[label] = error

        if len(work) <= 1:
            for label, item in work.items():
                record(label, partial(fn, label, item))
            return results, errors
        with ThreadPoolExecutor(max_workers=min(MAX_HOST_THREADS, len(work))) as ex:
            futures = {label: ex.submit(fn, label, item) for label, item in work.items()}
            for label, fut in futures.items():
                record(label, fut.result)
        return results, errors

    def due(self, work: Mapping[str, T]) -> dict[str, T]:
        """``work`` without the hosts in an outage whose next retry is not due yet."""
        now = time.monotonic()
        return {label: item for label, item in work.items() if self._outages.get(label, Outage(now)).retry_at <= now}

    def note_contact(self, reached: Iterable[str], errors: Mapping[str, BackendError]) -> dict[str, BackendError]:
        """Ride out short outages: a host that cannot be polled is retried with backoff for
        ``reconnect_grace_s`` (its jobs keep running there and are left out of the poll, i.e.
        unchanged). Returns the errors of the hosts down for longer: the launch gives up on them."""
        now = time.monotonic()
        grace_s = self.settings.reconnect_grace_s
        for label in reached:
            outage = self._outages.pop(label, None)
            if outage is not None:
                log.warning("contact with %s is back after %.0f s", label, now - outage.since)
        expired = {}
        for label, error in errors.items():
            outage = self._outages.setdefault(label, Outage(now))
            outage.failures += 1
            down_s = now - outage.since
            if down_s >= grace_s:
                expired[label] = error
                continue
            outage.retry_at = now + min(2.0**outage.failures, 30.0, grace_s - down_s)
            if outage.failures == 1 or now - outage.reported >= 30.0:
                outage.reported = now
                log.warning(
                    "lost contact with %s (%s); its jobs keep running there. Retrying for up to %.0f s more.",
                    label,
                    str(error).splitlines()[0],
                    grace_s - down_s,
                )
        return expired

    def down(self) -> list[str]:
        """Hosts in an outage now (could not be polled lately, contact not back yet)."""
        return sorted(self._outages)

    def stats(self) -> ConnectionStats:
        """Connections started, commands, rsyncs and retries so far."""
        return self.pool.stats()

    def close(self) -> None:
        self.pool.close()
