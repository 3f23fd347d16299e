"""Hands-free collection: ``hydra.launcher.auto_pull=true`` (with ``wait=false``) starts a pull
daemon for the sweep at launch, or joins the one already collecting it.

A sweep's own daemon is ``python -m launcher_core.pull SWEEP_DIR --sweep-daemon``: it holds an
``flock`` on ``<sweep>/.launcher/pull-daemon.lock`` (with its PID in it) for its whole life and
exits once the sweep is collected; a second one started while it runs finds the lock held and
exits at once, so there is never more than one per sweep. It runs in its own session (it outlives
the launch and its terminal) and writes ``<sweep>/.launcher/pull.log``. The all-sweeps daemon
(``pull --daemon`` without sweep arguments) collects every known sweep, so it counts as this
sweep's collector too (:func:`collector`; ``launcher-core status`` shows it).

A daemon whose sweep's backend stays unreachable for ``auto_pull_give_up_h`` stops: why and
since when is recorded in the sweep's meta (:func:`record_gave_up`), ``status`` shows it with the
command that starts the daemon again (:func:`resume`, ``pull SWEEP --resume-auto-pull``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.runtime.markers import LAUNCHER_DIR
from launcher_core.state import StateStore, launcher_home

log = logging.getLogger("launcher_core.autopull")

DAEMON_LOCK = "pull-daemon.lock"  # in the sweep's .launcher/
DAEMON_LOG = "pull.log"
TARGETS_FILE = "pull.targets.json"  # next to the all-sweeps daemon's pid file: what it collects
START_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 30.0
DEFAULT_GIVE_UP_H = 24.0  # auto_pull_give_up_h
DAEMON_SETTINGS_META = "auto_pull_daemon"  # the sweep daemon's interval, notify and give-up time
GAVE_UP_META = "collection_gave_up"  # why and when the sweep's pull daemon stopped collecting


@dataclass(frozen=True)
class Collector:
    """A running pull daemon that collects a sweep."""

    pid: int
    log_path: Path
    kind: str  # "sweep" (its own daemon) or "all" (the all-sweeps daemon)

    def __str__(self) -> str:
        what = "its pull daemon" if self.kind == "sweep" else "the pull daemon of all sweeps"
        return f"{what} (pid {self.pid}, log {self.log_path})"


def check_settings(auto_pull: bool, interval_s: float, notify: str | None, wait: bool) -> None:
    """ConfigError naming the key when the auto-pull settings cannot work."""
    if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or interval_s <= 0:
        raise ConfigError(f"hydra.launcher.auto_pull_interval_s must be a number > 0, got {interval_s!r}")
    if notify is not None and (not isinstance(notify, str) or not notify.strip() or "\n" in notify):
        raise ConfigError(f"hydra.launcher.notify must be a one-line command, got {notify!r}")
    if auto_pull and wait:
        log.debug("auto_pull has no effect with wait=true: the launch itself collects the results")


def check_give_up(give_up_h: float) -> None:
    """ConfigError naming the key unless ``auto_pull_give_up_h`` is a number of hours > 0
    (fractions allowed)."""
    if isinstance(give_up_h, bool) or not isinstance(give_up_h, (int, float)) or not give_up_h > 0:
        raise ConfigError(f"hydra.launcher.auto_pull_give_up_h must be a number of hours > 0, got {give_up_h!r}")


def _held_by(lock_path: Path) -> int | None:
    """PID written in ``lock_path`` if a process holds its flock, else None (never blocks)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").split()
            return int(text[0]) if text and text[0].isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def daemon_paths() -> tuple[Path, Path]:
    """The user-level pull daemon's PID file and log (``python -m launcher_core.pull --daemon``)."""
    home = launcher_home()
    home.mkdir(parents=True, exist_ok=True)
    return home / "pull.pid", home / "pull.log"


def collector(sweep_dir: Path) -> Collector | None:
    """The pull daemon collecting ``sweep_dir`` now, if any."""
    launcher_dir = Path(sweep_dir) / LAUNCHER_DIR
    pid = _held_by(launcher_dir / DAEMON_LOCK)
    if pid is not None:
        return Collector(pid, launcher_dir / DAEMON_LOG, "sweep")
    pid_path, log_path = daemon_paths()
    pid = _held_by(pid_path)
    if pid is None:
        return None
    try:
        targets = json.loads((pid_path.parent / TARGETS_FILE).read_text())
    except (OSError, ValueError):
        targets = []
    resolved = str(Path(sweep_dir).resolve())
    if not targets or resolved in targets:
        return Collector(pid, log_path, "all")
    return None


def record_targets(pid_path: Path, sweep_dirs: Sequence[Path]) -> None:
    """What the all-sweeps daemon collects ([] = every known sweep), for :func:`collector`."""
    (pid_path.parent / TARGETS_FILE).write_text(json.dumps([str(Path(d).resolve()) for d in sweep_dirs]))


def start(
    sweep_dir: Path, interval_s: float, notify: str | None, give_up_h: float | None = DEFAULT_GIVE_UP_H
) -> Collector | None:
    """Start the sweep's pull daemon in the background, or join the one collecting it; log where
    its log is. Returns the collector (None if the daemon could not be confirmed in time). The
    settings are kept in the sweep's meta, for :func:`resume` after the daemon gave up."""
    running = collector(sweep_dir)
    if running is not None:
        log.info("results are collected by %s", running)
        return running
    _record_daemon_settings(sweep_dir, interval_s, notify, give_up_h)
    launcher_dir = Path(sweep_dir) / LAUNCHER_DIR
    log_path = launcher_dir / DAEMON_LOG
    argv = [sys.executable, "-m", "launcher_core.pull", str(sweep_dir), "--sweep-daemon", "--interval", str(interval_s)]
    if notify:
        argv += ["--notify", notify]
    if give_up_h is not None:
        argv += ["--give-up-h", repr(float(give_up_h))]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # sh puts the daemon in the background and exits: the daemon is nobody's child here
        subprocess.run(
            ["sh", "-c", 'exec "$@" &', "sh", *argv],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the launch, its terminal and a Ctrl-C there
            cwd=str(sweep_dir),
            timeout=30,
            check=True,
        )
    finally:
        os.close(fd)
    found = _wait_for_collector(sweep_dir)
    if found is None:
        log.warning("the pull daemon for %s did not start; see %s", sweep_dir, log_path)
        return None
    log.info(
        "results are collected in the background by %s; `launcher-core status %s` shows progress",
        found,
        sweep_dir,
    )
    return found


def resume(sweep_dir: Path) -> Collector | None:
    """Start the sweep's pull daemon again with the settings it was started with (after it gave
    up, or after a reboot), or join the one collecting it."""
    with StateStore.for_sweep_dir(sweep_dir, readonly=True) as store:
        settings = store.meta().get(DAEMON_SETTINGS_META) or {}
    return start(
        sweep_dir,
        float(settings.get("interval_s", DEFAULT_INTERVAL_S)),
        settings.get("notify"),
        settings.get("give_up_h", DEFAULT_GIVE_UP_H),
    )


def resume_command(sweep_dir: Path) -> str:
    """The command that starts the sweep's pull daemon again (:func:`resume`)."""
    return f"python -m launcher_core.pull {shlex.quote(str(sweep_dir))} --resume-auto-pull"


def _record_daemon_settings(sweep_dir: Path, interval_s: float, notify: str | None, give_up_h: float | None) -> None:
    with StateStore.for_sweep_dir(sweep_dir) as store:
        store.set_meta({DAEMON_SETTINGS_META: {"interval_s": interval_s, "notify": notify, "give_up_h": give_up_h}})


def record_gave_up(sweep_dir: Path, since: float, reason: str) -> str:
    """Record (one transaction) that collection of the sweep stopped, why and since when the
    backend was unreachable; the text ``status`` and the daemon's log show."""
    text = (
        f"the pull daemon gave up at {_clock(time.time())}: {reason} (unreachable since {_clock(since)}); "
        f"resume collection with `{resume_command(sweep_dir)}`"
    )
    with StateStore.for_sweep_dir(sweep_dir) as store:
        store.set_meta({GAVE_UP_META: {"at": time.time(), "since": since, "reason": reason, "text": text}})
    return text


def clear_gave_up(sweep_dir: Path) -> None:
    """A daemon collects the sweep again: the record of the last one giving up is history."""
    with StateStore.for_sweep_dir(sweep_dir) as store:
        if store.meta().get(GAVE_UP_META):
            store.set_meta({GAVE_UP_META: None})


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _wait_for_collector(sweep_dir: Path) -> Collector | None:
    """Until the daemon (or one started at the same moment) holds the sweep's daemon lock,
    bounded by :data:`START_TIMEOUT_S`."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = collector(sweep_dir)
        if found is not None:
            return found
        time.sleep(0.05)
    return None


def status_line(
    sweep_dir: Path, detached: bool, states: Sequence[str], meta: Mapping[str, Any] | None = None
) -> str | None:
    """What ``launcher-core status`` says about collection for a sweep with unfinished jobs
    (``states``: each job's state; ``detached``: its jobs outlive the launch, see
    :class:`~launcher_core.backends.registry.Capabilities`; ``meta``: the sweep's, which says
    whether its pull daemon gave up); None when nothing is left to collect."""
    unfinished = [s for s in states if s in ("submitted", "running", "completed", "failed")]
    if not detached or not unfinished:
        return None
    found = collector(sweep_dir)
    if found is not None:
        return f"collecting: {len(unfinished)} jobs not home yet; {found}"
    gave_up = (meta or {}).get(GAVE_UP_META)
    if gave_up:
        return f"not collecting: {len(unfinished)} jobs not home yet; {gave_up.get('text')}"
    return (
        f"not collecting: {len(unfinished)} jobs not home yet and no pull daemon runs for this sweep; "
        f"run `python -m launcher_core.pull {sweep_dir}` (or launch with hydra.launcher.auto_pull=true)"
    )
