"""One settings source: each backend's validated settings class takes its keys and defaults from
the Hydra config dataclass, and every launcher refuses an unknown key the same way."""

from __future__ import annotations

import dataclasses

import pytest

from launcher_core.errors import ConfigError
from launcher_core.settings import reject_unknown, setting_names, settings_from_mapping


@dataclasses.dataclass
class _Conf:
    _target_: str = "x.Launcher"
    n: int = 3
    names: list[str] = dataclasses.field(default_factory=lambda: ["a"])


def test_settings_from_mapping_fills_declared_defaults_and_ignores_target() -> None:
    built = settings_from_mapping(_Conf, {"_target_": "y", "n": 5}, "demo")
    assert (built.n, built.names, built._target_) == (5, ["a"], "x.Launcher")
    assert setting_names(_Conf) == ["n", "names"]


def test_unknown_key_is_named_with_the_launcher_and_the_known_keys() -> None:
    with pytest.raises(ConfigError) as info:
        reject_unknown(_Conf, {"n": 1, "nn": 2}, "demo")
    assert str(info.value) == "hydra.launcher.nn is not a setting of the demo launcher; known settings: n, names"
