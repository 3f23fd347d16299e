"""``hydra.launcher`` of ``remote_ssh``, validated: keys and defaults come from
``RemoteSSHLauncherConf`` (the one settings source); this module only checks them and builds
the typed view the backend and the pull daemon use."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.container import Container, container_from_config
from launcher_core.errors import ConfigError
from launcher_core.remote.paths import check_remote_dir
from launcher_core.remote.ssh import HostAddress, SSHOptions
from launcher_core.resources import check_resources_from, gpu_count
from launcher_core.settings import ENV_VARS, SETUP_COMMANDS, one_spelling, reject_unknown
from launcher_core.validation import env_vars

log = logging.getLogger("launcher_core.remote_ssh")

ENV_SETUPS = ("none", "uv", "conda")


#: what ``resources_from`` may set per job on remote_ssh
RESOURCES = {"gpus_per_job": gpu_count}


@dataclass(frozen=True)
class HostSettings:
    address: HostAddress
    max_parallel: int
    remote_dir: str | None = None
    gpus: int | None = None  # GPUs of the host; known: jobs get free GPU ids (lock files), none shared


@dataclass(frozen=True)
class RemoteSSHSettings:
    """``hydra.launcher`` of ``remote_ssh``, validated. Built from a plain mapping (``from_mapping``)
    so the pull daemon can rebuild the backend from the state store without Hydra."""

    hosts: tuple[HostSettings, ...]
    ssh: SSHOptions
    remote_dir: str | None
    code_dir: str | None
    rsync_include: tuple[str, ...]
    rsync_exclude: tuple[str, ...]
    rsync_args: tuple[str, ...]
    python: str
    env_setup: str
    conda_env: str | None
    conda_command: str
    uv_command: str
    env_vars: tuple[tuple[str, str], ...]
    setup_commands: tuple[str, ...]
    gpus_per_job: int
    wait: bool
    skip_completed: bool
    poll_interval_s: float
    kill_grace_s: float
    reconnect_grace_s: float
    container: Container | None
    min_free_gb: float = 1.0
    preflight: bool = True
    auto_pull: bool = False
    auto_pull_interval_s: float = 30.0
    auto_pull_give_up_h: float = 24.0
    notify: str | None = None
    resources_from: tuple[tuple[str, str], ...] = ()
    # the keys the user gave these under (messages name them): the old spellings still work
    env_vars_key: str = ENV_VARS
    setup_commands_key: str = SETUP_COMMANDS
    jobs_per_gpu: int = 1
    gpu_lock_dir: str | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], prefix: str = "hydra.launcher") -> RemoteSSHSettings:
        """Validate a plain dict (``OmegaConf.to_container`` of ``hydra.launcher``). Keys and
        defaults are those of :class:`RemoteSSHLauncherConf` (the one settings source)."""
        from launcher_core.backends.remote_ssh.schema import RemoteSSHEnvConf, RemoteSSHLauncherConf

        reject_unknown(RemoteSSHLauncherConf, cfg, "remote_ssh", prefix)
        d, de = RemoteSSHLauncherConf(), RemoteSSHEnvConf()
        v = _Validator(cfg, prefix)
        default_parallel = v.integer("max_parallel", d.max_parallel, minimum=1)
        default_gpus = None if cfg.get("gpus") is None else v.integer("gpus", 0, minimum=0)
        ssh = SSHOptions(
            ssh_config=v.optional_path("ssh_config"),
            connect_timeout_s=v.number("connect_timeout_s", d.connect_timeout_s),
            command_timeout_s=v.number("command_timeout_s", d.command_timeout_s),
            rsync_timeout_s=v.number("rsync_timeout_s", d.rsync_timeout_s),
            server_alive_interval_s=v.number("server_alive_interval_s", d.server_alive_interval_s),
            server_alive_count_max=v.integer("server_alive_count_max", d.server_alive_count_max, minimum=1),
            accept_new_host_keys=v.boolean("accept_new_host_keys", d.accept_new_host_keys),
            batch_mode=v.optional_boolean("batch_mode"),
            control_persist_s=v.integer("control_persist_s", d.control_persist_s, minimum=1),
            retries=v.integer("retries", d.retries, minimum=0),
            rsync_path=v.optional_str("rsync_path"),
        )
        env = cfg.get("env") or {}
        if not isinstance(env, Mapping):
            raise ConfigError(f"{prefix}.env must be a mapping (setup, conda_env, vars, ...), got {env!r}")
        reject_unknown(RemoteSSHEnvConf, env, "remote_ssh", f"{prefix}.env")
        ev = _Validator(env, f"{prefix}.env")
        given_vars = one_spelling(ENV_VARS, cfg.get(ENV_VARS), "env.vars", env.get("vars"), prefix=prefix)
        given_setup = one_spelling(
            SETUP_COMMANDS, cfg.get(SETUP_COMMANDS), "prepare_commands", cfg.get("prepare_commands"), prefix=prefix
        )
        settings = cls(
            hosts=_parse_hosts(cfg.get("hosts"), default_parallel, f"{prefix}.hosts", default_gpus),
            ssh=ssh,
            remote_dir=v.optional_remote_path("remote_dir"),
            code_dir=v.optional_str("code_dir"),
            rsync_include=v.str_list("rsync_include", d.rsync_include),
            rsync_exclude=v.str_list("rsync_exclude", d.rsync_exclude),
            rsync_args=v.str_list("rsync_args", d.rsync_args),
            python=v.text("python", d.python),
            env_setup=ev.choice("setup", de.setup, ENV_SETUPS),
            conda_env=ev.optional_str("conda_env"),
            conda_command=ev.text("conda_command", de.conda_command),
            uv_command=ev.text("uv_command", de.uv_command),
            env_vars=tuple(env_vars(f"{prefix}.{given_vars.key}", given_vars.value)),
            setup_commands=v.str_list(given_setup.key, d.setup_commands),
            gpus_per_job=v.integer("gpus_per_job", d.gpus_per_job, minimum=0),
            wait=v.boolean("wait", d.wait),
            skip_completed=v.boolean("skip_completed", d.skip_completed),
            poll_interval_s=v.number("poll_interval_s", d.poll_interval_s),
            kill_grace_s=v.number("kill_grace_s", d.kill_grace_s, allow_zero=True),
            reconnect_grace_s=v.number("reconnect_grace_s", d.reconnect_grace_s, allow_zero=True),
            container=_parse_container(cfg.get("container"), f"{prefix}.container"),
            min_free_gb=v.number("min_free_gb", d.min_free_gb, allow_zero=True),
            preflight=v.boolean("preflight", d.preflight),
            auto_pull=v.boolean("auto_pull", d.auto_pull),
            auto_pull_interval_s=v.number("auto_pull_interval_s", d.auto_pull_interval_s),
            auto_pull_give_up_h=v.number("auto_pull_give_up_h", d.auto_pull_give_up_h),
            notify=v.optional_str("notify"),
            resources_from=tuple(check_resources_from(cfg.get("resources_from"), RESOURCES, prefix).items()),
            env_vars_key=given_vars.key,
            setup_commands_key=given_setup.key,
            jobs_per_gpu=v.integer("jobs_per_gpu", d.jobs_per_gpu, minimum=1),
            gpu_lock_dir=v.optional_remote_path("gpu_lock_dir"),
        )
        if settings.env_setup == "conda" and not settings.conda_env:
            raise ConfigError(f"{prefix}.env.conda_env must name the conda environment when env.setup=conda")
        _check_gpus(settings, prefix)
        return settings

    @property
    def prepare_commands(self) -> tuple[str, ...]:
        """The earlier name of :attr:`setup_commands`."""
        return self.setup_commands

    @property
    def per_job_gpus(self) -> bool:
        """Whether each job's GPU count comes from its config (``resources_from.gpus_per_job``)."""
        return any(key == "gpus_per_job" for key, _path in self.resources_from)

    @property
    def uses_gpus(self) -> bool:
        """Whether jobs may get GPUs (checked by the pre-flight with ``nvidia-smi -L``)."""
        return self.gpus_per_job > 0 or self.per_job_gpus or any(h.gpus for h in self.hosts)

    def stored_config(self) -> dict[str, Any]:
        """What a separate process needs to poll, fetch and cancel these jobs later.

        Environment variables, set-up commands and the container (its ``env``) are left out:
        they may hold secrets, and only starting jobs needs them.
        """
        return {
            "hosts": [
                {"host": h.address.label, "max_parallel": h.max_parallel, "remote_dir": h.remote_dir}
                | ({"gpus": h.gpus} if h.gpus is not None else {})
                for h in self.hosts
            ],
            "ssh_config": self.ssh.ssh_config,
            "remote_dir": self.remote_dir,
            "connect_timeout_s": self.ssh.connect_timeout_s,
            "command_timeout_s": self.ssh.command_timeout_s,
            "rsync_timeout_s": self.ssh.rsync_timeout_s,
            "server_alive_interval_s": self.ssh.server_alive_interval_s,
            "server_alive_count_max": self.ssh.server_alive_count_max,
            "accept_new_host_keys": self.ssh.accept_new_host_keys,
            "batch_mode": self.ssh.batch_mode,
            "control_persist_s": self.ssh.control_persist_s,
            "retries": self.ssh.retries,
            "rsync_path": self.ssh.rsync_path,
            "poll_interval_s": self.poll_interval_s,
            "kill_grace_s": self.kill_grace_s,
            "reconnect_grace_s": self.reconnect_grace_s,
        }

    @property
    def python_command(self) -> str:
        if self.env_setup == "uv" and self.python == "python3":
            return f"{self.uv_command} run --no-sync python"
        return self.python


class _Validator:
    """Reads one key at a time and raises ConfigError naming the full key."""

    def __init__(self, cfg: Mapping[str, Any], prefix: str) -> None:
        self.cfg = cfg
        self.prefix = prefix

    def _get(self, key: str, default: Any) -> Any:
        value = self.cfg.get(key, default)
        return default if value is None and default is not None else value

    def _fail(self, key: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.prefix}.{key} must be {what}, got {value!r}")

    def number(self, key: str, default: float, allow_zero: bool = False) -> float:
        value = self._get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or value < 0 or (value == 0 and not allow_zero):
            raise self._fail(key, ">= 0" if allow_zero else "a number > 0", value)
        return float(value)

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._fail(key, f"an integer >= {minimum}", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def optional_boolean(self, key: str) -> bool | None:
        value = self.cfg.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._fail(key, "true, false or null", value)
        return value

    def text(self, key: str, default: str) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\x00" in value:
            raise self._fail(key, "a non-empty single-line string", value)
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.cfg.get(key)
        if value is None:
            return None
        return self.text(key, "")

    def optional_path(self, key: str) -> str | None:
        value = self.optional_str(key)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"{self.prefix}.{key}: {value!r} is not a file")
        return str(path)

    def optional_remote_path(self, key: str) -> str | None:
        path = self.optional_str(key)
        if path is not None:
            check_remote_dir(f"{self.prefix}.{key}", path)
        return path

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self._get(key, default)
        if value not in choices:
            raise self._fail(key, " | ".join(choices), value)
        return value

    def str_list(self, key: str, default: Sequence[str]) -> tuple[str, ...]:
        value = self.cfg.get(key)
        if value is None:
            return tuple(default)
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(x, str) for x in value):
            raise self._fail(key, "a list of strings", value)
        return tuple(value)


def _parse_hosts(value: Any, default_parallel: int, key: str, default_gpus: int | None) -> tuple[HostSettings, ...]:
    if value is None or (isinstance(value, Sequence) and not isinstance(value, str) and not value):
        raise ConfigError(f"{key} is empty: name at least one host, e.g. {key}=[gpu1] or {key}=[user@host:22]")
    items = [value] if isinstance(value, (str, Mapping)) else list(value)
    hosts: list[HostSettings] = []
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if isinstance(item, str):
            hosts.append(HostSettings(HostAddress.parse(item, where), default_parallel, gpus=default_gpus))
        elif isinstance(item, Mapping):
            unknown = set(item) - {"host", "max_parallel", "remote_dir", "gpus"}
            if unknown:
                raise ConfigError(
                    f"{where} has unknown keys {sorted(unknown)}: use host, max_parallel, remote_dir, gpus"
                )
            v = _Validator(item, where)
            gpus = default_gpus if item.get("gpus") is None else v.integer("gpus", 0, minimum=0)
            hosts.append(
                HostSettings(
                    HostAddress.parse(v.text("host", ""), f"{where}.host"),
                    v.integer("max_parallel", default_parallel, minimum=1),
                    v.optional_remote_path("remote_dir"),
                    gpus,
                )
            )
        else:
            raise ConfigError(f"{where} must be a host name or a mapping {{host: ..., max_parallel: N}}, got {item!r}")
    labels = [h.address.label for h in hosts]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"{key} names {dupes} more than once: give each host once, with its max_parallel")
    return tuple(hosts)


def _check_gpus(settings: RemoteSSHSettings, prefix: str) -> None:
    """Per-job GPU counts need each host's GPU count; a fixed ``gpus_per_job`` must fit every host
    whose count is known."""
    for i, host in enumerate(settings.hosts):
        if settings.per_job_gpus and host.gpus is None:
            raise ConfigError(
                f"{prefix}.resources_from.gpus_per_job needs the GPU count of every host: set {prefix}.gpus "
                f"(all hosts) or {prefix}.hosts[{i}].gpus for {host.address.label}"
            )
        if not settings.per_job_gpus and host.gpus is not None and settings.gpus_per_job > host.gpus:
            raise ConfigError(
                f"{prefix}.gpus_per_job={settings.gpus_per_job} but {host.address.label} has "
                f"{host.gpus} GPUs ({prefix}.hosts[{i}].gpus or {prefix}.gpus)"
            )


def _parse_container(value: Any, key: str) -> Container | None:
    """The ``container`` setting, validated like slurm's (:func:`container_from_config`).

    On a host the image must be an absolute path, ``~/PATH`` (the home there) or a URI the
    runtime fetches itself (``docker://...``): a relative path would depend on the job's cwd.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)  # the schema's defaults (ContainerConf), as in unit tests
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping (image, runtime, binds, ...), got {value!r}")
    spec = container_from_config(value, key)
    if spec is not None and not is_uri(spec.image) and not spec.image.startswith(("/", "~/")):
        raise ConfigError(
            f"{key}.image must be an absolute path on the host, ~/PATH (your home there) or a URI "
            f"(docker://...), got {spec.image!r}"
        )
    return spec


def is_uri(image: str) -> bool:
    return "://" in image
