"""``launcher_core.runtime`` is what hosts get: it must import nothing of ours outside itself, it
must work when only its shipped files are on the path, and result files written before the
job-side modules moved there must still load."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
from pathlib import Path

from launcher_core.runtime import RUNTIME_DIR, copy_runtime, shipped_files
from launcher_core.runtime.worker import load_job_return
from tests.conftest import REPO_ROOT

# what a host has besides the standard library (ec2_agent also uses boto3 on the instance)
HOST_PACKAGES = {"hydra", "omegaconf", "cloudpickle", "boto3", "botocore"}
RUNTIME_MODULES = sorted(
    "launcher_core.runtime" + ("" if p.stem == "__init__" else f".{p.stem}") for p in RUNTIME_DIR.glob("*.py")
)


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_runtime_imports_only_the_standard_library_host_packages_and_itself() -> None:
    offenders = []
    for path in RUNTIME_DIR.rglob("*.py"):
        for name in _imported_modules(path):
            top = name.split(".")[0]
            if name == "launcher_core.runtime" or name.startswith("launcher_core.runtime."):
                continue
            if top in sys.stdlib_module_names or top in HOST_PACKAGES or name == "__future__":
                continue
            offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_shipped_files_are_the_package_marker_and_every_runtime_module() -> None:
    rels = {rel.as_posix() for _, rel in shipped_files()}
    assert "launcher_core/__init__.py" in rels
    assert {f"launcher_core/runtime/{p.name}" for p in RUNTIME_DIR.glob("*.py")} <= rels
    assert not any(
        rel.startswith("launcher_core/") and "/runtime/" not in rel and rel != "launcher_core/__init__.py"
        for rel in rels
    )


def test_runtime_imports_from_its_shipped_copy_alone(tmp_path: Path) -> None:
    """Import every runtime module with only the shipped copy of ours on the path (the installed
    package hidden), as a host does; nothing else of launcher_core may get loaded."""
    copy_runtime(tmp_path / "pylib")
    probe = f"""
import importlib, json, sys
# hide the project's own copy (the editable install puts the repository on the path)
sys.path = [p for p in sys.path if p and p != {str(REPO_ROOT)!r}]
sys.path.insert(0, {str(tmp_path / "pylib")!r})
for name in {RUNTIME_MODULES!r}:
    importlib.import_module(name)
import launcher_core
ours = sorted(m for m in sys.modules if m == "launcher_core" or m.startswith("launcher_core."))
print(json.dumps({{"file": launcher_core.__file__, "loaded": ours}}))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["file"] == str(tmp_path / "pylib" / "launcher_core" / "__init__.py")
    outside = [m for m in report["loaded"] if m != "launcher_core" and not m.startswith("launcher_core.runtime")]
    assert outside == []
    assert set(RUNTIME_MODULES) <= set(report["loaded"])


def test_result_files_written_before_the_move_still_load(tmp_path: Path) -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from launcher_core.runtime.results import StoredJobReturn

    ret = JobReturn(overrides=["lr=0.1"], working_dir="/x/0", status=JobStatus.COMPLETED)
    ret.return_value = {"acc": 0.9}
    blob = pickle.dumps(StoredJobReturn.of(ret), protocol=2)  # protocol 2 names classes as text
    assert b"launcher_core.runtime.results\nStoredJobReturn" in blob
    old = blob.replace(b"launcher_core.runtime.results\n", b"launcher_core.results\n")
    path = tmp_path / "result.pkl"
    path.write_bytes(old)
    loaded = load_job_return(path)
    assert isinstance(loaded, StoredJobReturn)
    assert loaded.return_value == {"acc": 0.9}
    assert loaded.overrides == ["lr=0.1"]
