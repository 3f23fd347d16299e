"""Pre-flight of ``remote_ssh``: one sh script per host over its SSH connection, before anything
is created there, answering everything at once (``HRL key=value`` lines and the Python probe's
JSON line): the host is reachable, ``python`` runs after the environment setup and is this
machine's minor version with hydra-core, omegaconf and cloudpickle importable at compatible
versions (or, with a container, the image is there and the runtime on the PATH), rsync is there,
``remote_dir`` has ``min_free_gb`` free, and ``nvidia-smi -L`` lists enough GPUs when
``gpus_per_job`` > 0. See docs/remote_ssh.md ("Pre-flight").
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from launcher_core.backends.remote_ssh.hosts import HostPool, assign_to_hosts
from launcher_core.errors import BackendError, ConfigError
from launcher_core.preflight import (
    FAIL,
    OK,
    PROBE,
    WARN,
    Check,
    PreflightRequest,
    failure_message,
    fingerprint,
    python_checks,
    summary_line,
)
from launcher_core.remote.scripts import checked_steps, parse_kv, remote_path_expr, setup_failure

if TYPE_CHECKING:
    from launcher_core.backends.remote_ssh.settings import HostSettings, RemoteSSHSettings
    from launcher_core.remote.workspace import SnapshotCheck

q = shlex.quote
log = logging.getLogger("launcher_core.remote_ssh")


def preflight(settings: RemoteSSHSettings, hosts: HostPool, request: PreflightRequest) -> list[Check]:
    """Rows for every host that gets jobs (all hosts without ``n_jobs``), one round trip each
    over its connection in ``hosts``, in parallel; hosts that passed with the same settings
    lately are skipped."""
    if request.sweep is not None:  # a local setting is refused before any host is contacted
        code_dir = Path(settings.code_dir or request.sweep.code_dir).expanduser()
        if not code_dir.is_dir():
            raise BackendError(f"hydra.launcher.code_dir: {code_dir.resolve()} is not a directory")
    checked = list(settings.hosts)
    if request.n_jobs is not None:
        buckets = assign_to_hosts(list(range(request.n_jobs)), [h.max_parallel for h in checked])
        checked = [h for h, jobs in zip(checked, buckets) if jobs]
    work = {}
    for host in checked:
        key = fingerprint("remote_ssh", host.address.label, _checked_settings(settings, host))
        if not request.is_cached(host.address.label, key):
            work[host.address.label] = (host, key)
    hosts.ensure_logins(work)
    results, errors = hosts.per_host(work, lambda label, item: _check_host(settings, hosts, request, *item))
    rows: list[Check] = []
    for label in work:
        if label in errors:
            rows.append(_unreachable(label, errors[label], work[label][1]))
        else:
            rows += results[label]
    return rows


def _checked_settings(settings: RemoteSSHSettings, host: HostSettings) -> dict[str, object]:
    """What the answer depends on (env var values left out: they may be secrets; their names
    are enough to notice a change)."""
    container = dataclasses.asdict(settings.container) if settings.container else None
    if container:
        container.pop("env", None)
    return {
        "python": settings.python_command,
        "env_setup": [settings.env_setup, settings.conda_env, settings.conda_command, settings.uv_command],
        "env_names": [name for name, _ in settings.env_vars],
        "setup_commands": list(settings.setup_commands),
        "remote_dir": host.remote_dir or settings.remote_dir,
        "min_free_gb": settings.min_free_gb,
        "gpus": [settings.gpus_per_job, host.max_parallel, host.gpus, settings.per_job_gpus],
        "container": container,
        "rsync_path": settings.ssh.rsync_path,
        "ssh_config": settings.ssh.ssh_config,
    }


def _unreachable(label: str, error: BackendError, key: str) -> Check:
    return Check(
        "reachable",
        label,
        FAIL,
        str(error).splitlines()[0] if str(error) else type(error).__name__,
        f"check that `ssh {label}` works from here (host name, ssh_config, keys, known_hosts, the host is up)",
        key,
    )


def _check_host(
    settings: RemoteSSHSettings, hosts: HostPool, request: PreflightRequest, host: HostSettings, key: str
) -> list[Check]:
    conn = hosts.conn(host.address.label)
    remote_dir = host.remote_dir or settings.remote_dir or _default_remote_dir(settings, request)
    script = preflight_script(settings, remote_dir)
    answer = conn.call("pre-flight check", lambda: conn.run_script(script, what="pre-flight check"))
    return evaluate(settings, host, remote_dir, answer, key)


def _default_remote_dir(settings: RemoteSSHSettings, request: PreflightRequest) -> str:
    from launcher_core.remote.workspace import default_remote_dir

    code_dir = settings.code_dir or (request.sweep.code_dir if request.sweep else Path.cwd())
    return default_remote_dir(Path(code_dir).expanduser())


def preflight_script(settings: RemoteSSHSettings, remote_dir: str) -> str:
    """The one script: fixed probes first (rsync, disk, image), then, in a subshell, the job
    environment (``env_vars``, conda, ``setup_commands``, each checked: the first that fails is
    named and ends the subshell) in the latest complete snapshot if there is one (else the home
    dir), then GPUs, the container runtime, the Python probe inside the image (with a container)
    and the Python probe of ``python``. It creates nothing."""
    container = settings.container
    python = settings.python_command
    rsync = settings.ssh.rsync_path or "rsync"
    lines = [
        "set +e",
        f"rd={remote_path_expr(remote_dir)}",
        f"if command -v {q(rsync)} >/dev/null 2>&1; then echo 'HRL rsync=ok'; else echo 'HRL rsync=missing'; fi",
        # free space where remote_dir is, or would be created (its nearest existing parent)
        'd="$rd"; while [ ! -d "$d" ] && [ "$d" != / ] && [ -n "$d" ]; do d=$(dirname "$d"); done',
        'printf "HRL disk_dir=%s\\n" "$d"',
        "printf 'HRL disk_free_kb=%s\\n' \"$(df -Pk \"$d\" 2>/dev/null | awk 'NR==2 {print $4}')\"",
    ]
    if container is not None and "://" not in container.image:
        lines += [
            f"img={remote_path_expr(container.image)}",
            'if [ ! -e "$img" ]; then printf \'HRL container_image_missing=%s\\n\' "$img"',
            'elif [ ! -r "$img" ]; then printf \'HRL container_image_unreadable=%s\\n\' "$img"',
            "else printf 'HRL container_image=%s\\n' \"$img\"; fi",
        ]
    lines += [
        "(",
        'if [ -s "$rd/snapshots/LATEST" ] && read -r l < "$rd/snapshots/LATEST" && [ -d "$rd/snapshots/$l" ]; then',
        '  cd "$rd/snapshots/$l"; echo "HRL env_in=snapshot"; else cd "$HOME"; echo "HRL env_in=home"; fi',
        _environment_lines(settings),
    ]
    if settings.uses_gpus:  # after the environment: `module load cuda` may bring it
        lines += [
            "if command -v nvidia-smi >/dev/null 2>&1; then",
            "  printf 'HRL gpus=%s\\n' \"$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')\"",
            "else echo 'HRL gpus=missing'; fi",
        ]
    if container is not None:
        runtime = q(container.runtime)
        lines += [
            f"if command -v {runtime} >/dev/null 2>&1; then",
            f"  printf 'HRL container_runtime=%s\\n' \"$(command -v {runtime})\"",
            "else printf 'HRL container_runtime_missing=%s\\n' \"$PATH\"; fi",
        ]
        if "://" not in container.image:  # a URI is fetched by the runtime when the first job starts
            lines += [
                f'if command -v {runtime} >/dev/null 2>&1 && [ -r "$img" ]; then',
                f"  out=$(cd / && {_in_image_probe(settings)} 2>&1)",  # from a dir every image has
                "  printf '%s\\n' \"$out\" | sed -n 's/^HRLPROBE /HRL container_probe=/p' | grep . ||",
                '    printf "HRL container_probe_out=%s\\n" "$(printf "%s" "$out" | tail -c 300 | tr -s "\\n" " ")"',
                "fi",
            ]
    if settings.env_setup == "uv":  # its Python exists once `uv sync` ran in the snapshot
        uv = settings.uv_command  # the user's own shell word (e.g. ~/.local/bin/uv): not quoted on purpose
        lines += [f"if command -v {uv} >/dev/null 2>&1; then echo 'HRL uv=ok'; else echo 'HRL uv=missing'; fi"]
    else:
        # python is the user's own command (e.g. ~/venv/bin/python): a shell fragment on purpose
        lines += [
            f"out=$({python} -c {q(PROBE)} 2>&1); rc=$?",
            'printf "HRL python_rc=%s\\n" "$rc"',
            'printf "%s\\n" "$out" | grep "^HRLPROBE " ||',
            '  printf "HRL python_out=%s\\n" "$(printf "%s" "$out" | head -c 300 | tr "\\n" " ")"',
        ]
    lines += [")", "exit 0"]
    return "\n".join(lines) + "\n"


def _in_image_probe(settings: RemoteSSHSettings) -> str:
    """``<runtime> exec [--bind ...] [--env ...] "$img" <container.python> -c PROBE``: the image's
    Python as the jobs will start it (their binds and env, minus the dirs that do not exist yet)."""
    from launcher_core.container import wrap_command

    container = settings.container
    assert container is not None
    placeholder = "\0IMAGE\0"
    argv = wrap_command(
        [container.python, "-c", PROBE], dataclasses.replace(container, image=placeholder), gpus_requested=False
    )
    return " ".join('"$img"' if word == placeholder else q(word) for word in argv)


def _environment_lines(settings: RemoteSSHSettings) -> str:
    """The job environment as ``env_prelude`` builds it, each step checked (the first that fails
    is named, with its message, and ends the environment part of the script)."""
    lines = [f"{name}={q(value)}; export {name}" for name, value in settings.env_vars]
    steps = []
    if settings.env_setup == "conda":
        # conda_command is the user's own shell word (e.g. ~/miniconda3/bin/conda): not quoted on purpose
        steps.append(("hydra.launcher.env.conda_command", f'eval "$({settings.conda_command} shell.posix hook)"'))
        steps.append(("hydra.launcher.env.conda_env", f"conda activate {q(settings.conda_env or '')}"))
    key = f"hydra.launcher.{settings.setup_commands_key}"
    steps += [(f"{key}[{n}]", line) for n, line in enumerate(settings.setup_commands)]
    return "\n".join([*lines, checked_steps(steps)])


def evaluate(settings: RemoteSSHSettings, host: HostSettings, remote_dir: str, answer: str, key: str) -> list[Check]:
    """Rows from a host's answer to :func:`preflight_script`."""
    label = host.address.label
    info = parse_kv(answer)
    rows = [Check("reachable", label, OK, "ssh works", "", key)]
    rows.append(_rsync_row(settings, label, info, key))
    rows.append(_disk_row(settings, label, remote_dir, info, key))
    if _gpus_needed(settings, host)[0] > 0:
        rows.append(_gpu_row(settings, host, info, key))
    if settings.container is not None:
        rows += _container_rows(settings, label, info, key)
    rows += _python_rows(settings, label, info, answer, key)
    return rows


def _rsync_row(settings: RemoteSSHSettings, label: str, info: dict[str, str], key: str) -> Check:
    if info.get("rsync") == "ok":
        return Check("rsync", label, OK, "", "", key)
    rsync = settings.ssh.rsync_path or "rsync"
    return Check(
        "rsync",
        label,
        FAIL,
        f"{rsync!r} is not on the PATH of non-interactive ssh sessions on {label}",
        "install rsync there (`apt-get install rsync`) or set hydra.launcher.rsync_path to its path",
        key,
    )


def _disk_row(settings: RemoteSSHSettings, label: str, remote_dir: str, info: dict[str, str], key: str) -> Check:
    where = info.get("disk_dir") or remote_dir
    try:
        free_gb = int(info.get("disk_free_kb", "")) / 2**20
    except ValueError:
        return Check("free disk", label, WARN, f"could not read the free space of {where} (df)", "", key)
    detail = f"{free_gb:.1f} GB free in {where}"
    if free_gb >= settings.min_free_gb:
        return Check("free disk", label, OK, detail, "", key)
    return Check(
        "free disk",
        label,
        FAIL,
        f"{detail} (for hydra.launcher.remote_dir={remote_dir!r}), less than min_free_gb={settings.min_free_gb:g}",
        "free space there, point hydra.launcher.remote_dir at a bigger disk, or lower hydra.launcher.min_free_gb",
        key,
    )


def _gpus_needed(settings: RemoteSSHSettings, host: HostSettings) -> tuple[int, str, str]:
    """GPUs the host must show (its declared ``gpus``, else max_parallel x gpus_per_job), why,
    and the fix when it shows fewer (``COUNT``: what it shows)."""
    if host.gpus is not None:
        return (
            host.gpus,
            f"its declared gpus={host.gpus} (hydra.launcher.gpus / hosts[i].gpus)",
            f"set the gpus of {host.address.label} to COUNT",
        )
    needed = host.max_parallel * settings.gpus_per_job
    why = f"max_parallel={host.max_parallel} x gpus_per_job={settings.gpus_per_job} needs {needed}"
    return needed, why, f"lower max_parallel of {host.address.label} to QUOTIENT or hydra.launcher.gpus_per_job"


def _gpu_row(settings: RemoteSSHSettings, host: HostSettings, info: dict[str, str], key: str) -> Check:
    label = host.address.label
    needed, why, fix = _gpus_needed(settings, host)
    seen = info.get("gpus", "missing")
    if seen == "missing":
        return Check(
            "gpus",
            label,
            FAIL,
            f"nvidia-smi is not on the PATH on {label} ({why})",
            "install the NVIDIA driver there, or set hydra.launcher.gpus_per_job=0",
            key,
        )
    count = int(seen) if seen.isdigit() else 0
    if count >= needed:
        return Check("gpus", label, OK, f"{count} GPUs visible", "", key)
    quotient = count // settings.gpus_per_job if settings.gpus_per_job else 0
    return Check(
        "gpus",
        label,
        FAIL,
        f"nvidia-smi -L lists {count} GPUs; {why}",
        fix.replace("COUNT", str(count)).replace("QUOTIENT", str(quotient)),
        key,
    )


def _container_rows(settings: RemoteSSHSettings, label: str, info: dict[str, str], key: str) -> list[Check]:
    container = settings.container
    assert container is not None
    rows = []
    image = container.image
    markers = (("container_image_missing", "no image"), ("container_image_unreadable", "cannot read the image"))
    for marker, what in markers:
        if marker in info:
            resolved = info[marker]
            shown = repr(image) if resolved == image else f"{image!r} ({resolved})"
            rows.append(
                Check(
                    "container image",
                    label,
                    FAIL,
                    f"hydra.launcher.container.image: {what} at {shown} on host {label}",
                    "copy the image there (a .sif file or a sandbox directory) or fix the path",
                    key,
                )
            )
    if not rows:
        rows.append(Check("container image", label, OK, info.get("container_image", image), "", key))
    if "container_runtime" in info:
        rows.append(Check("container runtime", label, OK, info["container_runtime"], "", key))
    else:
        rows.append(
            Check(
                "container runtime",
                label,
                FAIL,
                f"hydra.launcher.container.runtime: {container.runtime!r} is not on the PATH of host {label} after "
                f"the environment setup (PATH={info.get('container_runtime_missing', '?')})",
                f"install it or load it in hydra.launcher.{settings.setup_commands_key} (e.g. 'module load apptainer')",
                key,
            )
        )
    return rows


def _python_rows(
    settings: RemoteSSHSettings, label: str, info: dict[str, str], answer: str, key: str
) -> Sequence[Check]:
    failed = setup_failure(info)
    if failed is not None:
        return [_setup_row(settings, label, info, failed, key)]
    rows: list[Check] = []
    if settings.container is not None:
        rows += _image_python_rows(settings, label, info, key)
    if settings.env_setup == "uv":
        if info.get("uv") != "ok":
            rows.append(
                Check(
                    "uv",
                    label,
                    FAIL,
                    f"hydra.launcher.env.uv_command: {settings.uv_command!r} is not on the PATH of host {label} "
                    f"after {settings.env_vars_key} and {settings.setup_commands_key} "
                    "(env.setup=uv runs `uv sync` there)",
                    "install uv there (https://docs.astral.sh/uv/) or set hydra.launcher.env.uv_command to its path",
                    key,
                )
            )
        else:
            detail = "checked in the code snapshot after `uv sync`, before any job starts"
            rows.append(Check("python", label, OK, detail, "", key))
        return rows
    probe_answer = answer if "HRLPROBE " in answer else info.get("python_out", "")
    # with a container the host's Python only runs the job runner (standard library)
    python = settings.python_command
    return python_checks(label, probe_answer, python=python, key=key, packages=settings.container is None) + rows


def _setup_row(settings: RemoteSSHSettings, label: str, info: dict[str, str], failed: str, key: str) -> Check:
    """A set-up step that failed: conda's are refused; a ``setup_commands`` line may need the
    project's files (it ran outside this launch's snapshot), so it is a warning here and is run
    again in the new snapshot before any job starts, where a failure stops the launch."""
    if info.get("setup_failed", "").startswith("hydra.launcher.env."):
        return Check(
            "environment",
            label,
            FAIL,
            f"{failed} on host {label}",
            "check hydra.launcher.env.conda_command and env.conda_env (`conda env list` there)",
            key,
        )
    where = "the latest code snapshot" if info.get("env_in") == "snapshot" else "the home dir"
    return Check(
        "python",
        label,
        WARN,
        f"not checked: {failed} (run in {where}); it runs again in this launch's code snapshot, "
        "and a failure there stops the launch before any job starts",
        "",
        key,
    )


def _image_python_rows(settings: RemoteSSHSettings, label: str, info: dict[str, str], key: str) -> list[Check]:
    """The image's Python as the jobs start it (``container.python`` inside ``container.image``)."""
    container = settings.container
    assert container is not None
    if "://" in container.image:
        detail = f"not checked: {container.image} is fetched by the runtime when the first job starts"
        return [Check("python in the image", label, WARN, detail, "", key)]
    if "container_probe" not in info:
        if "container_probe_out" not in info:  # no image or no runtime: reported by their own rows
            return []
        return [
            Check(
                "python in the image",
                label,
                FAIL,
                f"`{container.runtime} exec {container.image} {container.python}` does not run on {label}: "
                f"{info['container_probe_out'][:300] or 'no output'}",
                "check hydra.launcher.container.python (a Python inside the image) and container.binds",
                key,
            )
        ]
    rows = python_checks(
        label,
        "HRLPROBE " + info["container_probe"],
        python=container.python,
        key=key,
        where="hydra.launcher.container.python",
    )
    return [_in_image(row) for row in rows]


def _in_image(row: Check) -> Check:
    """A row of the image's Python: named so, the package's name kept in an ok row's detail."""
    detail = f"{row.check} {row.detail}" if row.ok and row.check != "python version" else row.detail
    return dataclasses.replace(row, check=f"{row.check} in the image", detail=detail)


def snapshot_check(settings: RemoteSSHSettings, label: str, payload_needs: object = None) -> SnapshotCheck | None:
    """With ``env.setup=uv`` the jobs' Python exists once ``uv sync`` ran in the code snapshot:
    host preparation runs the probe there, after the set-up lines and ``uv sync`` and before any
    job starts, and refuses the launch (naming the package, both versions and the fix) when the
    jobs could not run with it. None: nothing to check there (the pre-flight checked it)."""
    from launcher_core.remote.workspace import SnapshotCheck

    if settings.env_setup != "uv" or settings.container is not None:
        return None
    python = settings.python_command

    def judge(answer: str) -> None:
        probe_answer = answer if "HRLPROBE " in answer else parse_kv(answer).get("probe_out", "")
        rows = judged(label, probe_answer, python, payload_needs)
        failed = [_uv_fix(r) for r in rows if not r.ok]
        if failed:
            raise ConfigError(
                failure_message(failed, None).replace(
                    "pre-flight check failed:", "the jobs' Python after `uv sync` cannot run them:", 1
                )
            )
        log.info("environment of %s after `uv sync`: %s", label, summary_line(rows))

    return SnapshotCheck(probe=f"{python} -c {q(PROBE)}", judge=judge)


def _uv_fix(row: Check) -> Check:
    """uv installs what the project requires: the fix of a package row is a requirement there."""
    match = re.search(r"pip install '([^']+)'", row.fix)
    if not match:
        return row
    spec = match.group(1)
    return dataclasses.replace(row, fix=f"require {spec} in the project's pyproject.toml (`uv add '{spec}'`), relaunch")


def judged(
    host: str, answer: str, python: str, payload_needs: object, where: str = "hydra.launcher.python"
) -> list[Check]:
    """:func:`python_checks` outside :func:`run_preflight` (host preparation), against the sweep's
    payload needs."""
    return python_checks(host, answer, python=python, key="", where=where, needs=payload_needs)
