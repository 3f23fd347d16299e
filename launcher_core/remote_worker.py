"""Job entry point on a remote host: ``python -m launcher_core.remote_worker SWEEP_PAYLOAD JOB_PAYLOAD``.

Exactly :func:`launcher_core.worker.main`, with one addition. The sweep payload carries Hydra's
``Singleton`` state (ConfigStore, config sources), which names the classes of every Hydra plugin
installed on the *launching* machine: this package's own ``hydra_plugins.remote_launcher``,
and e.g. joblib or submitit launchers. The host only needs hydra-core, omegaconf and
cloudpickle, so those modules may not exist there. A job never uses another launcher's
classes, so modules under ``hydra_plugins`` that cannot be imported are replaced by inert
stand-ins while the payload is loaded. Everything else (the task's own imports) must import
for real: a missing dependency of the task fails the job with Python's own error.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

_PREFIX = "hydra_plugins"


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        classes: dict[str, type] = {}

        def stub_attr(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            if name not in classes:
                classes[name] = type(name, (), {"__module__": module.__name__, "__qualname__": name})
            return classes[name]

        module.__path__ = []  # a package: submodules are found (and stubbed) too
        module.__getattr__ = stub_attr  # type: ignore[attr-defined]
        module.__dict__["__hrl_stub__"] = True


class MissingPluginFinder(importlib.abc.MetaPathFinder):
    """Last resort of the import system for ``hydra_plugins.*`` modules this host lacks."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _PREFIX and not fullname.startswith(_PREFIX + "."):
            return None
        return importlib.util.spec_from_loader(fullname, _StubLoader(), is_package=True)


def install() -> None:
    if not any(isinstance(f, MissingPluginFinder) for f in sys.meta_path):
        sys.meta_path.append(MissingPluginFinder())


def main(argv: list[str] | None = None) -> int:
    install()
    from launcher_core.worker import main as worker_main

    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(main())
