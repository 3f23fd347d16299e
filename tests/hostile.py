"""Hostile override values shared by the injection tests of every backend.

Each value must reach the task verbatim, and none may execute anything: every shell-ish value
tries to create the canary file, whose absence the tests assert on both sides.
"""

from __future__ import annotations

from pathlib import Path

from launcher_core.sweep import quote_value


def hostile_values(canary: Path) -> list[str]:
    return [
        f"a; touch {canary}",
        f"a && touch {canary}",
        f"a | touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"it's \"double\" and 'single'; touch {canary}",
        f"line one\nline two\ntouch {canary}",
        "--flag=value",
        "-rf /",
        "ünïcødé ✓ 日本語",
        "tab\there and back\\slash\\",
        "  leading and trailing spaces  ",
        f"{'very long ' * 800}; touch {canary}",
        f"> {canary}",
        f"*; ~; {{a,b}}; !!; touch {canary}",
    ]


def sweep_override(key: str, values: list[str]) -> str:
    """One Hydra sweep override ``key='v1','v2',...`` carrying the values exactly."""
    return f"{key}=" + ",".join(quote_value(v) for v in values)
