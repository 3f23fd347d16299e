"""The sweep payload: what crosses machines, built so that it does not depend on the launching side.

A host, a cluster or an instance rarely has the launching machine's Python packages. So the
payload carries only what the jobs' own configs use, in forms any compatible job side can read:

* **the task function by reference** when it lives in the frozen code: the app's script (or
  module) is imported there from the snapshot, the function taken by its name and the
  ``hydra.main`` wrapper unwrapped. cloudpickle carries it by value only when it cannot be
  reached that way (a lambda, a callable object such as hydra-zen's ``zen(...)``, a script that
  runs its app when imported, code outside the code dir); then the job side needs this
  machine's Python minor version and cloudpickle (:class:`PayloadNeeds`), which the pre-flight
  checks.
* **the composed templates** (one per set of structural overrides) pickled with the standard
  ``pickle`` (OmegaConf nodes and the user's structured-config classes by reference), with
  ``hydra.sweeper`` and ``hydra.launcher`` as plain nodes: their structured types belong to
  plugins (Optuna's sweeper, this launcher) the job never uses and the job side may not have.
  Each job replays its value overrides on its template exactly as at launch
  (:class:`~launcher_core.runtime.compose.SweepComposer`).
* **no Hydra ``Singleton`` state and no Hydra context**: the ConfigStore, the config loader and
  the plugins' registrations stay home. The job side builds what ``run_job`` needs from the
  job's config (its callbacks from ``hydra.callbacks``, as Hydra does), and importing the app
  registers its own ConfigStore entries and resolvers again. Resolvers of a task that travels
  by value go with it.

The envelope is a standard pickle (protocol 5) of plain data: readable by any Python >= 3.8.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import io
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAYLOAD_FORMAT = 2
PICKLE_PROTOCOL = 5
_MAX_UNWRAP = 8  # decorators between the name in the module and the task function
# nodes whose structured types come from the sweeper's and launcher's plugins
PLUGIN_NODES = ("sweeper", "launcher")
_OWN_RESOLVERS = ("oc.", "now", "hydra", "python_version")  # registered by omegaconf/hydra themselves


@dataclass(frozen=True)
class PayloadNeeds:
    """What the job side must have to load a payload, beyond hydra-core and omegaconf.

    ``by_value`` lists the parts cloudpickle carries by value and why; when it is empty the
    payload loads under any Python >= 3.10 with any cloudpickle. Otherwise the job side needs
    Python ``python`` (major.minor) and cloudpickle ``cloudpickle`` (major.minor), as here.
    """

    by_value: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: "{}.{}".format(*sys.version_info[:2]))
    cloudpickle: str = ""

    @property
    def portable(self) -> bool:
        return not self.by_value

    def describe(self) -> str:
        if self.portable:
            return "the task travels by reference and the configs as data"
        return f"{'; '.join(self.by_value)}: it travels pickled by value"


# --- the task function --------------------------------------------------------------------------
def task_reference(task_function: Any, code_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """How the job side finds ``task_function`` in the frozen code, or ``(None, why not)``."""
    qualname = getattr(task_function, "__qualname__", None)
    module_name = getattr(task_function, "__module__", None)
    if not callable(task_function) or not isinstance(qualname, str) or not isinstance(module_name, str):
        return None, f"the task {task_function!r} is not a plain function"
    if "<" in qualname:
        return None, f"the task function {qualname} is not defined at the top level of its module"
    module = sys.modules.get(module_name)
    path = _module_file(module, code_dir)
    if module is None or path is None:
        return None, f"the task function {qualname} is defined outside the code dir {code_dir}"
    unwrap = _unwrap_depth(module, qualname, task_function)
    if unwrap is None:
        return None, f"{module_name}.{qualname} is not the task function"
    ref: dict[str, Any] = {"qualname": qualname, "unwrap": unwrap}
    if module_name != "__main__":
        return {**ref, "module": module_name}, ""
    why = _runs_when_imported(path, qualname.split(".")[0])
    if why:
        return None, why
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":  # python -m pkg.app
        return {**ref, "module": spec.name}, ""
    rel = path.relative_to(code_dir.resolve())
    return {**ref, "script": rel.as_posix(), "script_dir": rel.parent.as_posix()}, ""


def _module_file(module: Any, code_dir: Path) -> Path | None:
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    try:
        path.relative_to(code_dir.resolve())
    except ValueError:
        return None
    return path


def _unwrap_depth(module: Any, qualname: str, task_function: Any) -> int | None:
    """How many ``__wrapped__`` links lead from the module's name to the task (hydra.main's
    wrapper is one), or None when they do not lead there."""
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    for depth in range(_MAX_UNWRAP + 1):
        if obj is task_function:
            return depth
        obj = getattr(obj, "__wrapped__", None)
        if obj is None:
            return None
    return None


def _runs_when_imported(path: Path, name: str) -> str:
    """Why importing the script would run the app (a call of ``name`` outside the
    ``if __name__ == "__main__":`` guard), or "" when importing it only defines things."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return f"the app script {path} cannot be read ({type(exc).__name__})"
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or _is_main_guard(stmt):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
                return f"the app script {path.name} calls {name}() when imported (line {node.lineno})"
    return ""


def _is_main_guard(stmt: ast.stmt) -> bool:
    if not isinstance(stmt, ast.If) or not isinstance(stmt.test, ast.Compare):
        return False
    sides = [stmt.test.left, *stmt.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return names == {"__name__"} and consts == {"__main__"}


def find_task(ref: dict[str, Any]) -> Callable[..., Any]:
    """The task function on the job side, imported from the frozen code on ``sys.path``."""
    module = _import_app(ref)
    obj: Any = module
    for part in ref["qualname"].split("."):
        obj = getattr(obj, part)
    for _ in range(int(ref["unwrap"])):
        obj = obj.__wrapped__
    return obj


_APP_MODULE = "__hrl_app__"  # the app's script, imported under a name that does not run its main


def _import_app(ref: dict[str, Any]) -> Any:
    if "module" in ref:
        return importlib.import_module(ref["module"])
    loaded = sys.modules.get(_APP_MODULE)
    if loaded is not None:
        return loaded
    path = _locate_script(ref["script"], ref["script_dir"])
    spec = importlib.util.spec_from_file_location(_APP_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_APP_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(_APP_MODULE, None)
        raise
    _results_by_value(module)
    return module


def _locate_script(script: str, script_dir: str) -> Path:
    """The script in the frozen code: the backends put its dir (in the snapshot) on ``sys.path``."""
    name = Path(script).name
    suffix = "" if script_dir in ("", ".") else "/" + script_dir.strip("/")
    for entry in sys.path:
        base = Path(entry or ".").resolve()
        if suffix and not base.as_posix().endswith(suffix):
            continue
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"the app script {script} is not in the frozen code on this host's sys.path: {sys.path}")


def _results_by_value(module: Any) -> None:
    """Instances of the script's own classes in return values travel by value, as when the
    task itself did: the launching side knows the script as ``__main__``, not by this name."""
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    except Exception:  # noqa: BLE001 - cloudpickle < 2.0: return values of script classes fail to load
        pass


# --- the templates ------------------------------------------------------------------------------
def portable_template(cfg: Any) -> Any:
    """A copy of a composed template with the plugin nodes (:data:`PLUGIN_NODES`) as plain nodes."""
    from omegaconf import OmegaConf, open_dict, read_write

    out = copy.deepcopy(cfg)
    hydra = out.get("hydra") if hasattr(out, "get") else None
    if hydra is None:
        return out
    with read_write(hydra), open_dict(hydra):
        for key in PLUGIN_NODES:
            node = hydra._get_node(key)
            if node is not None and not node._is_none() and not node._is_missing():
                plain = OmegaConf.create(OmegaConf.to_container(node, resolve=False, enum_to_str=True))
                hydra[key] = plain
    return out


class _MainRecorder(pickle.Pickler):
    """A standard pickler that notes whether anything of ``__main__`` was pickled by reference."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self.uses_main = False

    def reducer_override(self, obj: Any) -> Any:
        if getattr(obj, "__module__", None) == "__main__" or type(obj).__module__ == "__main__":
            self.uses_main = True
        return NotImplemented


def _dump_templates(templates: dict[Any, Any]) -> tuple[bytes, bool]:
    """Standard pickle of the portable templates, and whether they name ``__main__``'s classes."""
    buf = io.BytesIO()
    pickler = _MainRecorder(buf)
    pickler.dump({key: portable_template(cfg) for key, cfg in templates.items()})
    return buf.getvalue(), pickler.uses_main


# --- building and loading -----------------------------------------------------------------------
def build(
    task_function: Any,
    composer_state: dict[str, Any] | None,
    code_record: dict[str, Any] | None,
    code_dir: Path,
) -> tuple[bytes, PayloadNeeds]:
    """The payload bytes and what the job side needs to load them."""
    from omegaconf.basecontainer import BaseContainer

    by_value: list[str] = []
    ref, why = task_reference(task_function, code_dir)
    envelope: dict[str, Any] = {"format": PAYLOAD_FORMAT, "code_record": code_record, "task": ref}
    if ref is None:
        by_value.append(why)
        envelope["task_pickled"] = _cloudpickle(task_function)
        resolvers = {k: v for k, v in BaseContainer._resolvers.items() if not k.startswith(_OWN_RESOLVERS)}
        envelope["resolvers"] = _cloudpickle(resolvers) if resolvers else None
    if composer_state is not None:
        state = {k: v for k, v in composer_state.items() if k != "templates"}
        envelope["composer"] = state
        try:
            blob, uses_main = _dump_templates(composer_state["templates"])
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            blob, uses_main = b"", True
            by_value.append(f"the configs hold classes pickle cannot name ({type(exc).__name__}: {exc})")
        if (uses_main and ref is None) or not blob:
            envelope["templates_pickled"] = _cloudpickle(
                {key: portable_template(cfg) for key, cfg in composer_state["templates"].items()}
            )
            if blob:
                by_value.append("the configs use classes of the app's script")
        else:
            envelope["templates"] = blob
    return pickle.dumps(envelope, protocol=PICKLE_PROTOCOL), _needs(by_value)


def _needs(by_value: list[str]) -> PayloadNeeds:
    if not by_value:
        return PayloadNeeds()
    import cloudpickle

    version = getattr(cloudpickle, "__version__", "?")
    return PayloadNeeds(by_value=tuple(dict.fromkeys(by_value)), cloudpickle=".".join(version.split(".")[:2]))


def _cloudpickle(obj: Any) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL)


class _AppUnpickler(pickle.Unpickler):
    """Templates name the script's own classes as ``__main__.X``: here the script is the app module."""

    def __init__(self, file: io.BytesIO, app: Callable[[], Any]) -> None:
        super().__init__(file)
        self._app = app

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__":
            return getattr(self._app(), name)
        return super().find_class(module, name)


@dataclass
class LoadedPayload:
    task_function: Any
    composer_state: dict[str, Any] | None
    code_record: dict[str, Any] | None


def load(data: bytes) -> LoadedPayload:
    """The job side of :func:`build`: imports the app (or unpickles the task) and the templates."""
    envelope = pickle.loads(data)
    if not isinstance(envelope, dict) or envelope.get("format") != PAYLOAD_FORMAT:
        raise ValueError("this sweep payload was written by another version of hydra-remote-launcher")
    ref = envelope.get("task")
    if ref is not None:
        task = find_task(ref)
    else:
        import cloudpickle

        task = cloudpickle.loads(envelope["task_pickled"])
        if envelope.get("resolvers"):
            _register_resolvers(cloudpickle.loads(envelope["resolvers"]))
    composer_state = envelope.get("composer")
    if composer_state is not None:
        composer_state = dict(composer_state)
        if "templates_pickled" in envelope:
            import cloudpickle

            composer_state["templates"] = cloudpickle.loads(envelope["templates_pickled"])
        else:
            app = (lambda: _import_app(ref)) if ref is not None else _no_app
            composer_state["templates"] = _AppUnpickler(io.BytesIO(envelope["templates"]), app).load()
    return LoadedPayload(task, composer_state, envelope.get("code_record"))


def _no_app() -> Any:
    raise pickle.UnpicklingError("the configs name classes of the app's script, which was not shipped")


def _register_resolvers(resolvers: dict[str, Any]) -> None:
    from omegaconf.basecontainer import BaseContainer

    for name, resolver in resolvers.items():
        BaseContainer._resolvers.setdefault(name, resolver)
