"""The ``result.pkl`` a job writes: a ``JobReturn`` whose configs are unpickled only when used.

Hydra's ``JobReturn`` carries the job's ``cfg`` and ``hydra_cfg``; unpickling those two
DictConfigs is ~95 % of the cost of loading a result (~5 ms per job, so ~5 s at the end of a
1000-job sweep, for configs almost nobody reads). :class:`StoredJobReturn` keeps each of them
as plain-pickle bytes until first access. Status, overrides, working dir and the return
value are loaded at once, so ``return_value`` still raises a failed job's exception as usual.

Files written by older versions (a pickled plain ``JobReturn``) load unchanged.
"""

from __future__ import annotations

import pickle
from typing import Any

from hydra.core.utils import JobReturn


def _dumps_config(cfg: Any) -> bytes:
    """Plain (C) pickle: ~3x faster than cloudpickle on a DictConfig; cloudpickle for the rare
    config holding something only cloudpickle can ship."""
    try:
        return pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling problem: let cloudpickle try
        import cloudpickle

        return cloudpickle.dumps(cfg)


class _LazyConfig:
    """A ``JobReturn`` field kept as pickle bytes until first read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default, for code that looks at the class
        values = obj.__dict__.setdefault("_values", {})
        if self.name not in values:
            blob = obj.__dict__.get("_blobs", {}).pop(self.name, None)
            values[self.name] = None if blob is None else pickle.loads(blob)
        return values[self.name]

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__.setdefault("_values", {})[self.name] = value
        obj.__dict__.get("_blobs", {}).pop(self.name, None)


class StoredJobReturn(JobReturn):
    """A ``JobReturn`` (same fields, same behaviour) with ``cfg``/``hydra_cfg`` loaded lazily."""

    cfg = _LazyConfig()  # type: ignore[assignment]
    hydra_cfg = _LazyConfig()  # type: ignore[assignment]

    @classmethod
    def of(cls, ret: JobReturn) -> StoredJobReturn:
        if isinstance(ret, cls):
            return ret
        return cls(
            overrides=ret.overrides,
            cfg=ret.cfg,
            hydra_cfg=ret.hydra_cfg,
            working_dir=ret.working_dir,
            task_name=ret.task_name,
            status=ret.status,
            _return_value=ret._return_value,
        )

    def __getstate__(self) -> dict[str, Any]:
        """Configs still as bytes stay bytes; configs that were read (and maybe changed in
        place, as ``localize_result`` does) are pickled again."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_values", "_blobs")}
        blobs = dict(self.__dict__.get("_blobs", {}))
        for name, value in self.__dict__.get("_values", {}).items():
            blobs[name] = _dumps_config(value)
        state["_blobs"] = blobs
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
