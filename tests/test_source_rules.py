"""Rules over the source tree of ``launcher_core`` (read with ``ast``, function-level imports included):

* no backend name or Hydra launcher class name as a string literal outside ``launcher_core/backends/``
  (readers ask the registry or the sweep's recorded capabilities, never the name);
* no module imports another module's ``_private`` name;
* no import cycle between modules, also not one hidden in a function-level import (imports under
  ``if TYPE_CHECKING:`` are for annotations and never run: they do not count);
* nothing in ``launcher_core`` imports ``hydra_plugins`` (the Hydra face imports the core, not back);
* no module outside a backend's own folder (``launcher_core/backends/<name>/``) reads a job handle's
  keys: no ``handle["key"]``, ``handle.get("key")`` or ``"key" in handle`` on anything named a handle
  (``handle``, ``h``, ``row.handle``, ``handles[job_id]``, ``(row.handle or {})``). Readers ask the
  handle class or the descriptor. The one exception is the contract, ``backends/base.py``, whose
  ``PlainHandle`` reads the plain JSON dicts a backend without a handle class returns.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from launcher_core.backends.registry import descriptors

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "launcher_core"
HYDRA_FACE = ROOT / "hydra_plugins"
# where handle keys may be read: each backend's own folder, and the contract's plain-dict reader
HANDLE_KEYS_READ_IN = ("backends/base.py",)
# the instance agent names the AWS service "ec2" when it makes its boto3 client: not a backend name
SERVICE_NAMES = {("runtime/ec2_agent.py", "ec2")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _walk(tree: ast.AST, typing_only: bool) -> Iterator[ast.AST]:
    """Every node; without the bodies of ``if TYPE_CHECKING:`` when ``typing_only`` is false
    (imports for annotations only never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not typing_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(module: str, tree: ast.AST, typing_only: bool = True) -> Iterator[tuple[str, list[str]]]:
    """``(imported module, names imported from it)`` of every import statement, anywhere."""
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    for node in _walk(tree, typing_only):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base, [a.name for a in node.names]


def _target(imported: str, name: str) -> str:
    """The module an ``from imported import name`` depends on (a submodule when ``name`` is one)."""
    return f"{imported}.{name}" if f"{imported}.{name}" in MODULES else imported


def test_no_backend_name_outside_the_backends() -> None:
    names = set()
    for found in descriptors().values():
        names |= {found.name, found.launcher_class}
    offenders = []
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("backends/"):
            continue
        tree = _tree(path)
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            literal = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            if literal and node.value in names and (rel, node.value) not in SERVICE_NAMES:
                offenders.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert offenders == [], "\n".join(map(str, offenders))


def test_no_module_imports_another_modules_private_name() -> None:
    offenders = []
    for module, path in MODULES.items():
        for imported, names in _imports(module, _tree(path)):
            if not imported.startswith("launcher_core"):
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__") and _target(imported, name) != module:
                    offenders.append(f"{module}: from {imported} import {name}")
    assert offenders == [], "\n".join(map(str, offenders))


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for imported, names in _imports(module, _tree(path), typing_only=False):
            targets = [_target(imported, n) for n in names] or [imported]
            graph[module] |= {t for t in targets if t in MODULES and t != module}
    cycles = [sorted(c) for c in _strongly_connected(graph) if len(c) > 1]
    assert cycles == [], "\n".join(map(str, cycles))


def test_the_core_imports_nothing_of_the_hydra_face() -> None:
    offenders = [
        f"{module}: {imported}"
        for module, path in MODULES.items()
        for imported, _names in _imports(module, _tree(path))
        if imported == "hydra_plugins" or imported.startswith("hydra_plugins.")
    ]
    assert offenders == [], "\n".join(map(str, offenders))


def _names_a_handle(node: ast.AST) -> bool:
    """``handle``, ``h``, ``old_handle``, ``row.handle``, ``handles[job_id]``, ``(row.handle or {})``."""
    if isinstance(node, ast.Name):
        return node.id == "h" or "handle" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "handle" in node.attr.lower()
    if isinstance(node, ast.BoolOp):
        return any(_names_a_handle(v) for v in node.values)
    if isinstance(node, ast.Subscript):
        return _names_a_handle(node.value) and not _string(node.slice)
    return False


def _string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def handle_key_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, code)`` of every read of a handle's key by a string (see the module docstring)."""
    found = []
    for node in ast.walk(tree):
        read = (
            (isinstance(node, ast.Subscript) and _string(node.slice) and _names_a_handle(node.value))
            or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "pop", "setdefault", "__getitem__")
                and bool(node.args)
                and _string(node.args[0])
                and _names_a_handle(node.func.value)
            )
            or (
                isinstance(node, ast.Compare)
                and _string(node.left)
                and isinstance(node.ops[0], (ast.In, ast.NotIn))
                and _names_a_handle(node.comparators[0])
            )
        )
        if read:
            found.append((getattr(node, "lineno", 0), ast.unparse(node)))
    return found


def test_handle_key_reads_are_found() -> None:
    """The rule below sees the reads this project had before handles were typed."""
    old = """
where = describe_handle(meta, handle) or row.host or handle.get("host") or "-"
host = job.host or (job.handle or {}).get("host")
remote_job = str(handle.get("remote_job_dir") or "")
groups.setdefault(str(h["remote_sweep_dir"]), {})
ids = {str(r.handle["instance_id"]) for r in rows}
packed = "packed" in handles[job_id]
"""
    assert len(handle_key_reads(ast.parse(old))) == 6
    fine = """
config.get("login_host"); job["launcher_dir"]; handles[job_id]; handle.to_json(); row.handle or {}
"""
    assert handle_key_reads(ast.parse(fine)) == []


def test_no_module_outside_a_backend_reads_handle_keys() -> None:
    offenders = []
    paths = [*MODULES.values(), *sorted(HYDRA_FACE.rglob("*.py"))]
    for path in paths:
        base = PACKAGE if path.is_relative_to(PACKAGE) else ROOT
        rel = path.relative_to(base).as_posix()
        in_a_backend = rel.startswith("backends/") and rel.count("/") >= 2
        if in_a_backend or rel in HANDLE_KEYS_READ_IN:
            continue
        offenders += [f"{rel}:{line}: {code}" for line, code in handle_key_reads(_tree(path))]
    assert offenders == [], "\n".join(offenders)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph has a few hundred nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                out.append(component)
    return out
