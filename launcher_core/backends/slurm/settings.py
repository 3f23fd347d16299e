"""The settings of ``hydra/launcher=slurm``: checked once, before anything is launched, with
errors naming the bad ``hydra.launcher`` key; and the ``#SBATCH`` options they make.

:class:`SlurmSettings` is every check but the ``sbatch_template`` probe, which renders a script
(:mod:`.sbatch`, which takes these settings): :class:`~.options.SlurmOptions` adds it on top, so
that the imports run one way (settings <- sbatch <- options)."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from launcher_core.backends.slurm.dependencies import check_dependency_settings
from launcher_core.backends.slurm.schema import SlurmArrayLauncherConf
from launcher_core.backends.slurm.syntax import abbreviates
from launcher_core.backends.slurm.template import template_path
from launcher_core.container import container_from_config
from launcher_core.container_schema import ContainerConf
from launcher_core.errors import ConfigError
from launcher_core.resources import (
    Parser,
    check_resources_from,
    gpu_count,
    memory_gb,
    minutes,
    positive_int,
    slurm_name,
)
from launcher_core.settings import ENV_VARS, SETUP_COMMANDS, one_spelling
from launcher_core.validation import check_optional_positive, check_positive, env_vars

log = logging.getLogger("launcher_core.slurm")

#: hydra-submitit-launcher settings accepted (so a ``submitit_slurm`` config carries over) but not
#: used, and why; setting one logs a warning naming it
IGNORED_SUBMITIT_KEYS = {
    "submitit_folder": "this launcher keeps its files in the sweep dir's .launcher/slurm/ and each job's .launcher/",
}

_OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_SBATCH_TEXT_KEYS = (
    "partition",
    "qos",
    "comment",
    "constraint",
    "exclude",
    "gres",
    "mem_per_gpu",
    "mem_per_cpu",
    "account",
)

#: what ``resources_from`` may set per job, and how each value is checked before it reaches an
#: ``#SBATCH`` line (numbers as numbers; names letters, digits and ``_.:,+-`` only)
RESOURCES: dict[str, Parser] = {
    "timeout_min": minutes,
    "mem_gb": memory_gb,
    "gpus_per_node": gpu_count,
    "gpus_per_task": positive_int,
    "cpus_per_task": positive_int,
    "cpus_per_gpu": positive_int,
    "partition": slurm_name,
    "constraint": slurm_name,
    "gres": slurm_name,
}


@dataclass
class SlurmSettings(SlurmArrayLauncherConf):
    """``hydra.launcher`` settings of ``hydra/launcher=slurm``: the keys and defaults of
    :class:`SlurmArrayLauncherConf`. After :meth:`check`, ``container`` is a
    :class:`~launcher_core.container.Container` or None and the list/dict settings are plain.
    Built by :meth:`~.options.SlurmOptions.from_params`."""

    def note_ignored(self, p: str) -> None:
        """One warning per hydra-submitit-launcher key that is set but not used."""
        for key, why in IGNORED_SUBMITIT_KEYS.items():
            if getattr(self, key) is not None:
                log.warning("%s.%s is ignored (a hydra-submitit-launcher setting): %s", p, key, why)

    def check(self, p: str) -> None:
        """Check every setting (``p``: the key prefix in messages); raise ``ConfigError`` naming
        the bad key. Also checks that ``sbatch_template`` is a file; rendering it is the caller's."""
        check_positive(f"{p}.timeout_min", self.timeout_min, integer=True)
        for key in ("cpus_per_task", "cpus_per_gpu", "gpus_per_task"):
            check_optional_positive(f"{p}.{key}", getattr(self, key), integer=True)
        if self.gpus_per_node is not None:
            check_positive(f"{p}.gpus_per_node", self.gpus_per_node, integer=True, allow_zero=True)
        check_optional_positive(f"{p}.mem_gb", self.mem_gb)
        for key in ("tasks_per_node", "nodes", "array_parallelism"):
            check_positive(f"{p}.{key}", getattr(self, key), integer=True)
        check_positive(f"{p}.signal_delay_s", self.signal_delay_s, integer=True, allow_zero=True)
        if self.signal_delay_s > 65535:
            raise ConfigError(f"{p}.signal_delay_s must be <= 65535 (Slurm's limit), got {self.signal_delay_s}")
        check_positive(f"{p}.max_num_timeout", self.max_num_timeout, integer=True, allow_zero=True)
        check_positive(f"{p}.poll_interval_s", self.poll_interval_s)
        check_positive(f"{p}.command_timeout_s", self.command_timeout_s)
        check_optional_positive(f"{p}.max_array_size", self.max_array_size, integer=True)
        check_dependency_settings(self, p)
        self._check_packing(p)
        self.resources_from = check_resources_from(self.resources_from, RESOURCES, p)
        if self.name == SlurmArrayLauncherConf.name:  # not resolved: built without Hydra (pull, tests)
            self.name = "hydra"
        _line(f"{p}.name", self.name)
        for key in (*_SBATCH_TEXT_KEYS, "cuda_module", "python", "remote_dir", "ssh_config"):
            if getattr(self, key) is not None:
                _line(f"{p}.{key}", getattr(self, key))
        # hydra-submitit-launcher's `setup` stays its spelling of setup_commands (no deprecation note)
        one_spelling(SETUP_COMMANDS, self.setup_commands, "setup", self.setup, prefix=p, deprecated=False)
        for key in ("setup", SETUP_COMMANDS, "srun_args", "modules", "prepare_commands", "login_setup"):
            value = getattr(self, key) or []
            shell = key in ("setup", SETUP_COMMANDS)  # an empty set-up line is harmless
            setattr(self, key, [_line(f"{p}.{key}", v, allow_empty=shell) for v in _as_list(f"{p}.{key}", value)])
        _check_srun_args(f"{p}.srun_args", self.srun_args)
        self.additional_parameters = _sbatch_parameters(f"{p}.additional_parameters", self.additional_parameters)
        given = one_spelling(ENV_VARS, self.env_vars, "env", self.env, prefix=p)
        self.env_vars = dict(env_vars(f"{p}.{given.key}", given.value))
        self.env = dict(self.env_vars) if given.key == "env" else {}
        container: Any = self.container
        if isinstance(container, ContainerConf):  # the schema's default: no image, no container
            container = dataclasses.asdict(container)
        self.container = container_from_config(container, f"{p}.container")
        if self.login_host is not None:
            host = _line(f"{p}.login_host", self.login_host)
            if host.startswith("-") or any(c.isspace() for c in host):
                raise ConfigError(f"{p}.login_host must be an SSH host or alias, got {host!r}")
        if self.sbatch_template is not None:
            self.sbatch_template = template_path(self.sbatch_template)

    def for_resources(self, resources: Mapping[str, Any]) -> Self:
        """These options with one resource group's per-job values (``resources_from``) in place;
        ``gpus_per_node: 0`` asks for no GPU at all."""
        if not resources:
            return self
        values = dict(resources)
        if values.get("gpus_per_node") == 0:
            values["gpus_per_node"] = None
        return dataclasses.replace(self, **values)

    def resources_view(self) -> dict[str, Any]:
        """The resources of a script (what an ``sbatch_template`` sees as ``resources``)."""
        return {name: getattr(self, name) for name in RESOURCES} | {
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
        }

    def _check_packing(self, p: str) -> None:
        check_optional_positive(f"{p}.expected_job_s", self.expected_job_s)
        if self.jobs_per_task == "auto":
            if self.expected_job_s is None:
                raise ConfigError(f"{p}.jobs_per_task=auto needs {p}.expected_job_s (seconds one job takes)")
        else:
            if isinstance(self.jobs_per_task, str) and self.jobs_per_task.strip().isdigit():
                self.jobs_per_task = int(self.jobs_per_task)
            if isinstance(self.jobs_per_task, bool) or not isinstance(self.jobs_per_task, int):
                raise ConfigError(f"{p}.jobs_per_task must be a positive integer or auto, got {self.jobs_per_task!r}")
            check_positive(f"{p}.jobs_per_task", self.jobs_per_task, integer=True)
        if self.jobs_per_task != 1 and self.nodes * self.tasks_per_node > 1:
            raise ConfigError(
                f"{p}.jobs_per_task packs single-task jobs; it cannot be combined with "
                f"nodes={self.nodes} x tasks_per_node={self.tasks_per_node}"
            )

    @property
    def job_setup(self) -> list[str]:
        """The set-up lines of the batch script: ``setup_commands``, or hydra-submitit-launcher's ``setup``."""
        return list(self.setup_commands or self.setup or [])

    @property
    def job_setup_key(self) -> str:
        """The key those lines were given under (messages name it)."""
        return "setup" if self.setup and not self.setup_commands else SETUP_COMMANDS

    @property
    def gpus_requested(self) -> bool:
        return bool(self.gpus_per_node or self.gpus_per_task or (self.gres and "gpu" in self.gres))

    @property
    def requeue_grace_s(self) -> int:
        """How long a task may take to stop (and checkpoint) after SIGTERM before a requeue."""
        return max(5, min(60, self.signal_delay_s // 2))

    def sbatch_options(self) -> dict[str, Any]:
        """``#SBATCH`` options (long names without ``--``) every chunk shares."""
        opts: dict[str, Any] = {
            "job-name": self.name,
            "time": self.timeout_min,
            "nodes": self.nodes,
            "ntasks-per-node": self.tasks_per_node,
            "requeue": True,
            "open-mode": "append",
        }
        if self.signal_delay_s:  # 0: no notice before the time limit (Slurm would send none for @0 either)
            opts["signal"] = f"B:USR2@{self.signal_delay_s}"
        optional = {
            "cpus-per-task": self.cpus_per_task,
            "gpus-per-node": self.gpus_per_node,
            "cpus-per-gpu": self.cpus_per_gpu,
            "gpus-per-task": self.gpus_per_task,
            "mem": None if self.mem_gb is None else _mem(self.mem_gb),
        }
        optional.update({k.replace("_", "-"): getattr(self, k) for k in _SBATCH_TEXT_KEYS})
        opts.update({k: v for k, v in optional.items() if v is not None})
        opts.update({k.replace("_", "-"): v for k, v in self.additional_parameters.items()})
        return opts


def _line(key: str, value: Any, allow_empty: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    text = str(value)
    if (not text and not allow_empty) or any(c in text for c in "\n\r\0"):
        raise ConfigError(f"{key} must be a non-empty single line, got {value!r}")
    return text


def _as_list(key: str, value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    return list(value)


def _sbatch_parameters(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of sbatch options, got {value!r}")
    out: dict[str, Any] = {}
    for name, val in value.items():
        if not isinstance(name, str) or not _OPTION_NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not an sbatch option name")
        reserved = abbreviates(name.replace("_", "-"), ("array", "output", "error", "chdir", "signal"))
        if reserved == "signal":
            raise ConfigError(f"{key}.{name}: {_SIGNAL_IS_OURS}")
        if reserved:
            raise ConfigError(f"{key}.{name} is set by the launcher and cannot be overridden")
        out[name] = val if val is True else _line(f"{key}.{name}", val)
    return out


_SIGNAL_IS_OURS = (
    "the launcher sets the signal itself (SIGUSR2 to the batch shell, signal_delay_s before the time "
    "limit: its timeout requeue and preemption handling depend on it); set hydra.launcher.signal_delay_s instead"
)


def _check_srun_args(key: str, args: Sequence[str]) -> None:
    """Refuse an srun ``--signal``: Slurm would signal the tasks themselves before the time limit, next to
    (and racing with) the batch shell's SIGUSR2 that drives timeouts and preemption."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and abbreviates(arg[2:].partition("=")[0], ("signal",)):
            raise ConfigError(f"{key}[{i}] ({arg!r}): {_SIGNAL_IS_OURS}")


def _mem(mem_gb: float) -> str:
    """``--mem`` value as submitit writes it: whole GB, else MB."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"
