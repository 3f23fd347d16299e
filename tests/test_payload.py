"""The sweep payload does not depend on the launching side (issue 28): what travels by reference,
what by value and why, and that a job side without the launching side's Hydra plugins loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher_core.runtime import payload
from tests.conftest import REPO_ROOT

APP = """\
import json
import sys
from pathlib import Path

import hydra
from launcher_core.runtime import payload

{prelude}

@hydra.main(version_base="1.3", config_path=None)
def main(cfg):
    return 1

{tail}
"""
GUARDED = (
    'if __name__ == "__main__":\n    print(json.dumps(payload.task_reference(main.__wrapped__, Path(sys.argv[1]))))\n'
)


def _reference(tmp_path: Path, prelude: str = "", tail: str = GUARDED, code_dir: Path | None = None) -> list:
    """task_reference of the app's task as the launching process (the script is ``__main__``) sees it."""
    (tmp_path / "app.py").write_text(APP.format(prelude=prelude, tail=tail))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), str(code_dir or tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_guarded_script_travels_by_reference_with_the_hydra_main_wrapper_unwrapped(tmp_path: Path) -> None:
    ref, why = _reference(tmp_path)
    assert why == ""
    assert ref == {"qualname": "main", "unwrap": 1, "script": "app.py", "script_dir": "."}


def test_a_script_that_runs_its_app_when_imported_travels_by_value(tmp_path: Path) -> None:
    # a call outside the __main__ guard: importing the script on the job side would run the app
    tail = GUARDED + "if len(sys.argv) > 5:\n    main()\n"
    ref, why = _reference(tmp_path, tail=tail)
    assert ref is None
    assert "calls main() when imported (line" in why


def test_a_task_outside_the_code_dir_travels_by_value(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    ref, why = _reference(tmp_path, code_dir=tmp_path / "code")
    assert ref is None and "outside the code dir" in why


def test_lambdas_and_callable_objects_travel_by_value(tmp_path: Path) -> None:
    class Task:
        def __call__(self, cfg: object) -> int:
            return 1

    ref, why = payload.task_reference(lambda cfg: 1, REPO_ROOT)
    assert ref is None and "not defined at the top level" in why
    ref, why = payload.task_reference(Task(), REPO_ROOT)
    assert ref is None and "not a plain function" in why


def test_a_function_of_a_module_in_the_code_dir_travels_by_module_name(tmp_path: Path) -> None:
    from tests.apps import tasks

    ref, why = payload.task_reference(tasks.__dict__[_first_function(tasks)], REPO_ROOT)
    assert why == "" and ref is not None and ref["module"] == "tests.apps.tasks"


def _first_function(module: object) -> str:
    import inspect

    return next(n for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__)


JOB_SIDE = textwrap.dedent(
    """\
    import builtins, pickle, sys
    real_import = builtins.__import__
    def no_plugins(name, *args, **kwargs):  # this host has none of the launching side's plugins
        if name == "hydra_plugins" or name.startswith("hydra_plugins."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    builtins.__import__ = no_plugins
    from launcher_core.runtime import payload
    loaded = payload.load(open(sys.argv[1], "rb").read())
    for cfg in loaded.composer_state["templates"].values():
        print(type(cfg.hydra).__name__, cfg.hydra.sweeper._target_, cfg.hydra.sweeper.direction, cfg.x)
    print(loaded.task_function(None))
    """
)


def test_a_payload_composed_with_a_plugin_sweeper_loads_where_no_plugin_is_installed(tmp_path: Path) -> None:
    """The Optuna sweeper's structured config (its Direction enum) stays home: the job side gets
    the sweeper node as plain data, and the task by reference."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        "defaults:\n  - override hydra/sweeper: optuna\nx: 1\nhydra:\n  sweeper:\n    direction: minimize\n"
    )
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """\
            import sys
            from pathlib import Path

            import hydra
            from hydra.core.global_hydra import GlobalHydra
            from hydra._internal.hydra import Hydra
            from hydra._internal.utils import create_config_search_path
            from hydra.types import RunMode

            from launcher_core.runtime import payload
            from launcher_core.runtime.compose import SweepComposer


            @hydra.main(version_base="1.3", config_path="conf", config_name="config")
            def main(cfg):
                return "ran by reference"


            if __name__ == "__main__":
                here = Path(__file__).parent
                app = Hydra.create_main_hydra2("app", create_config_search_path(str(here / "conf")))
                master = app.compose_config("config", overrides=[], run_mode=RunMode.MULTIRUN)
                composer = SweepComposer(None, master)
                composer._loader = app.config_loader
                composer.check(["x=2"])
                data, needs = payload.build(main.__wrapped__, composer.node_state(), None, here)
                assert needs.portable, needs
                Path(sys.argv[1]).write_bytes(data)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    built = subprocess.run(
        [sys.executable, "app.py", str(tmp_path / "sweep.pkl")], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert built.returncode == 0, built.stderr
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{tmp_path}"  # the script's dir, as every backend adds it
    job = subprocess.run(
        [sys.executable, "-c", JOB_SIDE, str(tmp_path / "sweep.pkl")], cwd="/", capture_output=True, text=True, env=env
    )
    assert job.returncode == 0, job.stderr
    lines = job.stdout.splitlines()
    assert lines[0].split()[:3] == [
        "DictConfig",
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "minimize",
    ]
    assert lines[-1] == "ran by reference"
