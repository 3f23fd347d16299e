"""``hydra/sweeper=paired``: Hydra's BasicSweeper plus paired (zipped) groups, job lists read from
a file (``jobs_file``) and dry runs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from hydra_plugins.remote_launcher import config as _config  # noqa: F401  (registers schemas)
from launcher_core.errors import SweepDefinitionError

log = logging.getLogger(__name__)


class PairedSweeper(BasicSweeper):
    """Grid over ordinary sweep overrides, crossed with paired groups (see ``launcher_core.sweep``)."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        paired: list[Any] | None = None,
        dry_run: bool = False,
        jobs_file: str | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.paired = list(paired) if paired else []
        self.dry_run = dry_run
        self.jobs_file = jobs_file

    def plan(self, arguments: list[str]) -> list[list[str]]:
        """Every job's override list, in launch order; raises before anything is launched."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from launcher_core.sweep import expand, grid_dimensions, listed_jobs, paired_dimensions

        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        if self.jobs_file:
            return listed_jobs(self.jobs_file, overrides, self.paired)
        grid, groups = paired_dimensions(self.paired, grid_dimensions(overrides), parser)
        return expand([*grid, *groups])

    def sweep(self, arguments: list[str]) -> Any:
        from launcher_core.sweep import batches

        assert self.config is not None and self.launcher is not None
        jobs = self.plan(arguments)
        self._check_numbers(jobs)
        self.overrides = batches(jobs, self.max_batch_size)
        if self.dry_run:
            self._print_plan(jobs)
            return []
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[list[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for result in results:
                _ = result.return_value  # raises the job's exception if it failed, like Hydra
            initial_job_idx += len(batch)
            returns.append(list(results))
        return returns

    def _check_numbers(self, jobs: list[list[str]]) -> None:
        """Jobs numbered in a jobs file keep their numbers with this package's launchers only
        (Hydra's launchers number jobs by position): refuse other numbers with theirs."""
        from hydra_plugins.remote_launcher.launchers import BackendLauncher

        if not self.jobs_file or self.dry_run or isinstance(self.launcher, BackendLauncher):
            return
        for pos, overrides in enumerate(jobs):
            num = _job_number(overrides)
            if num is not None and num != pos:
                raise SweepDefinitionError(
                    f"hydra.sweeper.jobs_file: job {pos} is numbered {num}; only this package's launchers "
                    f"(hydra/launcher=local_pool, ...) launch jobs under their own numbers"
                )

    def validate_batch_is_legal(self, batch: Any) -> None:
        """Compose every job config before launching anything.

        Our own launchers compose the whole batch before submitting a single job, so checking
        here would compose everything twice; other launchers get the check, done with the
        fast composer (same configs as Hydra's, far fewer compositions: see ``SweepComposer.check``).
        """
        from hydra_plugins.remote_launcher.launchers import BackendLauncher

        if isinstance(self.launcher, BackendLauncher):
            return
        from launcher_core.runtime.compose import SweepComposer

        assert self.hydra_context is not None and self.config is not None
        tic = time.perf_counter()
        composer = SweepComposer(self.hydra_context, self.config)
        for overrides in batch:
            composer.check(list(overrides))
        log.debug("validated %d job configs in %.2f s", len(batch), time.perf_counter() - tic)

    def _print_plan(self, jobs: list[list[str]]) -> None:
        from hydra.core.utils import filter_overrides

        print(f"Dry run: {len(jobs)} jobs would be launched (nothing was launched)")
        for pos, overrides in enumerate(jobs):
            num = _job_number(overrides) if self.jobs_file else None
            print(f"  #{pos if num is None else num} : {' '.join(filter_overrides(overrides))}")


def _job_number(overrides: list[str]) -> int | None:
    """The number a jobs file gave this job (its last ``hydra.job.num=N``), or None."""
    from launcher_core.sweep import JOB_NUM_KEY

    nums = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == JOB_NUM_KEY]
    return int(nums[-1]) if nums else None
