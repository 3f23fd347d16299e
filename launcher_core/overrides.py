"""Hydra override strings to typed values, and values back to text: one copy for every caller.

``"lr=1e-3"`` is the key ``lr`` and the float 0.001, as Hydra types it. The common simple forms
are parsed here without Hydra's grammar (a 10,000-job sweep's overrides parse in well under a
second); everything else goes through Hydra's own ``OverridesParser``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any

_SIMPLE_KEY = re.compile(r"[A-Za-z_][\w.\-/]*")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][\w\-]*")
_SPECIAL_WORDS = {"true", "false", "null", "inf", "nan"}


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-3", "model=cnn", "+tag=a"]`` -> ``{"lr": 0.001, "model": "cnn", "tag": "a"}``."""
    return dict(parse_override(o) for o in overrides)


@functools.lru_cache(maxsize=65536)
def parse_override(text: str) -> tuple[str, Any]:
    """Key and value of one override, with the value typed as Hydra types it. Common simple
    forms are parsed here (a 10,000-job sweep loads in well under a second); the rest go through
    Hydra's own parser."""
    key, sep, raw = text.partition("=")
    bare_key = key.lstrip("+")
    if sep and _SIMPLE_KEY.fullmatch(bare_key):
        if _INT.fullmatch(raw):
            return bare_key, int(raw)
        if _FLOAT.fullmatch(raw):
            return bare_key, float(raw)
        if _WORD.fullmatch(raw) and raw.lower() not in _SPECIAL_WORDS:
            return bare_key, raw
    return _hydra_parse(text)


def _hydra_parse(text: str) -> tuple[str, Any]:
    try:
        override = override_parser().parse_override(text)
        return override.key_or_group, override.value()
    except Exception:  # noqa: BLE001 - an override Hydra accepted at launch; keep its text if not now
        key, _sep, raw = text.partition("=")
        return key.lstrip("+~"), raw


@functools.lru_cache(maxsize=1)
def override_parser() -> Any:
    """Hydra's ``OverridesParser``, built once per process (building it takes milliseconds)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def format_value(value: Any) -> str:
    """How a value is printed in tables and names: floats in 6 significant digits (0.001, 1e-05)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g") if math.isfinite(value) else str(value)
    return str(value)
