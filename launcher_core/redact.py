"""Keep secrets given to a launcher (job environment variables) out of what Hydra writes.

Hydra records the launcher config in every job's ``.hydra/hydra.yaml``, in the sweep's
``multirun.yaml`` and in the override lists (``hydra.overrides.hydra``). The launchers keep
their own copy of the settings, so the config Hydra writes (and ships to jobs) can carry
``REDACTED`` in place of the values under the launcher's secret keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REDACTED = "REDACTED"


def redact_launcher_secrets(config: Any, secret_keys: Sequence[str]) -> None:
    """Replace the values of the mappings at ``hydra.launcher.<key>`` (for each key) and the
    values of overrides that set them, in place."""
    from omegaconf import DictConfig, OmegaConf, open_dict, read_write

    if not secret_keys or config is None:
        return
    with read_write(config.hydra), open_dict(config.hydra):
        for key in secret_keys:
            node = OmegaConf.select(config, f"hydra.launcher.{key}")
            if isinstance(node, DictConfig):
                for name in list(node.keys()):
                    node[name] = REDACTED
        overrides = config.hydra.overrides.hydra
        # raw strings: an override may hold an interpolation (hydra.sweep.subdir=${hydra.job.num})
        for i, line in enumerate(OmegaConf.to_container(overrides, resolve=False)):
            redacted = redact_override(str(line), secret_keys)
            if redacted != line:
                overrides[i] = redacted


def redact_override(line: str, secret_keys: Sequence[str]) -> str:
    """``+hydra.launcher.env.X=secret`` -> ``+hydra.launcher.env.X=REDACTED``; a whole mapping
    (``hydra.launcher.env={X:secret}``) becomes ``{}``."""
    key, sep, _value = line.partition("=")
    if not sep:
        return line
    bare = key.lstrip("+~")
    for secret in secret_keys:
        prefix = f"hydra.launcher.{secret}"
        if bare == prefix:
            return f"{key}={{}}"
        if bare.startswith(prefix + "."):
            return f"{key}={REDACTED}"
    return line
