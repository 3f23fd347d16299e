"""Everything that runs where the jobs run (an SSH host, a Slurm node, an EC2 instance).

This package is shipped whole, with nothing else of ``launcher_core`` but its (import-free)
``__init__.py``: a host needs hydra-core, omegaconf and cloudpickle, never this project. So a
module here imports only the standard library, those three, and other modules of this package
(``tests/test_runtime_package.py`` checks it). Moving a module in or out of this folder is what
decides whether hosts get it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

RUNTIME_DIR = Path(__file__).resolve().parent


def shipped_files() -> list[tuple[Path, PurePosixPath]]:
    """``(local file, path relative to a PYTHONPATH entry)`` of every file a host gets: the
    ``launcher_core`` package marker and every module of this package."""
    package_init = RUNTIME_DIR.parent / "__init__.py"
    files = [(package_init, PurePosixPath("launcher_core/__init__.py"))]
    for path in sorted(RUNTIME_DIR.rglob("*.py")):
        files.append((path, PurePosixPath("launcher_core/runtime") / path.relative_to(RUNTIME_DIR).as_posix()))
    return files


def copy_runtime(pylib: Path) -> list[Path]:
    """Copy :func:`shipped_files` under ``pylib`` (a dir to put first on the jobs' PYTHONPATH);
    returns the files written."""
    import shutil

    written = []
    for src, rel in shipped_files():
        dest = pylib / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        written.append(dest)
    return written
