"""The code snapshot of an ec2 sweep: the code dir and the job-side package in one reproducible
tarball."""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from launcher_core.backends.ec2.settings import setting_key
from launcher_core.errors import ConfigError

DEFAULT_EXCLUDES = (
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".tox",
    "node_modules",
    "*.egg-info",
    "outputs",
    "multirun",
    ".launcher",
    ".env",
)


def _excluded(rel: PurePosixPath, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if "/" in pattern.strip("/"):
            if fnmatch.fnmatch(rel.as_posix(), pattern.strip("/")):
                return True
        elif fnmatch.fnmatch(rel.name, pattern.strip("/")):
            return True
    return False


def _walk_files(root: Path, patterns: Sequence[str], skip: Sequence[Path]) -> Iterator[tuple[Path, PurePosixPath]]:
    """Regular files under ``root`` (sorted, so the archive is reproducible), minus excludes."""
    skip_resolved = {p.resolve() for p in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = PurePosixPath(here.relative_to(root).as_posix())
        dirnames[:] = sorted(
            d for d in dirnames if not _excluded(rel_dir / d, patterns) and (here / d).resolve() not in skip_resolved
        )
        for name in sorted(filenames):
            path = here / name
            if path.is_file() and not _excluded(rel_dir / name, patterns):
                yield path, rel_dir / name


def build_snapshot(
    code_dir: Path,
    archive: Path,
    *,
    excludes: Sequence[str],
    skip: Sequence[Path],
    max_bytes: int,
    check: Callable[[bytes, str], None],
) -> int:
    """Write ``code/`` (the user's code) and ``lib/`` (the job-side package,
    :func:`launcher_core.runtime.shipped_files`) into a reproducible tar.gz.

    ``check`` sees every file's content before it is added (the credential guard). Returns the
    number of files. Raises ``ConfigError`` when the code dir is larger than ``max_bytes``.
    """
    from launcher_core.runtime import shipped_files

    code_files = [
        (path, PurePosixPath("code") / rel)
        for path, rel in _walk_files(code_dir, [*DEFAULT_EXCLUDES, *excludes], skip)
    ]
    lib_files = [(path, PurePosixPath("lib") / rel) for path, rel in shipped_files()]
    total = count = 0
    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, name in [*code_files, *lib_files]:
            data = path.read_bytes()
            total += len(data) if name.parts[0] == "code" else 0
            if total > max_bytes:
                raise ConfigError(
                    f"the code dir {code_dir} is larger than {setting_key('max_code_mb')}="
                    f"{max_bytes / 2**20:g} MB: exclude data with {setting_key('code_excludes')} or point "
                    f"{setting_key('code_dir')} at the code only"
                )
            check(data, f"file {path}")
            st = path.stat()
            info = tarfile.TarInfo(name.as_posix())
            info.size = len(data)
            info.mode = (st.st_mode & 0o755) | 0o600
            info.mtime = int(st.st_mtime)
            tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
