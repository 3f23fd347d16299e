"""The instance's user-data: the bash that runs ``setup_commands`` and starts the agent, or the
stub that fetches it from S3 when it exceeds EC2's 16 KB (quoting rules: docs/ec2.md)."""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
import shlex
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

USER_DATA_LIMIT = 16 * 1024
DEFAULT_SHUTDOWN = "shutdown -h now"

# Shared prologue: workspace, budget guard. HRL_SHUTDOWN_CMD exists for tests, where powering
# off the machine that runs the test suite is not an option; on EC2 nobody sets it.
_PROLOGUE = """\
#!/bin/bash
# hydra-remote-launcher bootstrap: sweep {sweep_id}, run {run}, group {group}.
# Holds no credentials: the instance reaches S3 and EC2 through its IAM instance profile.
set -u
umask 077
export HRL_START_EPOCH="${{HRL_START_EPOCH:-$(date +%s)}}"
HRL_WS={workspace}
HRL_SHUTDOWN="${{HRL_SHUTDOWN_CMD:-{shutdown}}}"
mkdir -p "$HRL_WS" && cd "$HRL_WS" || {{ $HRL_SHUTDOWN; exit 1; }}
if [ -z "${{HRL_GUARD_STARTED:-}}" ]; then
  export HRL_GUARD_STARTED=1
  # Hard budget (max_runtime_min): whatever happens below, the machine powers off in time,
  # and InstanceInitiatedShutdownBehavior=terminate turns that into a termination.
  ( sleep {max_runtime_s}; $HRL_SHUTDOWN ) </dev/null >/dev/null 2>&1 &
fi
HRL_PY=({python})
"""

_AGENT_DECODE = "import base64,sys,zlib; sys.stdout.write(zlib.decompress(base64.b64decode(sys.stdin.read())).decode())"


def agent_source() -> str:
    """The instance agent as shipped: docstrings and comments dropped (~25% less user-data)."""
    from launcher_core.runtime import RUNTIME_DIR

    tree = ast.parse((RUNTIME_DIR / "ec2_agent.py").read_text())
    _drop_docstrings(tree)
    return "# hydra-remote-launcher instance agent (launcher_core/runtime/ec2_agent.py)\n" + ast.unparse(tree) + "\n"


def _drop_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]


_MAIN_GUARD = "if __name__ == '__main__':"


def agent_with_check(setup_commands: Sequence[str], payload_needs: Any = None) -> str:
    """The agent as shipped, with :func:`environment_check` as its ``ENV_CHECK`` (a JSON literal)."""
    source = agent_source()
    assert source.count(_MAIN_GUARD) == 1, "ec2_agent.py must end with one main guard"
    check = f"ENV_CHECK = json.loads({json.dumps(json.dumps(environment_check(setup_commands, payload_needs)))})\n"
    return source.replace(_MAIN_GUARD, check + _MAIN_GUARD)


def _packed(text: str) -> str:
    """zlib + base64, wrapped at 76 columns: the agent costs ~1/3 of its size in user-data."""
    encoded = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return "\n".join(textwrap.wrap(encoded, 76))


def _quote_words(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _prologue(*, sweep_id: str, run: str, group: str, workspace: str, python: Sequence[str], max_runtime_s: int) -> str:
    return _PROLOGUE.format(
        sweep_id=_comment_safe(sweep_id),
        run=_comment_safe(run),
        group=_comment_safe(group),
        workspace=shlex.quote(workspace),
        shutdown=DEFAULT_SHUTDOWN,
        max_runtime_s=int(max_runtime_s),
        python=_quote_words(python),
    )


def _comment_safe(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _setup_block(commands: Sequence[str]) -> str:
    """Each command runs in the main shell (so ``source venv/bin/activate`` lasts) and is checked:
    the first that fails is remembered (``hrl_setup_line``) and the ones after it do not run."""
    lines = ["hrl_setup_rc=0", "hrl_setup_line=-1", ': > "$HRL_WS/setup.log"']
    for n, command in enumerate(commands):
        lines.append('if [ "$hrl_setup_rc" -eq 0 ]; then {')
        lines.append(command)
        lines.append(f'}} >>"$HRL_WS/setup.log" 2>&1 </dev/null || {{ hrl_setup_rc=$?; hrl_setup_line={n}; }}; fi')
    return "\n".join(lines) + "\n"


def environment_check(setup_commands: Sequence[str], payload_needs: Any = None) -> dict[str, Any]:
    """What the agent checks after ``setup_commands`` and before any job starts (and how it names
    a failed setup command): the probe, this machine's versions and the sweep payload's needs,
    judged there by the rule shipped with the runtime (``launcher_core.runtime.envcheck``)."""
    from launcher_core.remote.scripts import one_line
    from launcher_core.runtime.envcheck import PROBE, local_versions

    return {
        "probe": PROBE,
        "here": local_versions(),
        "needs": dataclasses.asdict(payload_needs) if payload_needs is not None else None,
        "setup_commands": [one_line(c, 160) for c in setup_commands],
    }


def _env_block(env: Mapping[str, Any]) -> str:
    return "".join(f"export {name}={shlex.quote(str(value))}\n" for name, value in env.items())


def render_user_data(
    *,
    sweep_id: str,
    run: str,
    group: str,
    workspace: str,
    python: Sequence[str],
    max_runtime_s: int,
    bootstrap: Mapping[str, Any],
    env: Mapping[str, Any],
    setup_commands: Sequence[str],
    payload_needs: Any = None,
) -> str:
    """The full bootstrap script of one instance."""
    parts = [
        _prologue(
            sweep_id=sweep_id, run=run, group=group, workspace=workspace, python=python, max_runtime_s=max_runtime_s
        ),
        "export PYTHONUNBUFFERED=1\n",
        _env_block(env),
        "cat > \"$HRL_WS/bootstrap.json\" <<'HRL_BOOTSTRAP_EOF'\n",
        json.dumps(dict(bootstrap), sort_keys=True) + "\n",
        "HRL_BOOTSTRAP_EOF\n",
        _setup_block(setup_commands),
        f'"${{HRL_PY[@]}}" -c {shlex.quote(_AGENT_DECODE)} > "$HRL_WS/agent.py" <<\'HRL_AGENT_EOF\'\n',
        _packed(agent_with_check(setup_commands, payload_needs)) + "\n",
        "HRL_AGENT_EOF\n",
        'if [ "$hrl_setup_rc" -ne 0 ]; then\n',
        '  "${HRL_PY[@]}" "$HRL_WS/agent.py" "$HRL_WS/bootstrap.json" --setup-failed "$hrl_setup_rc"'
        ' --setup-line "$hrl_setup_line"\n',
        "else\n",
        '  "${HRL_PY[@]}" "$HRL_WS/agent.py" "$HRL_WS/bootstrap.json"\n',
        "fi\n",
        "hrl_rc=$?\n",
        "# The agent terminated the instance through the API (exit 0); otherwise power off.\n",
        'if [ "$hrl_rc" -ne 0 ]; then $HRL_SHUTDOWN; fi\n',
        'exit "$hrl_rc"\n',
    ]
    return "".join(parts)


_FETCH_PY = (
    "import sys, boto3; "
    "boto3.client('s3', region_name=sys.argv[1] or None, endpoint_url=sys.argv[2] or None)"
    ".download_file(sys.argv[3], sys.argv[4], sys.argv[5])"
)


def render_fetch_stub(
    *,
    sweep_id: str,
    run: str,
    group: str,
    workspace: str,
    python: Sequence[str],
    max_runtime_s: int,
    bucket: str,
    key: str,
    region: str | None,
    endpoint_url: str | None,
    full_size: int,
) -> str:
    """Small user-data that downloads the full bootstrap script from S3 and runs it."""
    q = shlex.quote
    endpoint_args = f" --endpoint-url {q(endpoint_url)}" if endpoint_url else ""
    region_args = f" --region {q(region)}" if region else ""
    s3_url = q(f"s3://{bucket}/{key}")
    return (
        _prologue(
            sweep_id=sweep_id, run=run, group=group, workspace=workspace, python=python, max_runtime_s=max_runtime_s
        )
        + f"# The full bootstrap ({full_size} bytes) exceeds EC2's 16 KB user-data limit: fetch it from S3.\n"
        + 'HRL_SCRIPT="$HRL_WS/user-data-full.sh"\n'
        + "if command -v aws >/dev/null 2>&1 && "
        + f'aws s3 cp --only-show-errors{region_args}{endpoint_args} {s3_url} "$HRL_SCRIPT"; then :\n'
        + f'elif "${{HRL_PY[@]}}" -c {q(_FETCH_PY)} {q(region or "")} {q(endpoint_url or "")} {q(bucket)} {q(key)} '
        + '"$HRL_SCRIPT"; then :\n'
        + "else\n"
        + '  echo "hydra-remote-launcher: could not fetch the bootstrap script from S3" >&2\n'
        + "  $HRL_SHUTDOWN\n"
        + "  exit 1\n"
        + "fi\n"
        + 'exec bash "$HRL_SCRIPT"\n'
    )
