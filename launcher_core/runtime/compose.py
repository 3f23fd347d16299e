"""Compose job configs for a sweep with as few full Hydra compositions as possible.

Hydra composes every job config from scratch (``load_sweep_config``: search path, defaults
tree, merging of every YAML file), at ~100 ms per job. In a sweep most jobs differ from each
other only by plain value overrides (``lr=0.1``), which Hydra applies *after* composition, in
order, with ``ConfigLoaderImpl._apply_overrides_to_config``. So jobs that share every other
override (config group choices, hydra overrides, deletions) share the composed config up to
that point. We compose that "template" once per distinct set of structural overrides and
replay exactly Hydra's last steps on a copy for each job: apply the value overrides, record
``hydra.overrides.task`` and recompute ``hydra.job.override_dirname``.
``tests/test_compose.py`` proves the result equals Hydra's own composition node for node.

Per job this costs ~1-3 ms instead of ~100 ms. The copy of the template is the dominant part:
it is a ``pickle.loads`` of the template pickled once (~5x faster than ``copy.deepcopy`` of a
DictConfig); the pickled copy is checked once per template to be identical to the template
(node types, metadata, flags, values, parents), else deepcopy is used for that template.

Hydra's ``BasicSweeper`` also composes every job once more in ``validate_batch_is_legal``,
through ``hydra_context.config_loader``; :func:`use_fast_sweep_composition` swaps that loader for
a :class:`ComposingConfigLoader` whose ``load_sweep_config`` uses the same fast composer.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import re
import sys
from collections.abc import Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.types import HydraContext, RunMode
from omegaconf import AnyNode, DictConfig, ListConfig, OmegaConf, StringNode, open_dict, read_write

_INTERPOLATION = re.compile(r"\$\{([^${}\\]*)\}")
# the part of an override before its value, when it is a plain (+/++)key(@package)= with nothing to escape
_PLAIN_PREFIX = re.compile(r"^(\+{0,2})[A-Za-z_][A-Za-z0-9_.]*(@[A-Za-z_][A-Za-z0-9_.]*)?=")
# values Hydra's override grammar reads as one token of this type (a strict subset of its INT,
# FLOAT and ID rules: no "_" separators, no "1." or ".5", no "-" in names)
_INT_VALUE = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT_VALUE = re.compile(r"[+-]?(0|[1-9][0-9]*)(\.[0-9]+([eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)")
_NAME_VALUE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# unquoted text of several tokens that Hydra's grammar joins into one string unchanged: one of
# "/%*@?|" (a token of its own) among names, numbers and "-+._" (no spaces, escapes, "$" or ":")
_JOINED_VALUE = re.compile(r"[A-Za-z0-9_\-+.]*[/%*@?|][A-Za-z0-9_\-+./%*@?|]*")
_KEYWORDS = frozenset({"true", "false", "null", "inf", "nan"})  # tokens of their own in the grammar
_SETTING_TYPES = (OverrideType.CHANGE, OverrideType.ADD, OverrideType.FORCE_ADD)
_PER_JOB_KEYS = ("hydra.job.num", "hydra.job.id")  # set by set_job_identity on the probe too
_JOB_DEPENDENT_PREFIXES = ("hydra.overrides", "hydra.job.override_dirname")


def _sweep_dirs_are_job_independent(cfg: DictConfig) -> bool:
    """Whether ``hydra.sweep.dir`` and ``subdir`` refer only to the job's number and id,
    ``${now:...}`` and ``hydra.*`` keys holding plain text: nothing a value override or the
    job's override list can change. Anything else (another resolver, a relative or nested
    interpolation, an escape) counts as dependent."""
    for key in ("dir", "subdir"):
        raw = _raw_value(cfg, f"hydra.sweep.{key}")
        if not isinstance(raw, str) or "\\" in raw:
            return False
        if "${" in _INTERPOLATION.sub("", raw):
            return False
        if not all(_is_job_independent_reference(cfg, ref) for ref in _INTERPOLATION.findall(raw)):
            return False
    return True


def _numbered_subdir(cfg: DictConfig) -> bool:
    """``subdir`` is exactly ``${hydra.job.num}`` and ``dir`` does not use the job's number or id."""
    refs = _INTERPOLATION.findall(str(_raw_value(cfg, "hydra.sweep.dir")))
    return _raw_value(cfg, "hydra.sweep.subdir") == "${hydra.job.num}" and not any(
        r.strip() in _PER_JOB_KEYS for r in refs
    )


def _is_job_independent_reference(cfg: DictConfig, ref: str) -> bool:
    ref = ref.strip()
    if ref.startswith("now:"):
        return True
    if ref in _PER_JOB_KEYS:
        return True
    if not ref.startswith("hydra.") or ref.startswith(_JOB_DEPENDENT_PREFIXES) or ":" in ref:
        return False
    raw = _raw_value(cfg, ref)
    return isinstance(raw, (str, int, float)) and "${" not in str(raw)


def _raw_value(cfg: DictConfig, dotted: str) -> Any:
    """The unresolved value at ``dotted`` (None if there is no such leaf)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
    return None if isinstance(node, (DictConfig, ListConfig)) else node._value()


NOT_PLAIN = object()  # plain_value: the text is not one plain token


def plain_value(text: str) -> Any:
    """What Hydra's override grammar makes of ``text`` when it is one plain INT, FLOAT or ID
    token, or plain text of several tokens such as a path (see the regexes above);
    ``NOT_PLAIN`` for anything else."""
    if len(text) >= 2 and _JOINED_VALUE.fullmatch(text):
        return text
    if _INT_VALUE.fullmatch(text):
        return int(text)
    if _FLOAT_VALUE.fullmatch(text):
        return float(text)
    if _NAME_VALUE.fullmatch(text) and text.lower() not in _KEYWORDS:
        return text
    return NOT_PLAIN


def _prefix_of(override: Override) -> str:
    """The plain ``(+/++)key(@package)=`` prefix an override of this type, key and package has."""
    marks = "++" if override.is_force_add() else "+" if override.is_add() else ""
    package = f"@{override.package}" if override.package is not None else ""
    return f"{marks}{override.key_or_group}{package}="


def _coverage_key(override: Override, template: _Template) -> Any:
    """What a value override's validity depends on besides the template: its kind, key and
    package, and its value's type (ints, floats that are whole, other floats, bools, nulls;
    strings without interpolation, where the key is new or holds a string or untyped value);
    other strings and anything else count by their exact text. See :meth:`SweepComposer.check`."""
    value = override._value
    if isinstance(value, bool) or value is None:
        kind: Any = type(value).__name__
    elif isinstance(value, int):
        kind = "int"
    elif isinstance(value, float):
        kind = ("float", value.is_integer())
    elif isinstance(value, str) and "${" not in value and template.takes_any_text(override):
        kind = "text"
    else:
        kind = ("text", override.input_line)
    return (override.type, override.key_or_group, override.package, kind)


def _takes_any_text(cfg: DictConfig, key: str) -> bool:
    """Whether any string is as valid as another at ``key``: the key is new (adding it fails or
    works alike for every string) or holds a string or untyped value. Not an Enum, a number or
    bool (``"red"`` may be valid where ``"pink"`` is not), nor a container or list element."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return False
        try:
            node = node._get_node(part, validate_access=False)
        except Exception:  # noqa: BLE001 - a key OmegaConf cannot look up: count by exact text
            return False
        if node is None:
            return True
    return isinstance(node, (AnyNode, StringNode))


def _overrides_dirname(cfg: DictConfig, app_overrides: Sequence[Override]) -> str:
    from hydra._internal.config_loader_impl import get_overrides_dirname

    dirname_cfg = cfg.hydra.job.config.override_dirname
    return get_overrides_dirname(
        overrides=list(app_overrides),
        kv_sep=dirname_cfg.kv_sep,
        item_sep=dirname_cfg.item_sep,
        exclude_keys=dirname_cfg.exclude_keys,
    )


def same_tree(a: Any, b: Any) -> bool:
    """True if two OmegaConf trees are identical node for node: node classes, metadata (ref and
    object types, key, flags, optional), content (``None``/``???``/interpolation strings or
    children, in order) and parent links inside each tree."""
    if type(a) is not type(b) or a.__dict__["_metadata"] != b.__dict__["_metadata"]:
        return False
    if not isinstance(a, (DictConfig, ListConfig)):
        value_a, value_b = a._value(), b._value()
        return type(value_a) is type(value_b) and value_a == value_b
    content_a, content_b = a.__dict__["_content"], b.__dict__["_content"]
    if isinstance(content_a, dict) and isinstance(content_b, dict):
        if list(content_a) != list(content_b):
            return False
        children = zip(content_a.values(), content_b.values())
    elif isinstance(content_a, list) and isinstance(content_b, list):
        if len(content_a) != len(content_b):
            return False
        children = zip(content_a, content_b)
    else:  # None, "???" or an interpolation string
        return type(content_a) is type(content_b) and content_a == content_b
    return all(x._get_parent() is a and y._get_parent() is b and same_tree(x, y) for x, y in children)


class _Template:
    """A composed config that job configs are copied from."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.blob: bytes | None = None
        self.checked_values: set[Any] = set()  # coverage keys of value overrides replayed on it (see check)
        self.dir_probe: DictConfig | None = None  # see SweepComposer.output_dir
        self.dir_probe_checked = False
        self._takes_any_text: dict[str, bool] = {}
        self.numbered_sweep_dir: str | None = None  # set when the output dir is just <dir>/<job.num>
        try:
            blob = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
            if same_tree(cfg, pickle.loads(blob)):
                self.blob = blob
        except Exception:  # noqa: BLE001 - e.g. a structured config class pickle cannot find
            self.blob = None

    def takes_any_text(self, override: Override) -> bool:
        """:func:`_takes_any_text` at the override's key (an override with a package: no)."""
        if override.package is not None or override.type not in _SETTING_TYPES:
            return False
        key = override.key_or_group
        if key not in self._takes_any_text:
            self._takes_any_text[key] = _takes_any_text(self.cfg, key)
        return self._takes_any_text[key]

    def copy(self) -> DictConfig:
        if self.blob is not None:
            return pickle.loads(self.blob)
        return copy.deepcopy(self.cfg)


class SweepComposer:
    """Composes the config of each job exactly as ``ConfigLoader.load_sweep_config`` would.

    On the job side (:meth:`for_node`) it has no config loader: it replays value overrides on
    the templates composed at launch (:meth:`node_state`), which is all a job needs.
    """

    def __init__(self, hydra_context: HydraContext | None, master_config: DictConfig | None) -> None:
        loader = hydra_context.config_loader if hydra_context is not None else None
        self._loader = loader.inner if isinstance(loader, ComposingConfigLoader) else loader
        self._master = master_config
        self._master_cache: dict[str, Any] | None = None  # on the node: the master config's resolver cache
        self._parser = OverridesParser.create(config_loader=self._loader)
        self._templates: dict[tuple[str, ...], _Template] = {}
        self._group_cache: dict[str, bool] = {}
        self._parsed: dict[str, tuple[Override, bool]] = {}
        self._siblings: dict[str, tuple[Override, bool]] = {}  # plain prefix -> an override parsed with it
        self._composed: set[tuple[str, ...]] = set()  # override lists that composed without error
        self.full_compositions = 0
        self.replays = 0  # job configs composed (a template copied and its value overrides replayed)

    def node_state(self) -> dict[str, Any]:
        """What the job side needs to compose any job of this sweep without Hydra's config
        loader: the templates (one per set of structural overrides), which override keys are
        config groups, and the master config's resolver cache (``${now:...}`` resolves as here)."""
        assert self._master is not None
        return {
            "templates": {key: t.cfg for key, t in self._templates.items()},
            "groups": dict(self._group_cache),
            "cache": OmegaConf.get_cache(self._master),
        }

    @classmethod
    def for_node(cls, state: dict[str, Any]) -> SweepComposer:
        """A composer on the job side, from :meth:`node_state`."""
        composer = cls(None, None)
        composer._templates = {tuple(k): _Template(cfg) for k, cfg in state["templates"].items()}
        composer._group_cache = dict(state["groups"])
        composer._master_cache = state["cache"]
        return composer

    def _is_group(self, key: str) -> bool:
        if key not in self._group_cache:
            if self._loader is None:
                raise ValueError(f"override key {key!r} was not seen when the sweep was launched")
            repo = getattr(self._loader, "repository", None)
            self._group_cache[key] = bool(repo is not None and repo.group_exists(key))
        return self._group_cache[key]

    def _is_value_override(self, override: Override) -> bool:
        """True for overrides Hydra applies after composition and that we can replay."""
        if override.is_hydra_override() or override.is_delete() or override.is_sweep_override():
            return False
        return isinstance(override.value(), dict) or not self._is_group(override.key_or_group)

    def _parse(self, overrides: Sequence[str]) -> list[tuple[Override, bool]]:
        """Parsed overrides (cached per string: a grid repeats each one in many jobs) and
        whether each is a value override. ``Override.value()`` builds a fresh value on every
        call, so sharing parsed overrides between jobs shares no mutable state."""
        parsed = []
        for text in overrides:
            entry = self._parsed.get(text)
            if entry is None:
                entry = self._parse_like_sibling(text)
            if entry is None:
                (override,) = self._parser.parse_overrides([text])
                entry = (override, self._is_value_override(override))
                if override.value_type == ValueType.ELEMENT and not override.is_delete():
                    match = _PLAIN_PREFIX.match(text)
                    if match and match.group(0) == _prefix_of(override):
                        self._siblings.setdefault(match.group(0), entry)
            self._parsed[text] = entry
            parsed.append(entry)
        return parsed

    def _parse_like_sibling(self, text: str) -> tuple[Override, bool] | None:
        """``key=VALUE`` parsed without Hydra's (ANTLR, ~0.5 ms) parser when an override with the
        same plain prefix was parsed by it before and VALUE is a plain int, float or name: the
        same override with the value Hydra's grammar gives such a token. A sweep over
        ``seed=range(10000)`` parses 10,000 overrides; ``tests/test_compose.py`` checks this
        against Hydra's parser."""
        match = _PLAIN_PREFIX.match(text)
        sibling = self._siblings.get(match.group(0)) if match else None
        if sibling is None:
            return None
        assert match is not None
        value = plain_value(text[match.end() :])
        if value is NOT_PLAIN:
            return None
        return dataclasses.replace(sibling[0], _value=value, input_line=text), sibling[1]

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self._parse(overrides)
        template = self._template(parsed)
        cfg = self._replay(template, parsed)
        self.replays += 1
        self._composed.add(tuple(overrides))
        template.checked_values.update(_coverage_key(o, template) for o, is_value in parsed if is_value)
        return cfg

    def check(self, overrides: Sequence[str]) -> None:
        """Raise what composing this job raises, composing it only if it has something new.

        A job is composed (its template fully, then its value overrides replayed) unless its
        template composed before and each of its value overrides is *like* one replayed on
        that template without error in another job: same key, package and kind of override,
        and a value of the same type (any int like any int, floats by whether they are whole;
        any string like any string at a new key or one holding a string or untyped value;
        other strings, lists and dicts only by their exact text). ``seed=range(10000)``
        composes one job, as do 10,000 distinct paths at ``+data=``; a grid of N x M names
        N + M at Enum keys. What this can miss, and the job then fails where it
        composes its config, with Hydra's error in its log: an int valid for an Enum field
        where another int is not, and a value valid alone but not together with another
        value of the same job (``a=null`` with ``a.b=1``).
        """
        key = tuple(overrides)
        if key in self._composed:
            return
        parsed = self._parse(overrides)
        template = self._template(parsed)
        if all(_coverage_key(o, template) in template.checked_values for o, is_value in parsed if is_value):
            self._composed.add(key)
            return
        self.compose(overrides)

    def template_of(self, overrides: Sequence[str]) -> DictConfig:
        """The (shared, not to be changed) template a job's config is copied from."""
        return self._template(self._parse(overrides)).cfg

    def value_overrides(self, overrides: Sequence[str]) -> list[Override]:
        """The job's value overrides, parsed (what is replayed on its template)."""
        return [o for o, is_value in self._parse(overrides) if is_value]

    def _template(self, parsed: list[tuple[Override, bool]]) -> _Template:
        structural = tuple(o.input_line for o, is_value in parsed if not is_value)
        template = self._templates.get(structural)
        if template is None:
            if self._loader is None:
                raise ValueError(f"no config was composed at launch for the overrides {list(structural)}")
            template = _Template(self._full_compose(list(structural)))
            self._templates[structural] = template
        return template

    def output_dir(self, overrides: Sequence[str], idx: int) -> str | None:
        """The job's output dir without composing its config again, or None when that is not
        known to be exact.

        Exact when this override list composed without error before (Hydra's
        ``validate_batch_is_legal`` composes every job just before the launch) and the
        template's ``hydra.sweep.dir``/``subdir`` cannot depend on what differs between its
        jobs (value overrides, ``hydra.overrides.task``, ``override_dirname``): then they
        resolve on a copy of the template numbered like the job exactly as on the job's config.
        """
        if tuple(overrides) not in self._composed:
            return None
        template = self._template(self._parse(overrides))
        if not template.dir_probe_checked:
            template.dir_probe_checked = True
            probe = template.copy()
            self._copy_cache(probe)
            template.dir_probe = probe if _sweep_dirs_are_job_independent(probe) else None
            if template.dir_probe is not None and _numbered_subdir(probe):
                set_job_identity(probe, 0)
                template.numbered_sweep_dir = os.path.dirname(job_output_dir(probe))
        if template.dir_probe is None:
            return None
        if template.numbered_sweep_dir is not None:  # Hydra's default subdir: no resolving per job
            return os.path.abspath(os.path.join(template.numbered_sweep_dir, str(idx)))
        set_job_identity(template.dir_probe, idx)
        return job_output_dir(template.dir_probe)

    def _full_compose(self, overrides: list[str]) -> DictConfig:
        assert self._loader is not None and self._master is not None
        self.full_compositions += 1
        return self._loader.load_sweep_config(self._master, overrides)

    def _copy_cache(self, cfg: DictConfig) -> None:
        """Give ``cfg`` the master config's resolver cache, as ``load_sweep_config`` does."""
        if self._master is not None:
            OmegaConf.copy_cache(from_config=self._master, to_config=cfg)
        elif self._master_cache is not None:
            OmegaConf.set_cache(cfg, self._master_cache)

    def _replay(self, template: _Template, parsed: list[tuple[Override, bool]]) -> DictConfig:
        cfg = template.copy()
        self._copy_cache(cfg)
        value_overrides = [o for o, is_value in parsed if is_value]
        if not value_overrides:
            return cfg
        ConfigLoaderImpl._apply_overrides_to_config(value_overrides, cfg)
        app_overrides = [o for o, _ in parsed if not o.is_hydra_override()]
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in app_overrides]
            cfg.hydra.job.override_dirname = _overrides_dirname(cfg, app_overrides)
        return cfg


class ComposingConfigLoader(ConfigLoader):
    """A config loader whose ``load_sweep_config`` composes with a :class:`SweepComposer`.

    Everything else goes to the wrapped loader. It pickles as the wrapped loader, so a Hydra
    context shipped to a remote worker carries neither the composer nor its templates.
    """

    def __init__(self, inner: ConfigLoader) -> None:
        self.inner = inner
        self._composer: SweepComposer | None = None

    def composer_for(self, master_config: DictConfig) -> SweepComposer:
        """The shared composer of ``master_config`` (a new one for another master config)."""
        if self._composer is None or self._composer._master is not master_config:
            self._composer = SweepComposer(HydraContext(config_loader=self.inner, callbacks=None), master_config)
        return self._composer

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        composer = self.composer_for(master_config)
        if _called_by_batch_validation():
            # Sweeper.validate_batch_is_legal only wants the error, once per job of the batch:
            # check (composing only jobs with something new) and hand back the job's template,
            # which it discards. Every other caller gets the job's own config.
            composer.check(sweep_overrides)
            return composer.template_of(sweep_overrides)
        return composer.compose(list(sweep_overrides))

    def load_configuration(
        self,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        return self.inner.load_configuration(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)

    def get_search_path(self) -> Any:
        return self.inner.get_search_path()

    def get_sources(self) -> Any:
        return self.inner.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.inner.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.inner.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, config_name: str | None, overrides: list[str], run_mode: RunMode) -> Any:
        return self.inner.compute_defaults_list(config_name, overrides, run_mode)

    def __getattr__(self, name: str) -> Any:  # repository, config_search_path, ...
        if name == "inner":  # not set yet (unpickling, copying)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __reduce__(self) -> Any:
        return (_identity, (self.inner,))


def _identity(obj: Any) -> Any:
    return obj


def _called_by_batch_validation() -> bool:
    """Whether our caller's caller is Hydra's ``Sweeper.validate_batch_is_legal`` itself."""
    from hydra.plugins.sweeper import Sweeper

    return sys._getframe(2).f_code is Sweeper.validate_batch_is_legal.__code__


def use_fast_sweep_composition(hydra_context: HydraContext) -> ComposingConfigLoader:
    """Make ``hydra_context.config_loader.load_sweep_config`` use the fast composer.

    Hydra hands the same ``HydraContext`` to the sweeper and to the launcher it instantiates,
    so calling this in ``Launcher.setup`` also speeds up ``BasicSweeper.validate_batch_is_legal``
    (one ~100 ms composition per job otherwise). Idempotent.
    """
    loader = hydra_context.config_loader
    if not isinstance(loader, ComposingConfigLoader):
        loader = ComposingConfigLoader(loader)
        hydra_context.config_loader = loader
    return loader


def composer_for(hydra_context: HydraContext, master_config: DictConfig) -> SweepComposer:
    """The composer to use for a batch: shared with the sweeper's validation when
    :func:`use_fast_sweep_composition` was called (so templates are composed once), else new."""
    loader = hydra_context.config_loader
    if isinstance(loader, ComposingConfigLoader):
        return loader.composer_for(master_config)
    return SweepComposer(hydra_context, master_config)


def compose_job(composer: SweepComposer, overrides: Sequence[str], idx: int) -> DictConfig:
    """A job's config as ``run_job`` gets it: composed, numbered, ``cfg.hydra`` read-only."""
    cfg = composer.compose(list(overrides))
    set_job_identity(cfg, idx)
    OmegaConf.set_readonly(cfg.hydra, True)
    return cfg


def job_output_dir(cfg: DictConfig) -> str:
    """The output dir ``run_job`` will use for this config (sweep dir / evaluated subdir).

    ``run_job`` evaluates it after ``HydraConfig.set_config(cfg)``, which makes ``cfg.hydra``
    read-only and points ``${hydra:...}`` at a masked deep copy of ``cfg.hydra`` whose parent
    is ``cfg`` (~8 ms). The copy resolves exactly like ``cfg.hydra`` itself, so point
    ``HydraConfig`` at ``cfg`` for the evaluation instead, keeping the read-only flag.
    """
    from hydra.core.hydra_config import HydraConfig

    OmegaConf.set_readonly(cfg.hydra, True)
    hydra_cfg = HydraConfig.instance()
    previous: Any = hydra_cfg.cfg
    hydra_cfg.cfg = cfg  # type: ignore[assignment]  # HydraConfig.get() -> cfg.hydra
    try:
        sweep_dir = str(OmegaConf.select(cfg, "hydra.sweep.dir"))
        subdir = str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    finally:
        hydra_cfg.cfg = previous
    return os.path.abspath(os.path.join(sweep_dir, subdir))


def set_job_identity(cfg: Any, idx: int) -> None:
    """Set ``hydra.job.num`` and ``hydra.job.id`` the way Hydra's launchers do (a no-op when
    they are set already: writing an OmegaConf node costs ~10x reading it)."""
    from omegaconf import OmegaConf, open_dict, read_write

    job = cfg.hydra.job
    num, job_id = OmegaConf.select(job, "num", default=None), OmegaConf.select(job, "id", default=None)
    if num == idx and job_id == f"{job.name}_{idx}":
        return
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
        cfg.hydra.job.num = idx
