"""Build (and validate) the Singularity/Apptainer command line that runs a job's Python inside an
image; pure argv building, shared by slurm (sbatch script) and remote_ssh (job runner).

Design: docs/slurm.md ("Containers"), docs/remote_ssh.md
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError
from launcher_core.validation import env_vars

RUNTIMES = ("singularity", "apptainer")
NV_CHOICES = ("auto", "true", "false")


@dataclass(frozen=True)
class Container:
    """A validated container setting (see :func:`container_from_config`)."""

    image: str
    runtime: str = "singularity"
    binds: tuple[str, ...] = ()
    nv: str = "auto"  # auto: --nv when the job asked for GPUs
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=())
    python: str = "python"  # the interpreter inside the image


def container_from_config(cfg: Mapping[str, Any] | Container | None, key: str = "container") -> Container | None:
    """Validate a ``container`` config mapping; ``None`` when no image is set (no container).

    ``key`` is the full config key used in error messages (``hydra.launcher.container``).
    """
    if cfg is None or isinstance(cfg, Container):
        return cfg
    unknown = sorted(set(cfg) - {"image", "runtime", "binds", "nv", "extra_args", "env", "python"})
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}")
    image = cfg.get("image")
    if image in (None, ""):
        return None
    runtime = _text(f"{key}.runtime", cfg.get("runtime") or "singularity")
    if runtime not in RUNTIMES:
        raise ConfigError(f"{key}.runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    return Container(
        image=_text(f"{key}.image", image),
        runtime=runtime,
        binds=tuple(validate_bind(f"{key}.binds", b) for b in _list(f"{key}.binds", cfg.get("binds"))),
        nv=_nv(f"{key}.nv", cfg.get("nv", "auto")),
        extra_args=tuple(_text(f"{key}.extra_args", a) for a in _list(f"{key}.extra_args", cfg.get("extra_args"))),
        env=tuple(env_vars(f"{key}.env", cfg.get("env"))),
        python=_text(f"{key}.python", cfg.get("python") or "python"),
    )


def check_local_image(container: Container, key: str) -> None:
    """The image must exist when jobs run on this machine's file system (not for ``docker://``,
    ``library://``, ... URIs, which the runtime fetches itself)."""
    if "://" in container.image:
        return
    if not Path(container.image).expanduser().exists():
        raise ConfigError(f"{key}: no image at {container.image!r} (a .sif file or a sandbox directory)")


def validate_bind(key: str, bind: Any) -> str:
    """``SRC[:DST[:OPTS]]`` with absolute paths; commas are refused (the runtimes split on them)."""
    text = _text(key, bind)
    parts = text.split(":")
    if len(parts) > 3 or "," in text:
        raise ConfigError(f"{key}: {text!r} is not SRC[:DST[:ro|rw]] (no commas)")
    for path in parts[:2]:
        if not path.startswith("/"):
            raise ConfigError(f"{key}: {text!r} needs absolute paths")
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise ConfigError(f"{key}: bind option of {text!r} must be ro or rw")
    return text


def wants_nv(container: Container, gpus_requested: bool) -> bool:
    return container.nv == "true" or (container.nv == "auto" and gpus_requested)


def job_binds(paths: Iterable[str], extra: Sequence[str] = ()) -> list[str]:
    """Identity binds for ``paths`` (code dir, sweep dir, ...) followed by ``extra``.

    Duplicates and paths inside another identity-bound path are dropped, parents come first
    (a bind target must exist before something is mounted below it).
    """
    roots: list[str] = []
    for path in sorted({posixpath.normpath(str(p)) for p in paths}, key=lambda p: (p.count("/"), p)):
        if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
            roots.append(path)
    out = list(roots)
    for bind in extra:
        if bind not in out:
            out.append(bind)
    return out


def wrap_command(
    argv: Sequence[str],
    container: Mapping[str, Any] | Container | None,
    binds: Sequence[str] = (),
    *,
    gpus_requested: bool = False,
) -> list[str]:
    """``argv`` run inside the container: ``<runtime> exec [--nv] [--bind B]... [--env K=V]... IMAGE argv``.

    ``binds`` are added before the container's own ``binds`` (see :func:`job_binds`); ``argv``
    should start with the container's ``python`` (:func:`python_for`). Without a container
    (``None`` or no image) ``argv`` is returned unchanged.
    """
    spec = container_from_config(container)
    if spec is None:
        return list(argv)
    cmd = [spec.runtime, "exec"]
    if wants_nv(spec, gpus_requested):
        cmd.append("--nv")
    for bind in job_binds([], [*(validate_bind("binds", b) for b in binds), *spec.binds]):
        cmd += ["--bind", bind]
    for name, value in spec.env:
        cmd += ["--env", env_flag_value(name, value)]
    cmd += [*spec.extra_args, spec.image, *argv]
    return cmd


def env_flag_value(name: str, value: str) -> str:
    """``NAME=VALUE`` for ``--env``; the runtimes read the flag as CSV, so a value with a comma or a
    double quote is CSV-quoted as a whole (``"A=0,1"``), as their docs recommend."""
    item = f"{name}={value}"
    if any(c in item for c in ',"'):
        return '"' + item.replace('"', '""') + '"'
    return item


def python_for(container: Mapping[str, Any] | Container | None, host_python: str) -> str:
    """The interpreter a job command should start: the image's inside a container, else ``host_python``."""
    spec = container_from_config(container)
    return host_python if spec is None else spec.python


def _text(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    text = str(value)
    if not text or any(c in text for c in "\n\r\0"):
        raise ConfigError(f"{key} must be a non-empty single-line string, got {value!r}")
    return text


def _list(key: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    return list(value)


def _nv(key: str, value: Any) -> str:
    text = str(value).strip().lower()
    aliases = {"yes": "true", "on": "true", "1": "true", "no": "false", "off": "false", "0": "false"}
    text = aliases.get(text, text)
    if text not in NV_CHOICES:
        raise ConfigError(f"{key} must be auto, true or false, got {value!r}")
    return text
