"""Cost of the sweep payload on both sides: the payload that names no launching-side plugin
(``launcher_core.runtime.payload``: task by reference, templates as standard pickles, no Hydra
state) against the previous one (cloudpickle of the task, the Hydra context, Hydra's
``Singleton`` state and the typed templates), side by side in one run.

    python bench/bench_payload.py                 # 1,000 jobs, 3 structural variants, 5 job processes
    python bench/bench_payload.py --jobs 10000 --trials 10

A temp project holds an app whose config has a structured schema and the Optuna sweeper when
hydra-optuna-sweeper is installed (its plugin state is what the previous payload dragged along).
The app's ``__main__`` composes the sweep's templates and builds both payloads (build time, size);
then fresh interpreters play the job side: load the payload and compose one job's config, timed
inside the process (interpreter start-up excluded, the same for both) and as wall time. The
anchor is the previous payload: the ratio new/previous must stay at or under 1.1 on the job side.
Nothing uses the network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.1

APP = textwrap.dedent(
    """\
    import json, sys, time
    from dataclasses import dataclass, field
    from pathlib import Path

    import cloudpickle
    import hydra
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_store import ConfigStore
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext, RunMode

    from launcher_core.runtime import payload
    from launcher_core.runtime.compose import SweepComposer


    @dataclass
    class Optim:
        lr: float = 0.1
        momentum: float = 0.9


    @dataclass
    class Config:
        optim: Optim = field(default_factory=Optim)
        seed: int = 0
        model: str = "cnn"


    ConfigStore.instance().store(name="schema", node=Config)


    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def main(cfg):
        return cfg.optim.lr


    if __name__ == "__main__":
        here = Path(__file__).parent
        n_jobs, variants = int(sys.argv[1]), int(sys.argv[2])
        app = Hydra.create_main_hydra2("app", create_config_search_path(str(here / "conf")))
        master = app.compose_config("config", overrides=[], run_mode=RunMode.MULTIRUN)
        ctx = HydraContext(config_loader=app.config_loader, callbacks=Callbacks(master))
        composer = SweepComposer(ctx, master)
        for i in range(n_jobs):
            composer.check([f"optim.lr={i / n_jobs}", f"seed={i}", f"+variant=v{i % variants}"])
        state = composer.node_state()
        timings = {}
        tic = time.perf_counter()
        new, needs = payload.build(main.__wrapped__, state, None, here)
        timings["new_build_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        old = cloudpickle.dumps(
            {
                "task_function": main.__wrapped__,
                "hydra_context": ctx,
                "singleton_state": Singleton.get_state(),
                "composer": state,
                "code_record": None,
            }
        )
        timings["old_build_s"] = time.perf_counter() - tic
        (here / "new.pkl").write_bytes(new)
        (here / "old.pkl").write_bytes(old)
        timings.update(new_bytes=len(new), old_bytes=len(old), portable=needs.portable)
        timings["templates"] = len(state["templates"])
        print(json.dumps(timings))
    """
)

JOB_SIDE = textwrap.dedent(
    """\
    import json, sys, time
    tic = time.perf_counter()
    from launcher_core.runtime.compose import SweepComposer, compose_job
    kind, path, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if kind == "new":
        from launcher_core.runtime import payload
        loaded = payload.load(open(path, "rb").read())
        state = loaded.composer_state
    else:  # the previous format, read as the previous worker did
        import cloudpickle
        from hydra.core.singleton import Singleton
        data = cloudpickle.load(open(path, "rb"))
        Singleton.set_state(data["singleton_state"])
        state = data["composer"]
    cfg = compose_job(SweepComposer.for_node(state), overrides, 7)
    assert cfg.optim.lr == 0.5 and cfg.seed == 7
    print(json.dumps({"in_process_s": time.perf_counter() - tic}))
    """
)


def _project(root: Path, variants: int) -> Path:
    (root / "conf" / "variant").mkdir(parents=True)
    sweeper = "  - override hydra/sweeper: optuna\n" if _has_optuna() else ""
    (root / "conf" / "config.yaml").write_text(f"defaults:\n  - schema\n{sweeper}  - _self_\nmodel: cnn\n")
    for v in range(variants):
        (root / "conf" / "variant" / f"v{v}.yaml").write_text(f"# @package _global_\nmodel: net{v}\n")
    (root / "app.py").write_text(APP)
    return root


def _has_optuna() -> bool:
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        return False
    return True


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(project)])}


def _job_side(project: Path, kind: str, trials: int) -> tuple[list[float], list[float]]:
    inside, wall = [], []
    overrides = json.dumps(["optim.lr=0.5", "seed=7", "+variant=v1"])
    for _ in range(trials):
        tic = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", JOB_SIDE, kind, str(project / f"{kind}.pkl"), overrides],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env=_env(project),
        )
        wall.append(time.perf_counter() - tic)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} job side failed: {proc.stderr[-2000:]}")
        inside.append(json.loads(proc.stdout.strip().splitlines()[-1])["in_process_s"])
    return inside, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--variants", type=int, default=3, help="structural variants (templates)")
    parser.add_argument("--trials", type=int, default=5, help="job processes per payload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hrl-bench-payload-") as tmp:
        project = _project(Path(tmp) / "proj", args.variants)
        built = subprocess.run(
            [sys.executable, str(project / "app.py"), str(args.jobs), str(args.variants)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=project,
            env=_env(project),
        )
        if built.returncode != 0:
            raise SystemExit(f"building the payloads failed: {built.stderr[-2000:]}")
        info = json.loads(built.stdout.strip().splitlines()[-1])
        new_in, new_wall = _job_side(project, "new", args.trials)
        old_in, old_wall = _job_side(project, "old", args.trials)
    print(f"{args.jobs} jobs, {info['templates']} templates, optuna sweeper in the config: {_has_optuna()}")
    print(f"new payload portable (task by reference, no plugin state): {info['portable']}")
    rows = [
        ("build (launching side)", info["new_build_s"], info["old_build_s"]),
        ("size (KB)", info["new_bytes"] / 1024, info["old_bytes"] / 1024),
        ("job: load + compose, in process (median)", statistics.median(new_in), statistics.median(old_in)),
        ("job: whole process, wall (median)", statistics.median(new_wall), statistics.median(old_wall)),
    ]
    print(f"{'':44} {'new':>10} {'previous':>10} {'ratio':>7}")
    for label, new, old in rows:
        print(f"{label:44} {new:10.3f} {old:10.3f} {new / old:7.2f}")
    ratio = statistics.median(new_in) / statistics.median(old_in)
    verdict = "ok" if ratio <= GOAL_RATIO else "SLOWER"
    print(f"job side, new/previous: {ratio:.2f} (goal <= {GOAL_RATIO}): {verdict}")


if __name__ == "__main__":
    main()
