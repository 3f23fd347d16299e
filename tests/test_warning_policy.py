"""The suite's warning policy (tests/warning_policy.py): a third-party library that warns on import
during a fixture's set-up does not error the tests using it; a warning from our own code does."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.warning_policy import is_own_code


def test_own_code_is_the_repository_not_the_venv() -> None:
    assert is_own_code(str(REPO_ROOT / "launcher_core" / "controller.py"))
    assert is_own_code(str(REPO_ROOT / "tests" / "sshd.py"))
    assert not is_own_code(str(REPO_ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "yaml" / "x.py"))
    assert not is_own_code("/usr/lib/python3/dist-packages/yaml/__init__.py")
    assert not is_own_code("<frozen importlib._bootstrap>")


def _run_inner_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, body: str) -> pytest.RunResult:
    """Run a small suite under the policy with every warning an error, as pyproject.toml does."""
    site = pytester.mkdir("thirdparty_site")
    # a stand-in for a dependency that starts warning when imported (PyYAML 6.0.4's _yaml did)
    (site / "noisy_dependency.py").write_text(
        "import warnings\nwarnings.warn('this module moved', DeprecationWarning)\nVALUE = 42\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{REPO_ROOT}:{site}")
    pytester.makepyfile(test_inner=textwrap.dedent(body))
    return pytester.runpytest_subprocess("-p", "tests.warning_policy", "-W", "error", "-p", "no:cacheprovider")


def test_third_party_import_warning_in_a_fixture_is_not_an_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_inner_suite(
        pytester,
        monkeypatch,
        """
        import pytest

        @pytest.fixture(scope="session")
        def dependency():
            import noisy_dependency
            return noisy_dependency.VALUE

        def test_one(dependency):
            assert dependency == 42

        def test_two(dependency):
            assert dependency == 42
        """,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*third-party warnings during fixture set-up*", "*this module moved*noisy_dependency*"]
    )


def test_own_warning_in_a_fixture_stays_an_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    own_file = Path(REPO_ROOT / "launcher_core" / "controller.py")
    result = _run_inner_suite(
        pytester,
        monkeypatch,
        f"""
        import warnings
        import pytest

        @pytest.fixture
        def ours():
            warnings.warn_explicit("our own deprecation", DeprecationWarning, {str(own_file)!r}, 1)
            return 1

        def test_uses_it(ours):
            assert ours == 1
        """,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*DeprecationWarning: our own deprecation*"])
