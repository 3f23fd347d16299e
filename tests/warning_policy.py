"""Which warnings fail the suite: ours always, a third-party library's never during fixture set-up.

``filterwarnings = error`` in pyproject.toml makes every warning an error, which is what we want
for warnings our own code (``launcher_core``, ``hydra_plugins``, ``tests``, ``bench``,
``example_app``) raises. A third-party dependency that starts warning on import (PyYAML 6.0.4's
``_yaml`` shim did) must not take a fixture, and every test that uses it, down with it: while a
fixture is set up, warnings raised from files outside this repository are listed in the summary
instead of raised. Loaded by tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
OWN_DIRS = tuple(REPO_ROOT / name for name in ("launcher_core", "hydra_plugins", "tests", "bench", "example_app"))
_third_party: list[str] = []


def is_own_code(filename: str) -> bool:
    """Whether a warning was raised from a file of this repository (not from the venv)."""
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return any(path.is_relative_to(own) for own in OWN_DIRS)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest) -> Generator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = yield
    for message in caught:
        where = f"{message.filename}:{message.lineno}"
        if is_own_code(message.filename):
            # our own warnings stay errors, as everywhere else in the suite
            error = message.category(f"{message.message} ({where}, in fixture {fixturedef.argname!r})")
            outcome.force_exception(error)
            return
        entry = f"{message.category.__name__}: {message.message} ({where}, fixture {fixturedef.argname!r})"
        if entry not in _third_party:
            _third_party.append(entry)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _third_party:
        terminalreporter.section("third-party warnings during fixture set-up (not errors)")
        for entry in _third_party:
            terminalreporter.line(entry)
