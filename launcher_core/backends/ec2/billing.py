"""What an ec2 sweep's machines cost so far: machine-hours read from DescribeInstances, and the
spot price from the spot price history (what the spill launcher's EC2 budget counts with).

Machine-hours are an approximation of EC2's per-second billing, each instance counted from its
``LaunchTime`` to its end, and at least :data:`MIN_BILLED_S`:

* still pending, running, stopping or shutting down: until now;
* terminated or stopped: until the time EC2 states in ``StateTransitionReason`` ("User initiated
  (2024-05-01 12:00:00 GMT)"; moto writes UTC); else until this process last saw it running (a
  poll or this count); else until this process first saw it ended, but never later than its
  ``max_runtime_min`` guard plus :data:`GUARD_SLACK_S` after launch (the user-data powers it off
  by then): an upper bound, which a budget prefers to an underestimate;
* no longer listed (EC2 lists terminated instances for about an hour): what this process last
  counted for it; else the same upper bound from the handle's launch time.

Not counted: EBS volumes, data transfer, the boot before user-data (billing starts at ``running``,
LaunchTime at ``pending``: a few seconds more here), and Windows/licensed AMIs' per-hour minimums.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

MIN_BILLED_S = 60.0  # EC2 bills a Linux instance per second, but at least one minute
GUARD_SLACK_S = 600.0  # boot and shutdown around the user-data's max_runtime_min guard
ENDED = frozenset({"terminated", "stopped"})
_LIVE = frozenset({"pending", "running"})
_REASON_TIME = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?:GMT|UTC)\)")


def reason_time(reason: str | None) -> float | None:
    """The time in a ``StateTransitionReason`` such as "User initiated (2024-05-01 12:00:00 GMT)"."""
    match = _REASON_TIME.search(reason or "")
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def launch_time(instance: Mapping[str, Any]) -> float | None:
    """``LaunchTime`` as a timestamp (boto3 gives a datetime; a stored JSON an ISO string)."""
    value = instance.get("LaunchTime")
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    return None


class MachineHours:
    """What this process has seen of instances (when each was last running, first seen ended,
    last counted), and their machine-hours from it; see the module docstring."""

    def __init__(self, guard_s: float) -> None:
        self.guard_s = guard_s  # max_runtime_min, in seconds
        self._last_running: dict[str, float] = {}
        self._first_ended: dict[str, float] = {}
        self._counted: dict[str, tuple[float, float | None]] = {}  # instance -> (launch, end if ended)
        self._described: dict[str, Mapping[str, Any]] = {}  # the last DescribeInstances answer seen
        self._described_at = float("-inf")  # when (time.monotonic())

    def observe(self, instances: Mapping[str, Mapping[str, Any]], now: float | None = None) -> None:
        """Note the states of described instances (a poll's DescribeInstances)."""
        now = time.time() if now is None else now
        self._described, self._described_at = dict(instances), time.monotonic()
        for iid, inst in instances.items():
            state = inst.get("State", {}).get("Name")
            if state in _LIVE:
                self._last_running[iid] = now
            elif state in ENDED:
                self._first_ended.setdefault(iid, now)

    def described(self, instance_ids: Iterable[str], max_age_s: float) -> Mapping[str, Mapping[str, Any]] | None:
        """The last described instances when they list all of ``instance_ids`` and are at most
        ``max_age_s`` old (a poll just described them: no second DescribeInstances), else None."""
        fresh = time.monotonic() - self._described_at <= max_age_s
        return self._described if fresh and set(instance_ids) <= self._described.keys() else None

    def hours(
        self,
        launched: Mapping[str, float],
        instances: Mapping[str, Mapping[str, Any]],
        now: float | None = None,
    ) -> float:
        """Machine-hours of the instances ``launched`` names (id -> the handle's launch time),
        from ``instances`` (their DescribeInstances descriptions, when listed)."""
        now = time.time() if now is None else now
        self.observe(instances, now)
        return sum(self._seconds(iid, at, instances.get(iid), now) for iid, at in launched.items()) / 3600.0

    def _seconds(self, iid: str, launched_at: float, inst: Mapping[str, Any] | None, now: float) -> float:
        if inst is not None:
            start = launch_time(inst) or launched_at
            end = self._end(iid, start, inst, now)
            self._counted[iid] = (start, end)
        elif iid in self._counted:  # no longer listed: as last counted
            start, end = self._counted[iid]
            end = end if end is not None else self._last_running.get(iid)
        else:
            start, end = launched_at, None
        if end is None:
            end = now if inst is not None else self._bounded(launched_at, now)
        return max(MIN_BILLED_S, end - start)

    def _end(self, iid: str, start: float, inst: Mapping[str, Any], now: float) -> float | None:
        """When an ended instance ended (None: it has not)."""
        if inst.get("State", {}).get("Name") not in ENDED:
            return None
        stated = reason_time(inst.get("StateTransitionReason"))
        if stated is not None:
            return stated
        if iid in self._last_running:
            return self._last_running[iid]
        return self._bounded(start, self._first_ended.get(iid, now))

    def _bounded(self, start: float, seen: float) -> float:
        return min(seen, start + self.guard_s + GUARD_SLACK_S)


# --- the spot price ---------------------------------------------------------------------------------
LINUX_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
_PRICES: dict[tuple[Any, ...], float | None] = {}  # per process: (endpoint, region, types, zone) -> price


def latest_spot_price(
    history: Iterable[Mapping[str, Any]], types: Sequence[str], zone: str | None = None
) -> float | None:
    """From DescribeSpotPriceHistory entries: the newest Linux/UNIX price of each instance type
    of ``types`` and availability zone (only ``zone``'s when given), and of those the dearest (a
    budget must not count low); None when there is none."""
    newest: dict[tuple[str, str], tuple[Any, float]] = {}
    for entry in history:
        where = str(entry.get("AvailabilityZone") or "")
        if (zone and where != zone) or entry.get("InstanceType") not in types:
            continue
        if entry.get("ProductDescription") not in LINUX_PRODUCTS:
            continue
        try:
            price = float(entry["SpotPrice"])
        except (KeyError, TypeError, ValueError):
            continue
        key = (where, str(entry.get("InstanceType") or ""))
        stamp = entry.get("Timestamp")
        sortable = stamp.timestamp() if isinstance(stamp, datetime) else str(stamp or "")
        if key not in newest or sortable > newest[key][0]:
            newest[key] = (sortable, price)
    return max((price for _stamp, price in newest.values()), default=None)


def cached_price(key: Sequence[Any], lookup: Any) -> float | None:
    """``lookup()``, asked once per process for ``key``."""
    cache_key = tuple(key)
    if cache_key not in _PRICES:
        _PRICES[cache_key] = lookup()
    return _PRICES[cache_key]
