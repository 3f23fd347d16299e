"""Job entry point on a remote host: ``python -m launcher_core.runtime.remote_worker SWEEP_PAYLOAD JOB_PAYLOAD``.

Exactly :func:`launcher_core.runtime.worker.main`, with one addition. The sweep payload carries Hydra's
``Singleton`` state (ConfigStore, config sources), which names the classes of every Hydra plugin
installed on the *launching* machine: this package's own ``hydra_plugins.remote_launcher``,
and e.g. joblib or submitit launchers. The host only needs hydra-core, omegaconf and
cloudpickle, so those modules may not exist there. A job never uses another launcher's
classes, so modules under ``hydra_plugins`` that cannot be imported are replaced by inert
stand-ins while the payload is loaded. Our own plugin (``hydra_plugins.remote_launcher``) is
always a stand-in on the job side, even where it is installed: it imports launcher-side modules
of ``launcher_core``, which the shipped copy of the package (only ``launcher_core.runtime``)
shadows. Everything else (the task's own imports) must import
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


_OWN_PLUGIN = "hydra_plugins.remote_launcher"


class OwnPluginFinder(importlib.abc.MetaPathFinder):
    """First in the import system: our own launcher plugin is never needed by a job."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _OWN_PLUGIN and not fullname.startswith(_OWN_PLUGIN + "."):
            return None
        return importlib.util.spec_from_loader(fullname, _StubLoader(), is_package=True)


def install() -> None:
    if not any(isinstance(f, MissingPluginFinder) for f in sys.meta_path):
        sys.meta_path.append(MissingPluginFinder())
    if not any(isinstance(f, OwnPluginFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, OwnPluginFinder())


def main(argv: list[str] | None = None) -> int:
    install()
    from launcher_core.runtime.worker import main as worker_main

    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(main())
