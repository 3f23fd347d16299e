"""The code snapshot of an ec2 sweep: the code dir and the job-side package in one reproducible
tarball."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from launcher_core.backends.ec2.settings import setting_key
from launcher_core.errors import ConfigError
from launcher_core.remote.codesync import DEFAULT_EXCLUDES, RsyncFilter, excludes_for_local_outputs

# Left out on top of the excludes every snapshot has (DEFAULT_EXCLUDES, matched as rsync matches
# them): ec2 promises that your credentials never reach an instance, and the content check only
# knows the active keys, so a ``.env`` file (where projects keep keys) never goes into the
# tarball, nor ``.launcher/`` dirs of earlier runs (their payloads and logs).
EC2_EXCLUDES = (".env", ".launcher")


def snapshot_filter(code_dir: Path, sweep_dir: Path, code_excludes: Sequence[str]) -> RsyncFilter:
    """What the tarball leaves out of ``code_dir``: the default excludes, ec2's own, the user's
    ``code_excludes`` and this sweep's dir when it lies inside the code dir."""
    return RsyncFilter(
        exclude=[*DEFAULT_EXCLUDES, *EC2_EXCLUDES, *code_excludes, *excludes_for_local_outputs(code_dir, sweep_dir)]
    )


def _walk_files(root: Path, code_filter: RsyncFilter) -> Iterator[tuple[Path, PurePosixPath]]:
    """Regular files under ``root`` (sorted, so the archive is reproducible) that the filter keeps;
    excluded dirs are not entered."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        dirnames[:] = sorted(d for d in dirnames if not code_filter.excludes_entry(prefix + d, is_dir=True))
        for name in sorted(filenames):
            path = here / name
            if path.is_file() and not code_filter.excludes_entry(prefix + name, is_dir=False):
                yield path, PurePosixPath(prefix + name)


def build_snapshot(
    code_dir: Path,
    archive: Path,
    *,
    code_filter: RsyncFilter,
    max_bytes: int,
    check: Callable[[bytes, str], None],
) -> int:
    """Write ``code/`` (the user's code, minus what ``code_filter`` leaves out) and ``lib/`` (the
    job-side package, :func:`launcher_core.runtime.shipped_files`) into a reproducible tar.gz.

    ``check`` sees every file's content before it is added (the credential guard). Returns the
    number of files. Raises ``ConfigError`` when the code dir is larger than ``max_bytes``.
    """
    from launcher_core.runtime import shipped_files

    code_files = [(path, PurePosixPath("code") / rel) for path, rel in _walk_files(code_dir, code_filter)]
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
