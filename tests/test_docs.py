"""The docs hold to the code: the settings tables against the config dataclasses, every relative
link (and its anchor) against the files, the README's ``results`` example against what
``launcher-core results`` really prints for the README's example sweep.

Settings tables (README.md, docs/*.md) are ``| key | default | meaning |`` tables right under a
``<!-- keys: CLASS [PREFIX] -->`` line. CLASS names a dataclass of
``hydra_plugins/remote_launcher/config.py``, the one place keys and defaults are declared; a
class may have several tables (their rows together are its keys). One key per row, a dotted path
for nested settings (``env.setup``), written with PREFIX first when given (``container.image``).
The default cell starts with the default in backticks, as YAML (``null``, ``5``, ``[]``,
``python3``) or as the dotted name of a Python constant; a row for a nested dataclass that has
its own table (``container``) names no default.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_plugins.remote_launcher import config

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

_MARKER = re.compile(r"^<!--\s*keys:\s*(\w+)(?:\s+([\w.]+))?\s*-->\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


# --- reading markdown ---------------------------------------------------------------------------


def prose_lines(text: str) -> list[str]:
    """The lines of a markdown text outside fenced code blocks (those become empty lines)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return out


def table_cells(line: str) -> list[str]:
    """The cells of one markdown table row (``\\|`` is a pipe inside a cell)."""
    body = line.strip().strip("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


@dataclasses.dataclass
class Row:
    key: str
    default: str
    doc: str  # file name, for messages
    line: int


@dataclasses.dataclass
class Table:
    cls: str
    prefix: str
    rows: list[Row]


def settings_tables(paths: list[Path] = DOCS) -> list[Table]:
    tables = []
    for path in paths:
        lines = prose_lines(path.read_text())
        for i, line in enumerate(lines):
            m = _MARKER.match(line.strip())
            if not m:
                continue
            header = table_cells(lines[i + 1]) if i + 1 < len(lines) else []
            assert header == ["key", "default", "meaning"], (
                f"{path.name}:{i + 2}: a settings table must follow {line.strip()!r} "
                f"with the header | key | default | meaning |"
            )
            rows = []
            for j in range(i + 3, len(lines)):
                if not lines[j].strip().startswith("|"):
                    break
                cells = table_cells(lines[j])
                assert len(cells) == 3, f"{path.name}:{j + 1}: a row has 3 cells: {lines[j]!r}"
                key = re.fullmatch(r"`([\w.]+)`", cells[0])
                assert key, f"{path.name}:{j + 1}: the key cell is one key in backticks: {cells[0]!r}"
                rows.append(Row(key.group(1), cells[1], path.name, j + 1))
            tables.append(Table(m.group(1), m.group(2) or "", rows))
    return tables


# --- what the config dataclasses declare --------------------------------------------------------

#: every schema registered in Hydra's ConfigStore by config.register_configs()
SCHEMAS = [
    config.LocalPoolLauncherConf,
    config.RemoteSSHLauncherConf,
    config.SlurmArrayLauncherConf,
    config.Ec2LauncherConf,
    config.SpillLauncherConf,
    config.PairedSweeperConf,
]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def user_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def expected_keys(cls: type, prefix: str, with_own_table: set[str]) -> dict[str, Any]:
    """Dotted key -> default for the table(s) of ``cls``: nested dataclasses are flattened into
    it, except those that have a table of their own (then only their field's name is a row)."""
    out: dict[str, Any] = {}
    for f in user_fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = default_of(f)
        if dataclasses.is_dataclass(value):
            if type(value).__name__ in with_own_table:
                out[key] = NESTED
            else:
                out.update(expected_keys(type(value), key, with_own_table))
        else:
            out[key] = value
    return out


NESTED = object()  # a row of a nested dataclass with its own table: no default to compare


def documented_default(cell: str) -> Any:
    """The default a table states: the first backticked span, as YAML or as a dotted constant."""
    m = re.match(r"`([^`]*)`", cell)
    if not m:
        raise ValueError("the default cell must start with the default in backticks")
    text = m.group(1)
    if re.fullmatch(r"[a-z_]\w*(\.\w+)+\.[A-Z_][A-Z0-9_]*", text):  # module.CONSTANT
        module, _, name = text.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return yaml.safe_load(text)


def same_value(documented: Any, declared: Any) -> bool:
    if isinstance(declared, (list, tuple)) or isinstance(documented, (list, tuple)):
        return isinstance(documented, (list, tuple)) and list(documented) == list(declared)
    if isinstance(declared, bool) or isinstance(documented, bool):
        return documented is declared
    if isinstance(declared, (int, float)) and isinstance(documented, (int, float)):
        return math.isclose(documented, declared)
    return documented == declared


# --- the tests: settings tables -----------------------------------------------------------------


def test_every_schema_has_a_settings_table_and_every_table_names_a_schema() -> None:
    tables = settings_tables()
    named = {t.cls for t in tables}
    assert {c.__name__ for c in SCHEMAS} <= named, "a launcher or sweeper schema has no settings table"
    for name in named:
        assert dataclasses.is_dataclass(getattr(config, name, None)), f"<!-- keys: {name} --> names no config dataclass"


@pytest.mark.parametrize("schema", [*SCHEMAS, config.ContainerConf, config.SpillTargetConf], ids=lambda c: c.__name__)
def test_settings_table_lists_every_key_with_its_declared_default(schema: type) -> None:
    tables = settings_tables()
    own = [t for t in tables if t.cls == schema.__name__]
    assert own, f"no settings table for {schema.__name__}"
    prefixes = {t.prefix for t in own}
    assert len(prefixes) == 1, f"{schema.__name__}: its tables disagree on the key prefix: {prefixes}"
    expected = expected_keys(schema, prefixes.pop(), {t.cls for t in tables})
    rows: dict[str, Row] = {}
    for table in own:
        for row in table.rows:
            assert row.key not in rows, f"{row.doc}:{row.line}: `{row.key}` is documented twice for {schema.__name__}"
            rows[row.key] = row
    assert sorted(set(rows) - set(expected)) == [], f"{schema.__name__}: documented keys that it does not declare"
    assert sorted(set(expected) - set(rows)) == [], f"{schema.__name__}: declared keys its table does not document"
    for key, declared in expected.items():
        row = rows[key]
        if declared is NESTED:
            continue
        try:
            documented = documented_default(row.default)
        except (ValueError, yaml.YAMLError, ImportError, AttributeError) as exc:
            pytest.fail(f"{row.doc}:{row.line}: `{key}`: cannot read the default {row.default!r}: {exc}")
        assert same_value(documented, declared), (
            f"{row.doc}:{row.line}: `{key}` is documented with default {documented!r}, "
            f"{schema.__name__} declares {declared!r}"
        )


def test_the_table_reader_catches_a_missing_key_and_a_wrong_default(tmp_path: Path) -> None:
    """The check above can fail: a table that drops a key or states another default is caught."""
    doc = tmp_path / "x.md"
    doc.write_text(
        "<!-- keys: LocalPoolLauncherConf -->\n| key | default | meaning |\n| --- | --- | --- |\n"
        "| `n_jobs` | `null` | x |\n| `timeout_s` | `600` | x |\n| `kill_grace_s` | `5` | x |\n"
    )
    (table,) = settings_tables([doc])
    rows = {r.key: r for r in table.rows}
    expected = expected_keys(config.LocalPoolLauncherConf, "", set())
    gpu_keys = {"gpus", "gpus_per_job", "resources_from", "jobs_per_gpu", "gpu_lock_dir"}
    retry_keys = {"max_retries", "retry_on", "retry_mem_factor"}
    assert set(expected) - set(rows) == {"skip_completed", "env_vars", *gpu_keys, *retry_keys}
    assert not same_value(documented_default(rows["timeout_s"].default), expected["timeout_s"])
    assert same_value(documented_default(rows["kill_grace_s"].default), expected["kill_grace_s"])
    assert documented_default("`launcher_core.remote.codesync.DEFAULT_EXCLUDES` (…)") == tuple(
        importlib.import_module("launcher_core.remote.codesync").DEFAULT_EXCLUDES
    )


# --- the tests: links ---------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for the headings of a markdown file."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose_lines(path.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link that is not a URL; link texts may span lines."""
    text = "\n".join(prose_lines(path.read_text()))
    # links are not read inside inline code: blank it out, keeping offsets and line breaks
    text = re.sub(r"`[^`]*`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    out = []
    for m in _LINK.finditer(text):
        target = m.group(1)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            out.append((text.count("\n", 0, m.start(1)) + 1, target))
    return out


def broken_links(path: Path) -> list[str]:
    broken = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path.name}:{number}"
        if not dest.exists():
            broken.append(f"{where}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
            broken.append(f"{where}: {target} (no heading makes #{anchor})")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(doc: Path) -> None:
    assert broken_links(doc) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Hello: `world` (again)\n## Hello: world again\n```\n# not a heading\n```\n")
    a = tmp_path / "a.md"
    a.write_text(
        "[ok](b.md#hello-world-again) [ok too](b.md#hello-world-again-1) [web](https://x.org/y)\n"
        "[gone](c.md) [no anchor](b.md#not-a-heading) `[in code](d.md)`\n[self](#nothing) [a text\n"
        "over two lines](e.md)\n"
    )
    assert broken_links(a) == [
        "a.md:2: c.md (no such file)",
        "a.md:2: b.md#not-a-heading (no heading makes #not-a-heading)",
        "a.md:3: #nothing (no heading makes #nothing)",
        "a.md:4: e.md (no such file)",
    ]


# --- the tests: the README's results example ----------------------------------------------------


def readme_example() -> tuple[list[str], str, list[str], list[str]]:
    """From README.md: the example sweep's overrides (the set-up command), the sweep dir and the
    arguments of the documented ``launcher-core results`` call, and the table it shows."""
    text = (REPO_ROOT / "README.md").read_text()
    setup = next(line for line in text.splitlines() if line.startswith("apt-get update && "))
    run = shlex.split(setup.split("&&")[-1])
    assert run[:3] == [".venv/bin/python", "example_app/train.py", "-m"], run
    overrides = run[3:]
    block = re.search(r"```console\n\$ (launcher-core results [^\n]*)\n(.*?)```", text, re.S)
    assert block, "README.md has no ```console block of `$ launcher-core results ...`"
    args = shlex.split(block.group(1))[2:]
    table = block.group(2).rstrip("\n").splitlines()
    return overrides, args[0], args[1:], table


def test_readme_tour_runs_the_set_up_example_sweep_into_the_dir_it_reads_results_from() -> None:
    overrides, sweep_dir, _, _ = readme_example()
    text = (REPO_ROOT / "README.md").read_text().replace("\\\n", " ")
    tour = [shlex.split(line) for line in text.splitlines() if line.startswith("python example_app/train.py -m ")]
    assert [*overrides, f"hydra.sweep.dir={sweep_dir}"] in [cmd[3:] for cmd in tour]


def test_readme_results_example_is_what_launcher_core_results_prints(tmp_path: Path) -> None:
    overrides, _, args, documented = readme_example()
    project = tmp_path / "project"  # a copy of the example app: its frozen snapshot stays small
    shutil.copytree(REPO_ROOT / "example_app", project / "example_app", ignore=shutil.ignore_patterns("__pycache__"))
    sweep_dir = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "example_app/train.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "launcher_core", "results", str(sweep_dir), *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.rstrip("\n").splitlines()
    header = documented[0].split()
    assert printed[0].split() == header
    assert len(printed) == len(documented), "\n".join(printed)
    timing = header.index("duration")  # the one column that differs from run to run
    for doc_line, real_line in zip(documented[1:], printed[1:]):
        doc_cells, real_cells = doc_line.split(), real_line.split()
        assert len(real_cells) == len(doc_cells), real_line
        del doc_cells[timing], real_cells[timing]
        assert real_cells == doc_cells, "\n".join(printed)


# --- the set-up command leaves a shell where the README's later commands run as written ---------
def test_the_readme_activates_the_venv_before_its_first_bare_command() -> None:
    """Item 8: after the set-up command, the README's commands are written bare (``launcher-core``,
    ``python``): the activation line must come before the first of them."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    setup = next(i for i, ln in enumerate(lines) if ln.startswith("apt-get update") and "example_app/train.py" in ln)
    activate = next(
        i for i, ln in enumerate(lines) if ln.strip() in (". .venv/bin/activate", "source .venv/bin/activate")
    )
    bare = next(
        i
        for i, ln in enumerate(lines)
        if i > setup
        and re.match(r"^(launcher-core|python) ", ln.strip())
        and not ln.strip().startswith("python3 -m venv")
    )
    assert setup < activate < bare, (setup, activate, bare)


def test_after_activation_the_bare_commands_run() -> None:
    """What the README's tour types after ``. .venv/bin/activate``, in a shell that has nothing else."""
    venv = Path(sys.executable).parent.parent
    script = f". {venv}/bin/activate && launcher-core --help >/dev/null && python example_app/train.py --info plugins"
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    proc = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("LocalPoolLauncher", "RemoteSSHLauncher", "SlurmArrayLauncher", "Ec2Launcher", "PairedSweeper"):
        assert name in proc.stdout


# --- the job-side command lines the docs show take the worker's arguments -------------------------
def test_documented_worker_command_lines_take_the_workers_arguments() -> None:
    """Item 10: docs/remote_ssh.md once gave the worker ``SWEEP.pkl JOB.pkl``. Every documented
    ``python -m launcher_core.runtime.[remote_]worker ARGS`` names the arguments its usage names."""
    from launcher_core.runtime.worker import USAGE

    wanted = USAGE.split("worker ", 1)[1].split()  # SWEEP_PAYLOAD JOB_TABLE FIRST [COUNT]
    pattern = re.compile(r"python -m launcher_core\.runtime\.(?:remote_)?worker((?: [^\s`]+)+)")
    found = []
    for doc in DOCS:
        for match in pattern.finditer(doc.read_text()):
            args = match.group(1).split()
            found.append((doc.name, args))
            assert len(wanted) - 1 <= len(args) <= len(wanted), (doc.name, args, wanted)
            assert args[0] == wanted[0] and ".pkl" not in " ".join(args[1:]), (doc.name, args)
    assert found  # the docs show the command somewhere
