"""``hydra.launcher.sbatch_template``: a site's Jinja2 template for the batch script.

The template extends ours (:data:`BASE_NAME`), whose blocks are the script's parts
(:data:`~launcher_core.backends.slurm.syntax.BLOCKS`), and overrides only what the site needs,
usually with ``{{ super() }}`` to keep ours. It renders in Jinja2's sandbox with ``StrictUndefined``
(a misspelt variable is an error, not an empty string). The result must still be ours where it
matters (:func:`check_rendered`): the shebang, every ``#SBATCH`` line of ours before the first
command, no extra ``#SBATCH`` line for an option the launcher owns, our SIGUSR2 traps and no
other, the job dir, and the run block (requeue handler, worker command, exit code) verbatim.
Override values never reach a template: only paths, resources and the blocks do.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from launcher_core.backends.slurm.syntax import BLOCKS, abbreviates
from launcher_core.errors import ConfigError

KEY = "hydra.launcher.sbatch_template"
BASE_NAME = "hydra_remote_launcher.sbatch.j2"
# options whose #SBATCH line the launcher writes and a template may not add again (sbatch takes the
# last one): the array and its files, the time limit and signal the requeue handler counts on
RESERVED_OPTIONS = ("array", "output", "error", "chdir", "signal", "time", "no-requeue", "open-mode")
_SHORT = {"a": "array", "o": "output", "e": "error", "D": "chdir", "t": "time"}  # sbatch's short forms
_SBATCH = re.compile(r"^#SBATCH\s+(--?)([A-Za-z][A-Za-z0-9_-]*)")
_USR2_TRAP = re.compile(r"\btrap\b.*\b(USR2|SIGUSR2|12)\b")


def template_path(value: Any) -> str:
    """The setting, checked: an existing file, made absolute (it is read at launch)."""
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ConfigError(f"{KEY} must be the path of a Jinja2 template file, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{KEY}: {value!r} is not a file (a relative path is taken from {os.getcwd()})")
    return str(path.resolve())


def _jinja() -> Any:
    try:
        import jinja2
        import jinja2.sandbox
    except ImportError as exc:
        raise ConfigError(
            f"{KEY} needs Jinja2: pip install 'hydra-remote-launcher[template]' (or jinja2>=3)"
        ) from exc
    return jinja2


def _base_source() -> str:
    return "".join(f"{{% block {name} %}}{{{{ parts.{name} }}}}{{% endblock %}}" for name in BLOCKS)


@lru_cache(maxsize=8)
def _compiled(path: str, mtime_ns: int) -> Any:
    """The site template compiled once per file version (``mtime_ns`` is the cache key)."""
    jinja2 = _jinja()
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    loader = jinja2.ChoiceLoader(
        [jinja2.DictLoader({BASE_NAME: _base_source()}), jinja2.FileSystemLoader(os.path.dirname(path))]
    )
    env = ImmutableSandboxedEnvironment(
        loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    try:
        return env.get_template(os.path.basename(path))
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{KEY} ({path}): {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    return f"{type(exc).__name__}{f' on line {line}' if line else ''}: {exc}"


def render_template(path: str, parts: Mapping[str, str], variables: Mapping[str, Any]) -> str:
    """Render the site template with our blocks (``parts``) and ``variables``; check the result."""
    jinja2 = _jinja()
    try:
        template = _compiled(path, os.stat(path).st_mtime_ns)
    except OSError as exc:
        raise ConfigError(f"{KEY}: cannot read {path}: {exc}") from exc
    try:
        text = template.render(parts=dict(parts), **variables)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{KEY} ({path}): {_describe(exc)}") from exc
    check_rendered(path, text, parts)
    return text


def check_rendered(path: str, text: str, parts: Mapping[str, str]) -> None:
    """Refuse a rendered script that lost or overrides what the launcher relies on."""

    def refuse(what: str) -> ConfigError:
        return ConfigError(
            f"{KEY} ({path}): the rendered script {what}; override other blocks, or keep ours with "
            "{{ super() }} (docs/slurm.md, 'sbatch_template')"
        )

    if not text.startswith(parts["shebang"]):
        raise refuse(f"must start with {parts['shebang'].strip()!r}")
    header = _leading_comments(text)
    ours = [line for line in parts["sbatch"].splitlines() if line]
    for line in ours:
        if line not in header:
            raise refuse(f"must keep the launcher's {line!r} among the #SBATCH lines before the first command")
    for line in header:
        match = _SBATCH.match(line)
        owned = match and line not in ours and _reserved(match.group(1), match.group(2))
        if owned:
            raise refuse(f"sets {line!r}: the launcher owns --{owned}")
    for name in ("trap", "job_dir", "run"):
        if parts[name].strip() not in text:
            raise refuse(f"must keep the launcher's {name} block verbatim ({_first_line(parts[name])!r} ...)")
    own_traps = {line for line in (parts["trap"] + parts["run"]).splitlines() if _USR2_TRAP.search(line)}
    for line in text.splitlines():
        if _USR2_TRAP.search(line) and line not in own_traps:
            raise refuse(f"has its own SIGUSR2 trap ({line.strip()!r}): the signal trap is the launcher's")


def _leading_comments(text: str) -> list[str]:
    """The lines sbatch reads ``#SBATCH`` options from: up to the first command."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        out.append(line)
    return out


def _reserved(dashes: str, name: str) -> str | None:
    """The launcher-owned option an ``#SBATCH`` line sets (``-t 5`` or ``--ti=5`` both are ``time``)."""
    if dashes == "-":
        return _SHORT.get(name[:1])
    return abbreviates(name.replace("_", "-"), RESERVED_OPTIONS)


def _first_line(block: str) -> str:
    return next((line for line in block.splitlines() if line.strip()), "")
