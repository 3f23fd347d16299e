"""``launcher-core cluster list|show|add|test|remove``: cluster presets as first-class things.

A preset is a Hydra config of the ``cluster`` group (``+cluster=NAME``). They come from three
places, first match wins: the project's own ``conf/cluster/`` (the app's config dir), the user's
``$XDG_CONFIG_HOME/hydra-remote-launcher/cluster/`` (written by ``add``) and the ones shipped with
the package (the repository's ``conf/cluster/``); Hydra finds the last two through
:mod:`launcher_core.presets`. ``add`` validates with the launcher's own
settings checks, ``test`` runs the backend's pre-flight (:mod:`launcher_core.preflight`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher_core.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SOURCES = ("project", "user", "shipped")


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    source: str  # project | user | shipped


def user_dir() -> Path:
    from launcher_core.presets import user_config_dir

    return user_config_dir() / "cluster"


def shipped_dir() -> Path:
    from launcher_core.presets import SHIPPED_DIR

    return SHIPPED_DIR / "cluster"


def _dirs(project: Path | None) -> list[tuple[str, Path]]:
    project_dir = (project or Path.cwd() / "conf") / "cluster"
    return [("project", project_dir), ("user", user_dir()), ("shipped", shipped_dir())]


def all_presets(project: Path | None = None) -> dict[str, list[Preset]]:
    """Every preset by name, in precedence order (the first one is what ``+cluster=NAME`` uses)."""
    found: dict[str, list[Preset]] = {}
    for source, folder in _dirs(project):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, []).append(Preset(path.stem, path, source))
    return dict(sorted(found.items()))


def resolve(name: str, project: Path | None = None) -> Preset:
    presets = all_presets(project)
    if name not in presets:
        known = ", ".join(presets) or "none"
        raise ConfigError(f"no cluster preset {name!r}; known: {known} (see `launcher-core cluster list`)")
    return presets[name][0]


def load(preset: Preset) -> Any:
    """The preset as an OmegaConf DictConfig (not resolved)."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(preset.path)
    except Exception as exc:  # noqa: BLE001 - a YAML error in a user's file: name the file
        raise ConfigError(f"cluster {preset.name}: cannot read {preset.path}: {exc}") from exc
    return cfg


def launcher_of(cfg: Any, name: str) -> str:
    """The launcher a preset selects (its ``override /hydra/launcher: X`` default)."""
    for entry in cfg.get("defaults") or []:
        if isinstance(entry, Mapping) or hasattr(entry, "items"):
            for key, value in entry.items():
                if str(key).replace("override", "").strip().lstrip("/") == "hydra/launcher":
                    return str(value)
    raise ConfigError(f"cluster {name}: its defaults list selects no launcher (- override /hydra/launcher: ...)")


def launcher_params(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, "hydra.launcher", default=None)
    return {} if node is None else dict(OmegaConf.to_container(node, resolve=False))  # type: ignore[arg-type]


def validate(launcher: str, params: Mapping[str, Any], name: str) -> Any:
    """The launcher's validated settings (the same checks as a launch); ConfigError names the key."""
    from launcher_core.backends.registry import descriptors

    found = descriptors().get(launcher)
    if found is None:
        known = ", ".join(sorted(descriptors()))
        raise ConfigError(f"cluster {name}: unknown launcher {launcher!r} ({known})")
    try:
        return found.settings(params)
    except ConfigError as exc:
        raise ConfigError(f"cluster {name}: {exc}") from exc


def backend_for(launcher: str, settings: Any) -> Any:
    """A backend that can run the pre-flight (no task function: it submits nothing), or None."""
    from launcher_core.backends.registry import descriptor

    return descriptor(launcher).for_preflight(settings)


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """``key=value`` pairs (YAML values) onto the preset; a key without ``hydra.`` is under
    ``hydra.launcher``."""
    from omegaconf import OmegaConf

    dotlist = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r} is not key=value (e.g. partition=gpu or 'hosts=[gpu1]')")
        key = key.strip()
        dotlist.append(f"{key if key.startswith('hydra.') else 'hydra.launcher.' + key}={value}")
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except Exception as exc:  # noqa: BLE001 - a malformed value: say which
        raise ConfigError(f"cannot apply {' '.join(overrides)}: {exc}") from exc


def checked_preset(
    name: str, overrides: Sequence[str], project: Path | None, label: str | None = None
) -> tuple[Any, str, Any]:
    """(config with overrides, launcher, validated settings) of a preset; errors say ``label``."""
    preset = resolve(name, project)
    cfg = apply_overrides(load(preset), overrides)
    launcher = launcher_of(cfg, label or name)
    return cfg, launcher, validate(launcher, launcher_params(cfg), label or name)


# --- commands ----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cluster presets (+cluster=NAME); the first source found wins")
    for col in ("name", "launcher", "source", "path"):
        table.add_column(col, overflow="fold")
    for name, presets in all_presets(_project(args)).items():
        first = presets[0]
        try:
            launcher = launcher_of(load(first), name)
        except ConfigError as exc:
            launcher = f"[red]{exc}[/]"
        hidden = ", ".join(p.source for p in presets[1:])
        source = first.source + (f" (over {hidden})" if hidden else "")
        table.add_row(name, launcher, source, str(first.path))
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    preset = resolve(args.name, _project(args))
    print(f"# {preset.source}: {preset.path}")
    sys.stdout.write(preset.path.read_text())
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    if not _NAME.match(args.name):
        raise ConfigError(f"cluster name {args.name!r}: use letters, digits, '_', '-', '.' (as in +cluster=NAME)")
    from omegaconf import OmegaConf

    source, *overrides = args.source  # --from PRESET [key=value ...]
    label = f"{args.name} (from {source})"
    cfg, launcher, _settings = checked_preset(source, [*overrides, *args.overrides], _project(args), label)
    target = user_dir() / f"{args.name}.yaml"
    if target.exists() and not args.force:
        raise ConfigError(f"cluster {args.name} exists ({target}); use --force to replace it")
    header = (
        "# @package _global_\n"
        f"# Added with `launcher-core cluster add {args.name} --from {source}`; use it: +cluster={args.name}\n"
    )
    _write_atomic(target, header + OmegaConf.to_yaml(cfg))
    print(f"cluster {args.name} ({launcher}) written to {target}")
    print(f"check its hosts with: launcher-core cluster test {args.name}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    target = user_dir() / f"{args.name}.yaml"
    if not target.exists():
        where = {p.source: p.path for p in all_presets(_project(args)).get(args.name, [])}
        if where:
            first = next(iter(where))
            raise ConfigError(f"cluster {args.name} is not a personal preset: it is {first} ({where[first]})")
        raise ConfigError(f"no personal cluster {args.name} in {user_dir()}")
    target.unlink()
    print(f"removed {target}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from launcher_core.preflight import PreflightRequest, print_table

    _cfg, launcher, settings = checked_preset(args.name, args.overrides, _project(args))
    backend = backend_for(launcher, settings)
    if backend is None:
        print(f"cluster {args.name} ({launcher}): nothing to check, jobs run on this machine")
        return 0
    try:
        rows = backend.preflight(PreflightRequest(n_jobs=None, deep=args.deep))
    finally:
        backend.close()
    print_table(rows, title=f"pre-flight of cluster {args.name} ({launcher})")
    failed = [r for r in rows if not r.ok]
    if failed:
        print(f"{len(failed)} check(s) failed", file=sys.stderr)
        return 1
    return 0


def _project(args: argparse.Namespace) -> Path | None:
    return Path(args.conf) if getattr(args, "conf", None) else None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


CONF_HELP = "the app's config dir (default: ./conf); its cluster/ wins"


def add_parser(sub: Any) -> None:
    """``launcher-core cluster ...`` (called from :func:`launcher_core.cli.build_parser`).

    ``--conf DIR`` is accepted before the action (``cluster --conf DIR list``) and after it
    (``cluster list --conf DIR``)."""
    cluster = sub.add_parser("cluster", help="cluster presets: list, show, add, test, remove")
    cluster.add_argument("--conf", help=CONF_HELP)
    csub = cluster.add_subparsers(dest="cluster_command", required=True)
    _action(csub, "list", "every preset and where it comes from", cmd_list)
    show = _action(csub, "show", "print a preset", cmd_show)
    show.add_argument("name")
    add = _action(csub, "add", "write a personal preset from another one, validated", cmd_add)
    add.add_argument("name")
    add.add_argument(
        "--from",
        dest="source",
        required=True,
        nargs="+",
        metavar=("PRESET", "key=value"),
        help="the preset to start from, then settings under hydra.launcher (YAML values)",
    )
    add.add_argument("overrides", nargs="*", metavar="key=value", help="settings under hydra.launcher (YAML values)")
    add.add_argument("--force", action="store_true", help="replace a personal preset of that name")
    test = _action(csub, "test", "pre-flight check of a preset's hosts; non-zero exit on a failure", cmd_test)
    test.add_argument("name")
    test.add_argument("overrides", nargs="*", metavar="key=value", help="try other settings without saving them")
    test.add_argument("--deep", action="store_true", help="slurm: also run a tiny job on a compute node")
    remove = _action(csub, "remove", "delete a personal preset", cmd_remove)
    remove.add_argument("name")


def _action(csub: Any, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
    """One ``cluster`` action; it takes ``--conf`` too (SUPPRESS: an absent one keeps the value
    given before the action)."""
    parser: argparse.ArgumentParser = csub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--conf", default=argparse.SUPPRESS, help=CONF_HELP)
    parser.set_defaults(func=func)
    return parser
