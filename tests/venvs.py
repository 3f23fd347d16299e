"""Python environments of other versions, for the tests of what must match across machines.

Each is a venv under ``/opt/hrl-test/venvs/<name>`` (root-owned, world-readable: the loopback
sshd's test users run them), built once per machine from a Python interpreter and a list of
pinned requirements installed from the package index, and reused while the stamp (interpreter
and requirements) is the same. Building one takes a few seconds to a minute.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.sshd import BASE

VENVS = BASE / "venvs"
DEBIAN_PYTHON = "/usr/bin/python3"  # world-readable, unlike pyenv's builds under /root
# the oldest versions pyproject.toml allows on the job side
OLDEST = ("hydra-core==1.3.0", "omegaconf==2.3.0", "cloudpickle==2.2.0")
NEWEST = ("hydra-core>=1.3,<1.4", "omegaconf>=2.3,<2.4", "cloudpickle>=3.1")


def ensure_venv(name: str, python: str, requirements: tuple[str, ...]) -> Path:
    """The venv's python (built if missing or built from something else)."""
    root = VENVS / name
    stamp_text = " ".join([python, *requirements])
    stamp = root / "hrl-stamp"
    bin_python = root / "bin" / "python"
    with _lock():
        if stamp.exists() and stamp.read_text() == stamp_text and bin_python.exists():
            return bin_python
        shutil.rmtree(root, ignore_errors=True)
        VENVS.mkdir(parents=True, exist_ok=True)
        _run(python, "-m", "venv", str(root))
        _run(str(bin_python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements)
        _run("chmod", "-R", "a+rX", str(root))
        stamp.write_text(stamp_text)
    return bin_python


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One builder at a time on this machine (test sessions run side by side)."""
    VENVS.mkdir(parents=True, exist_ok=True)
    VENVS.chmod(0o755)
    with open(VENVS / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def versions(python: Path) -> dict[str, str]:
    """``{python, hydra-core, omegaconf, cloudpickle}`` versions of an environment."""
    code = (
        "import sys, importlib.metadata as m; print('%d.%d' % sys.version_info[:2]); "
        "[print(m.version(d)) for d in ('hydra-core', 'omegaconf', 'cloudpickle')]"
    )
    out = _run(str(python), "-c", code).stdout.split()
    return dict(zip(("python", "hydra-core", "omegaconf", "cloudpickle"), out))


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr[-2000:]}")
    return proc
