"""Cluster presets without copying: shipped ones (built from the repository's conf/cluster/),
personal ones (``launcher-core cluster add``, in $XDG_CONFIG_HOME) and the project's own, in that
order of precedence reversed; and the ``cluster`` CLI (list, show, add with validation, remove)."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher_core.cli import main as cli_main
from tests.conftest import REPO_ROOT, run_app

APP = """\
import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    (__import__("pathlib").Path(HydraConfig.get().runtime.output_dir) / "x.txt").write_text(str(cfg.x))
    return cfg.x


if __name__ == "__main__":
    main()
"""


def _app(root: Path) -> Path:
    """An app with its own conf/ but no conf/cluster/."""
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "config.yaml").write_text("x: 0\n")
    (root / "app.py").write_text(APP)
    return root / "app.py"


def _env(config_home: Path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(config_home)}


def _launcher_value(app: Path, cluster: str, key: str, config_home: Path) -> str:
    proc = run_app(
        app, [f"+cluster={cluster}", "--cfg", "hydra", "-p", f"hydra.launcher.{key}"], app.parent, 60, _env(config_home)
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1].split(":", 1)[-1].strip()


def test_the_shipped_presets_are_the_repositorys_conf_cluster_also_in_a_build(tmp_path: Path) -> None:
    from launcher_core.presets import SHIPPED_DIR

    source = REPO_ROOT / "conf" / "cluster"
    names = sorted(p.name for p in source.glob("*.yaml"))
    assert "slurm_cpu.yaml" in names and "local.yaml" in names
    assert sorted(p.name for p in (SHIPPED_DIR / "cluster").glob("*.yaml")) == names
    # a build (setuptools' build_py, what a wheel is made from) copies them into the package
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, tree / name)
    for name in ("conf", "hydra_plugins", "launcher_core"):
        shutil.copytree(REPO_ROOT / name, tree / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(tmp_path / "lib"),
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    built = tmp_path / "lib" / "launcher_core" / "conf" / "cluster"
    assert not built.is_symlink() and sorted(p.name for p in built.glob("*.yaml")) == names
    match, mismatch, errors = filecmp.cmpfiles(source, built, names, shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) == len(names)


@pytest.mark.timeout(180)
def test_an_app_without_conf_cluster_uses_shipped_presets(tmp_path: Path) -> None:
    app = _app(tmp_path / "app")
    home = tmp_path / "config-home"
    out = tmp_path / "out"
    proc = run_app(app, ["-m", "+cluster=local", "x=1,2", f"hydra.sweep.dir={out}"], app.parent, 120, _env(home))
    assert proc.returncode == 0, proc.stderr
    assert [(out / str(n) / "x.txt").read_text() for n in (0, 1)] == ["1", "2"]
    assert (out / ".launcher" / "state.sqlite").exists()  # local_pool ran them, as the preset says
    assert _launcher_value(app, "slurm_cpu", "_target_", home).endswith("SlurmArrayLauncher")
    assert _launcher_value(app, "slurm_cpu", "partition", home) == "cpu"


@pytest.mark.timeout(180)
def test_project_presets_win_over_personal_ones_which_win_over_shipped(tmp_path: Path) -> None:
    app = _app(tmp_path / "app")
    home = tmp_path / "config-home"
    assert _launcher_value(app, "local", "n_jobs", home) == "2"  # shipped
    assert cli_main_with(home, ["cluster", "add", "local", "--from", "local", "n_jobs=3"]) == 0
    assert _launcher_value(app, "local", "n_jobs", home) == "3"  # personal
    (app.parent / "conf" / "cluster").mkdir()
    (app.parent / "conf" / "cluster" / "local.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: local_pool\nhydra:\n  launcher:\n    n_jobs: 5\n"
    )
    assert _launcher_value(app, "local", "n_jobs", home) == "5"  # the project's


def cli_main_with(config_home: Path, argv: list[str]) -> int:
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(config_home)
    try:
        return cli_main(argv)
    finally:
        if saved is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = saved


def test_cluster_cli_add_validates_names_the_bad_key_and_lists_shows_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no conf/ here: only personal and shipped presets
    home = tmp_path / "config-home"
    target = home / "hydra-remote-launcher" / "cluster" / "mine.yaml"

    assert cli_main_with(home, ["cluster", "add", "mine", "--from", "ssh_host", "max_paralel=2"]) == 2
    err = capsys.readouterr().err
    assert "cluster mine (from ssh_host): hydra.launcher.max_paralel is not a setting of the remote_ssh launcher" in err
    assert cli_main_with(home, ["cluster", "add", "mine", "--from", "slurm_cpu", "timeout_min=-5"]) == 2
    assert "hydra.launcher.timeout_min must be > 0, got -5" in capsys.readouterr().err
    assert cli_main_with(home, ["cluster", "add", "mine", "--from", "nope"]) == 2
    assert "no cluster preset 'nope'" in capsys.readouterr().err
    assert not target.exists()  # nothing written for bad input

    argv = ["cluster", "add", "mine", "--from", "ssh_host", "hosts=[gpu1, gpu2]", "max_parallel=3"]
    assert cli_main_with(home, argv) == 0
    text = target.read_text()
    assert text.startswith("# @package _global_\n") and "max_parallel: 3" in text and "- gpu2" in text
    assert cli_main_with(home, argv) == 2  # exists
    assert "use --force" in capsys.readouterr().err

    capsys.readouterr()
    assert cli_main_with(home, ["cluster", "list"]) == 0
    listing = capsys.readouterr().out
    mine = next(line for line in listing.splitlines() if " mine " in line)
    assert "remote_ssh" in mine and "user" in mine
    assert any(" slurm_cpu " in line and "shipped" in line for line in listing.splitlines())

    assert cli_main_with(home, ["cluster", "show", "mine"]) == 0
    assert f"# user: {target}" in capsys.readouterr().out

    assert cli_main_with(home, ["cluster", "remove", "slurm_cpu"]) == 2
    assert "cluster slurm_cpu is not a personal preset: it is shipped" in capsys.readouterr().err
    assert cli_main_with(home, ["cluster", "remove", "mine"]) == 0
    assert not target.exists()


def test_cluster_test_of_a_local_preset_has_nothing_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main_with(tmp_path / "home", ["cluster", "test", "local"]) == 0
    assert "nothing to check" in capsys.readouterr().out
