"""What a pipeline file becomes: stages, their planned jobs, and where the pipeline keeps its files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PIPELINE_DIR = ".pipeline"
STATE_FILE = "state.json"
STAGE_REF = re.compile(r"\$\{stage:\s*([^,}\s]+)\s*,\s*([^}\s]+)\s*\}")
REF_KEYS = ("output_dir", "sweep_dir")


@dataclass
class JobPlan:
    """One job of a stage: its number in the stage's plan (= its subdir) and swept overrides."""

    num: int
    overrides: list[str]
    values: dict[str, str]  # bare key -> canonical value, for matching


@dataclass
class Stage:
    name: str
    app: Path
    cwd: Path
    python: str
    overrides: list[str]
    paired: list[Any]
    cluster: str | None
    needs: list[str]
    match: list[str] | None
    paths: str  # auto | local
    constants: list[str] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # override key -> value template
    swept: list[str] = field(default_factory=list)  # bare keys
    jobs: list[JobPlan] = field(default_factory=list)


@dataclass
class Pipeline:
    file: Path
    name: str
    dir: Path
    stages: dict[str, Stage]  # in dependency order
    # (stage, job) -> upstream stage -> job numbers; see matching.job_needs
    needs_cache: dict[tuple[str, int], dict[str, list[int]]] = field(default_factory=dict, repr=False)
    # (upstream stage, keys) -> values of those keys -> its jobs; see matching.matched_job
    match_index: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], list[JobPlan]]] = field(
        default_factory=dict, repr=False
    )

    @property
    def state_dir(self) -> Path:
        return self.dir / PIPELINE_DIR

    def stage_dir(self, name: str) -> Path:
        return self.dir / name

    def log_path(self, name: str) -> Path:
        """Where a stage's launches write their output."""
        return self.state_dir / "logs" / f"{name}.log"
