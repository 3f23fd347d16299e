"""Every documented ``launcher-core ...`` / ``python -m launcher_core...`` line parses with the real
parsers (nothing is run), and ``launcher-core pull`` takes exactly the arguments of
``python -m launcher_core.pull``.

Synopsis lines are expanded the way a reader would: ``[X]`` is included, ``a|b`` gives one line
per alternative, an ALL-CAPS placeholder (``SWEEP``, ``N``) becomes a value, ``X ...`` after a
placeholder is one ``X``, and a trailing ``...`` after a sub-command (``launcher-core pull ...``)
means "its own arguments": ``--help`` of that sub-command must then print that sub-command's help.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher_core import cli
from launcher_core.collect import pull

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_COMMAND = re.compile(r"^(?:\$ )?(?:\S*/)?(launcher-core|python3? -m launcher_core(?:\.[\w.]+)?)(?=\s|$)(.*)$")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")
_PARSERS = {
    "launcher-core": cli.build_parser,
    "launcher_core": cli.build_parser,
    "launcher_core.pull": pull.build_parser,
}


def _fenced_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(``file:line``, text) of each line inside fenced code blocks, continuation lines joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield f"{path.name}:{start}", pending + line
        pending = ""


def documented_commands() -> list[tuple[str, str, str]]:
    """(where, program, argument text) of every documented command of ours."""
    found = []
    for path in DOCS:
        for where, text in _fenced_lines(path):
            for part in re.split(r"\s(?:&&|;|\|)\s", text):
                match = _COMMAND.match(part.strip())
                if match:
                    program = match.group(1).split()[-1]
                    found.append((where, program, match.group(2)))
    return found


def expand(args_text: str) -> list[tuple[list[str], bool]]:
    """Concrete argument lists of a (synopsis) line; True where it stands for ``SUB --help``."""
    tokens = [t.strip("[]") for t in shlex.split(args_text, comments=True)]
    tokens = [t for t in tokens if t]
    help_mode = bool(tokens) and tokens[-1] == "..." and not _PLACEHOLDER.match(tokens[-2] if len(tokens) > 1 else "")
    kept = [t for t in tokens if t != "..."]
    choices = [
        ["1"] if _PLACEHOLDER.match(t) else (t.split("|") if "|" in t and not t.startswith("-") else [t]) for t in kept
    ]
    return [([*combo, "--help"] if help_mode else list(combo), help_mode) for combo in itertools.product(*choices)]


def parse(program: str, argv: list[str]) -> tuple[argparse.Namespace | None, int | None, str]:
    """(namespace, exit code if argparse exited, its output)."""
    builder = _PARSERS.get(program)
    assert builder is not None, f"no parser known for {program!r}: map it in tests/test_cli_parsers.py"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return builder().parse_args(argv), None, out.getvalue()
        except SystemExit as exc:
            return None, int(exc.code or 0), out.getvalue()


DOCUMENTED = documented_commands()


def test_the_docs_have_command_lines_to_check() -> None:
    programs = {program for _where, program, _args in DOCUMENTED}
    assert {"launcher-core", "launcher_core.pull"} <= programs, programs


@pytest.mark.parametrize(("where", "program", "args_text"), DOCUMENTED, ids=[w for w, _p, _a in DOCUMENTED])
def test_documented_command_line_parses(where: str, program: str, args_text: str) -> None:
    for argv, help_mode in expand(args_text):
        namespace, code, output = parse(program, argv)
        if help_mode:
            usage = " ".join(["launcher-core", *argv[:-1]])
            assert code == 0 and output.startswith(f"usage: {usage}"), f"{where}: {argv}: {output[:300]}"
        else:
            assert namespace is not None, f"{where}: {program} {shlex.join(argv)} is refused:\n{output}"


def test_expand_reads_synopsis_lines() -> None:
    assert expand("status [SWEEP] [--watch]") == [(["status", "1", "--watch"], False)]
    assert expand("cancel SWEEP [JOB ...]") == [(["cancel", "1", "1"], False)]
    assert expand("cluster list|show ...") == [
        (["cluster", "list", "--help"], True),
        (["cluster", "show", "--help"], True),
    ]
    assert expand("results s --format table|csv  # c") == [
        (["results", "s", "--format", "table"], False),
        (["results", "s", "--format", "csv"], False),
    ]


PULL_LINES = [
    [],
    ["--once"],
    ["--daemon"],
    ["--stop"],
    ["--dry-run"],
    ["--clean"],
    ["--bare", "--bare-size", "20M", "--bare-exclude", "*.ckpt"],
    ["--notify", 'notify-send "sweep $SWEEP_ID done"'],
    ["multirun/2026-11-23/10-00-00", "--interval", "30", "-v"],
]


@pytest.mark.parametrize("argv", PULL_LINES, ids=[" ".join(a) or "(none)" for a in PULL_LINES])
def test_launcher_core_pull_parses_what_python_m_pull_parses(argv: list[str]) -> None:
    direct = vars(pull.build_parser().parse_args(argv))
    via_cli = vars(cli.build_parser().parse_args(["pull", *argv]))
    assert via_cli.pop("command") == "pull" and via_cli.pop("func") is pull.run_from_args
    assert via_cli == direct


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_pull_sub_command_has_exactly_the_pull_arguments() -> None:
    assert _options(_subparser(cli.build_parser(), "pull")) == _options(pull.build_parser())
    assert "--sweep-daemon" in _options(pull.build_parser())


def test_launcher_core_pull_runs_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_REMOTE_LAUNCHER_HOME", str(tmp_path))  # no sweeps known: one empty cycle
    assert cli.main(["pull", "--once"]) == 0
    assert cli.main(["pull", "--dry-run", "--interval", "0"]) == 2  # options are checked as with python -m


@pytest.mark.parametrize(
    "path",
    [
        ("pull",),
        ("status",),
        ("clean",),
        ("results",),
        ("cluster",),
        ("cluster", "list"),
        ("cluster", "add"),
        ("pipeline",),
        ("pipeline", "run"),
        ("pipeline", "cancel"),
    ],
)
def test_help_of_a_sub_command_is_its_own(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([*path, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: launcher-core {' '.join(path)} ")


@pytest.mark.parametrize(
    ("argv", "action"),
    [
        (["cluster", "list", "--conf", "myconf"], "list"),
        (["cluster", "--conf", "myconf", "list"], "list"),
        (["cluster", "show", "slurm_cpu", "--conf", "myconf"], "show"),
        (["cluster", "--conf", "myconf", "test", "mine", "--deep"], "test"),
        (["cluster", "add", "mine", "--from", "local", "n_jobs=3", "--conf", "myconf"], "add"),
    ],
)
def test_cluster_conf_before_or_after_the_action(argv: list[str], action: str) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (args.conf, args.cluster_command) == ("myconf", action)


def test_cluster_without_conf_defaults_to_none() -> None:
    assert cli.build_parser().parse_args(["cluster", "list"]).conf is None


def test_cluster_list_conf_reads_that_dirs_presets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "appconf"
    (conf / "cluster").mkdir(parents=True)
    (conf / "cluster" / "projonly.yaml").write_text("defaults:\n  - override /hydra/launcher: local_pool\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["cluster", "list", "--conf", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "projonly" in out and "project" in out
