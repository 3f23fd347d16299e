"""The one list of backends, and what each can do.

A backend is one folder (``launcher_core/backends/<name>/``) plus one registration: a
:class:`BackendDescriptor` named in :data:`BUILTIN` here, or, for a backend that lives in another
package, in that package's entry points under :data:`ENTRY_POINT_GROUP` (as submitit finds its
executors)::

    [project.entry-points."hydra_remote_launcher.backends"]
    pbs = "my_pbs_backend.descriptor:DESCRIPTOR"

Nothing outside ``backends/`` asks which backend ran a job: readers (status, results, files,
pull, autopull, clean, pipelines, clusters) ask the descriptor, or the :class:`Capabilities` a
sweep's state store recorded at launch (:func:`capabilities_of`). The contract a backend
implements is :class:`launcher_core.backends.base.Backend`; docs/backends.md describes both.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from launcher_core.backends.base import Handle, JobHandle, PlainHandle, as_job_handle, handle_json
from launcher_core.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from launcher_core.backends.base import Backend

ENTRY_POINT_GROUP = "hydra_remote_launcher.backends"
BUILTIN = (
    "launcher_core.backends.local_pool.descriptor:DESCRIPTOR",
    "launcher_core.backends.remote_ssh.descriptor:DESCRIPTOR",
    "launcher_core.backends.slurm.descriptor:DESCRIPTOR",
    "launcher_core.backends.ec2.descriptor:DESCRIPTOR",
    "launcher_core.backends.spill.descriptor:DESCRIPTOR",
)
CAPABILITIES_META = "capabilities"  # the state store's meta key holding them (see capabilities_of)


@dataclass(frozen=True)
class Capabilities:
    """What a backend does with a sweep's jobs, as readers of the sweep need to know.

    ``detached``: jobs outlive the launching process (a relaunch re-attaches; the pull daemon
    collects them); otherwise they end with it and there is nothing to collect later.
    ``results_local``: jobs write their output dirs straight into the local sweep dir (their logs
    and results are read here, nothing is fetched).
    ``remote_copy``: the backend keeps a copy of the job files elsewhere (bare pulls leave files
    there; ``clean`` deletes it; ``files`` can list it).
    """

    detached: bool = False
    results_local: bool = False
    remote_copy: bool = False

    def to_meta(self) -> dict[str, bool]:
        return asdict(self)

    @classmethod
    def from_meta(cls, data: Mapping[str, Any]) -> Capabilities:
        return cls(**{k: bool(data[k]) for k in ("detached", "results_local", "remote_copy") if k in data})


def _no_location(config: Mapping[str, Any]) -> str | None:
    return None


def _ask_handle(handle: Handle) -> str | None:
    """The default of the descriptor's questions about a handle: its handle class answers
    (replaced by :meth:`BackendDescriptor.__post_init__`)."""
    raise AssertionError("BackendDescriptor.__post_init__ did not run")


# descriptor field -> the JobHandle method that answers it by default
_HANDLE_QUESTIONS = {
    "describe_handle": "describe",
    "dependency_task": "dependency_task",
    "job_dir_where_it_ran": "job_dir",
}


def _asked(handle_type: type[JobHandle], question: str, handle: Handle) -> str | None:
    answer: str | None = getattr(_parsed(handle_type, handle), question)()
    return answer


def _parsed(handle_type: type[JobHandle], data: Handle) -> JobHandle:
    """``data`` as ``handle_type``; a plain handle when it does not parse (none yet, or a handle of
    another layout): readers such as ``status`` still show what they can."""
    try:
        return handle_type.of(data)
    except BackendError:
        return PlainHandle.from_json(handle_json(data))


@dataclass(frozen=True)
class BackendDescriptor:
    """One backend as the rest of the project knows it. Its callables import the backend lazily,
    so listing backends costs no heavy import.

    ``launcher_class``: the Hydra launcher class's name (``hydra.launcher._target_`` ends with it).
    ``from_config``: the backend rebuilt from its stored (secret-free) config, in another process.
    ``settings``: ``hydra.launcher`` validated (``ConfigError`` naming the key), as a launch does.
    ``for_preflight``: a backend built from validated settings that can run the pre-flight
    (submits nothing), or None when there is nothing to check.
    ``capabilities``: :class:`Capabilities` for a launcher/stored config (they may depend on it:
    slurm's results are local without ``login_host``).
    ``handle_type``: the backend's :class:`~launcher_core.backends.base.JobHandle` class (its handles
    are read back from the state store with it); :class:`PlainHandle` for a backend whose ``submit``
    returns plain JSON dicts.
    ``describe_handle``: what ``status`` shows as "where" for a job's handle (None: its host);
    by default the handle's :meth:`~JobHandle.describe`.
    ``remote_location``: a key naming the file system where the jobs' dirs live when it is not
    this machine's and one place holds every job (one SSH host and remote dir, one login node),
    else None: two stages of a pipeline with the same key can read each other's job dirs there.
    ``remote_hint``: how two pipeline stages come to share a ``remote_location`` (for the error
    that says they do not).
    ``dependency_chain``: a key naming the scheduler the jobs go to when it can hold a stage's jobs
    until their upstream jobs end (two pipeline stages with the same key are submitted at once,
    with dependencies), else None. ``dependency_task``: a job's task as such a dependency names it
    (by default the handle's :meth:`~JobHandle.dependency_task`).
    ``job_dir_where_it_ran``: the job's output dir where it ran, from its handle (None: here; by
    default the handle's :meth:`~JobHandle.job_dir`).
    ``no_remote_copy``: what ``clean`` says when there is nothing to delete ("" when there is).
    ``watch_group``: a key shared by the stored configs whose jobs one backend, rebuilt from any of
    them, can observe together (``launcher-core top``: one round trip per host or scheduler for
    all those sweeps); None: each sweep on its own.
    """

    name: str
    launcher_class: str
    from_config: Callable[[Mapping[str, Any]], Backend]
    settings: Callable[[Mapping[str, Any]], Any]
    for_preflight: Callable[[Any], Backend | None]
    capabilities: Callable[[Mapping[str, Any]], Capabilities]
    handle_type: type[JobHandle] = PlainHandle
    describe_handle: Callable[[Handle], str | None] = field(default=_ask_handle)
    remote_location: Callable[[Mapping[str, Any]], str | None] = field(default=_no_location)
    remote_hint: str = "a backend that sees them"
    dependency_chain: Callable[[Mapping[str, Any]], str | None] = field(default=_no_location)
    dependency_task: Callable[[Handle], str | None] = field(default=_ask_handle)
    job_dir_where_it_ran: Callable[[Handle], str | None] = field(default=_ask_handle)
    no_remote_copy: str = ""
    watch_group: Callable[[Mapping[str, Any]], str | None] = field(default=_no_location)

    def __post_init__(self) -> None:
        for name, question in _HANDLE_QUESTIONS.items():
            if getattr(self, name) is _ask_handle:
                object.__setattr__(self, name, functools.partial(_asked, self.handle_type, question))

    def handle(self, data: Handle) -> JobHandle:
        """A stored handle of this backend as its class (a plain one when it does not parse: a
        handle of an older or newer layout still shows in ``status``)."""
        return _parsed(self.handle_type, data)


_LOADED: dict[str, BackendDescriptor] | None = None


def descriptors() -> dict[str, BackendDescriptor]:
    """Every backend: the built-in ones, then those other installed packages declare."""
    global _LOADED
    if _LOADED is None:
        found: dict[str, BackendDescriptor] = {}
        for ref in [*BUILTIN, *_entry_point_refs()]:
            descriptor = _load(ref)
            found.setdefault(descriptor.name, descriptor)
        _LOADED = found
    return _LOADED


def _entry_point_refs() -> list[str]:
    return [ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def _load(ref: str) -> BackendDescriptor:
    module_name, _, attr = ref.partition(":")
    try:
        descriptor = getattr(importlib.import_module(module_name), attr or "DESCRIPTOR")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"backend {ref!r} ({ENTRY_POINT_GROUP}) cannot be loaded: {exc}") from exc
    if not isinstance(descriptor, BackendDescriptor):
        raise ConfigError(f"backend {ref!r} is a {type(descriptor).__name__}, not a BackendDescriptor")
    return descriptor


def reload() -> None:
    """Forget the loaded list (a package declaring a backend was installed since)."""
    global _LOADED
    _LOADED = None


def descriptor(name: str) -> BackendDescriptor:
    found = descriptors().get(name)
    if found is None:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(sorted(descriptors()))}")
    return found


def for_launcher_target(target: str) -> BackendDescriptor | None:
    """The backend whose Hydra launcher ``hydra.launcher._target_`` names (None: not ours)."""
    cls = target.rsplit(".", 1)[-1]
    return next((d for d in descriptors().values() if d.launcher_class == cls), None)


def backend_from_config(name: str, config: Mapping[str, Any]) -> Backend:
    """Rebuild a backend by name from its stored config."""
    return descriptor(name).from_config(dict(config))


def backend_for_meta(meta: Mapping[str, Any]) -> Backend:
    """The backend of a sweep, from its state store meta data."""
    return backend_from_config(str(meta["backend"]), meta.get("backend_config") or {})


def capabilities_of(meta: Mapping[str, Any]) -> Capabilities:
    """What the backend of a sweep can do: as recorded at launch, or (a sweep launched before
    they were recorded) asked of its descriptor with the stored config."""
    recorded = meta.get(CAPABILITIES_META)
    if isinstance(recorded, Mapping):
        return Capabilities.from_meta(recorded)
    name = meta.get("backend")
    if not name:
        return Capabilities()
    return descriptor(str(name)).capabilities(meta.get("backend_config") or {})


def watch_group(meta: Mapping[str, Any]) -> str | None:
    """The key under which ``top`` observes a sweep's jobs with other sweeps' (None: alone)."""
    name = meta.get("backend")
    if not name or str(name) not in descriptors():
        return None
    group = descriptor(str(name)).watch_group(meta.get("backend_config") or {})
    return None if group is None else f"{name} {group}"


def describe_handle(meta: Mapping[str, Any], handle: Handle) -> str | None:
    """Where a job runs, as ``status`` shows it (None: the job's host)."""
    name = meta.get("backend")
    if not name or str(name) not in descriptors():
        return None
    return descriptor(str(name)).describe_handle(handle)


def handle_of(meta: Mapping[str, Any], data: Handle) -> JobHandle:
    """A stored handle of a sweep's job as its backend's class (plain when the backend is unknown)."""
    name = meta.get("backend")
    if not name or str(name) not in descriptors():
        return as_job_handle(data)
    return descriptor(str(name)).handle(data)
