"""Pre-flight of ``slurm``: one sh script on the submitting machine (this one, or the login node
over its SSH connection) runs every probe and prints each answer in a section: sbatch and squeue
are there and slurmctld answers, the partition exists and is up (``sinfo``), account and QoS are
known where ``sacctmgr`` answers, ``MaxArraySize`` (``scontrol show config``), accounting works
(``sacct``), and the jobs' Python (after ``modules`` and ``setup``) checked on the login node, or
on a compute node with a tiny ``srun`` job when ``deep`` is asked for. See docs/slurm.md.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from typing import TYPE_CHECKING

from launcher_core.backends.slurm.sbatch import module_lines, set_up_functions, setup_lines
from launcher_core.errors import BackendError
from launcher_core.preflight import FAIL, OK, PROBE, WARN, Check, PreflightRequest, fingerprint, python_checks
from launcher_core.remote.scripts import setup_failure

if TYPE_CHECKING:
    from launcher_core.backends.slurm.options import SlurmOptions
    from launcher_core.backends.slurm.sites import LocalSite, LoginSite

q = shlex.quote
MARK = "@@HRL "
DEEP_TIMEOUT_S = 300.0  # a tiny job may queue a while on a busy cluster


def preflight(options: SlurmOptions, site: LocalSite | LoginSite, request: PreflightRequest) -> list[Check]:
    """Rows of the one script, run where ``site`` runs Slurm's commands; none when the same
    settings passed there lately."""
    host = f"login host {options.login_host}" if options.login_host else "this machine"
    key = fingerprint("slurm", host, _checked_settings(options), request.deep)
    if request.is_cached(host, key):
        return []
    python = options.python or site.default_python
    code_dir = None if options.login_host or request.sweep is None else str(request.sweep.code_dir)
    script = preflight_script(options, python, deep=request.deep, code_dir=code_dir)
    try:
        answer = _run(options, site, script, request.deep)
    except BackendError as exc:
        return [
            Check(
                "slurm commands",
                host,
                FAIL,
                str(exc).splitlines()[0],
                "check hydra.launcher.login_host and that `ssh` to it works" if options.login_host else "",
                key,
            )
        ]
    return evaluate(options, host, python, parse_sections(answer), key, n_jobs=request.n_jobs, deep=request.deep)


def _checked_settings(options: SlurmOptions) -> dict[str, object]:
    return {
        k: getattr(options, k)
        for k in ("partition", "account", "qos", "max_array_size", "python", "modules", "cuda_module", "job_setup")
    } | {
        # the image's Python is checked: what starts it (env values left out, they may be secrets)
        "container": None if options.container is None else {**vars(options.container), "env": None},
        "env_names": sorted(options.env_vars),
        "login_setup": options.login_setup,
    }


def _run(options: SlurmOptions, site: LocalSite | LoginSite, script: str, deep: bool) -> str:
    timeout = options.command_timeout_s + (DEEP_TIMEOUT_S if deep else 0.0)
    if options.login_host:
        return site.commands.script(script, what="pre-flight check", timeout_s=timeout)  # type: ignore[union-attr]
    try:
        proc = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"the Slurm pre-flight check did not finish within {timeout:g} s") from exc
    return proc.stdout


def preflight_script(options: SlurmOptions, python: str, *, deep: bool, code_dir: str | None = None) -> str:
    """The script: ``run NAME CMD...`` prints ``@@HRL NAME RC`` and the command's output.

    The jobs' Python is checked the way the batch script starts it: in bash, in the code dir
    (``code_dir``; the home dir on a login node), with the site's ``module`` function, the
    ``modules`` loaded, ``env_vars`` exported and the ``setup_commands`` lines run, each checked (the first
    that fails is named, with its message), then ``python`` (or ``container.python`` inside the
    image) runs the probe; with ``deep`` the same again on a compute node through ``srun``."""
    lines = [
        "set +e",
        *options.login_setup,
        'run() { n=$1; shift; o=$("$@" 2>&1); r=$?; printf \'\\n%s%s %s\\n\' ' + q(MARK) + ' "$n" "$r";'
        ' printf "%s\\n" "$o" | head -c 65536; }',
        "me=$(id -un)",
        "run sbatch command -v sbatch",
        "run squeue command -v squeue",
        "run sinfo sinfo -h -o '%P|%a'",  # also proves that slurmctld answers
        "run config scontrol show config",
        "run sacct sacct -n -X -j 1 -o JobID",
    ]
    if options.account or options.qos:
        lines.append('run assoc sacctmgr -n -P show assoc where user="$me" format=account,qos')
    if options.qos:
        lines.append("run qos sacctmgr -n -P show qos format=name")
    body = job_environment(options, python, code_dir)
    lines.append(f"run python bash -c {q(body)}")
    if deep:
        lines.append(f"run deep srun {' '.join(q(a) for a in _srun_args(options))} bash -c {q(body)}")
    return "\n".join(lines) + "\nexit 0\n"


def job_environment(options: SlurmOptions, python: str, code_dir: str | None) -> str:
    """bash that sets up as the batch script does (:mod:`.sbatch`), then runs the probe in the
    jobs' Python: the host's, or the image's through the container runtime."""
    lines = [f"cd {q(code_dir)} 2>/dev/null || cd" if code_dir else "cd", *set_up_functions(batch=False)]
    if options.modules or options.cuda_module:
        lines += module_lines(options)
    lines += [f"export {name}={q(value)}" for name, value in options.env_vars.items()]
    lines += setup_lines(options)
    if options.container is None:
        lines.append(f"exec {python} -c {q(PROBE)}")  # python: the user's command (a shell fragment)
    else:
        from launcher_core.container import wrap_command

        binds = [code_dir] if code_dir else []
        argv = wrap_command([options.container.python, "-c", PROBE], options.container, binds)
        lines.append("exec " + " ".join(q(a) for a in argv))
    return "\n".join(lines)


def _srun_args(options: SlurmOptions) -> list[str]:
    args = ["--quiet", "--nodes=1", "--ntasks=1", "--time=2", "--job-name=hrl-preflight"]
    for key in ("partition", "account", "qos"):
        if getattr(options, key):
            args.append(f"--{key}={getattr(options, key)}")
    return args


def parse_sections(answer: str) -> dict[str, tuple[int, str]]:
    """``{name: (exit code, output)}`` of the script's ``run`` calls."""
    sections: dict[str, tuple[int, str]] = {}
    name, code, body = None, 0, []
    for line in answer.splitlines():
        if line.startswith(MARK):
            if name is not None:
                sections[name] = (code, "\n".join(body).strip())
            words = line[len(MARK) :].split()
            name, code, body = words[0], int(words[1]) if len(words) > 1 and words[1].isdigit() else 1, []
        elif name is not None:
            body.append(line)
    if name is not None:
        sections[name] = (code, "\n".join(body).strip())
    return sections


def evaluate(
    options: SlurmOptions,
    host: str,
    python: str,
    sections: dict[str, tuple[int, str]],
    key: str,
    *,
    n_jobs: int | None,
    deep: bool,
) -> list[Check]:
    rows = [_commands_row(options, host, sections, key)]
    if not rows[0].ok:
        return rows
    config = _config(sections.get("config", (1, ""))[1])
    rows += _partition_rows(options, host, sections.get("sinfo", (1, "")), key)
    rows += _association_rows(options, host, sections, config, key)
    rows.append(_array_row(options, host, config, key, n_jobs))
    rows.append(_accounting_row(host, sections.get("sacct", (1, "")), key))
    rows += _python_rows(options, host, python, sections, key, deep)
    return rows


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no output"


def _commands_row(options: SlurmOptions, host: str, sections: dict[str, tuple[int, str]], key: str) -> Check:
    where = "hydra.launcher.login_setup (e.g. 'module load slurm')" if options.login_host else "your PATH"
    missing = [name for name in ("sbatch", "squeue") if sections.get(name, (1, ""))[0] != 0]
    if missing:
        return Check(
            "slurm commands",
            host,
            FAIL,
            f"{' and '.join(missing)} not on the PATH of {host}",
            f"run from a Slurm login node, set hydra.launcher.login_host, or put Slurm's commands on {where}",
            key,
        )
    code, out = sections.get("sinfo", (1, "no answer"))
    if code != 0:
        return Check(
            "slurm commands",
            host,
            FAIL,
            f"the Slurm controller does not answer: sinfo says {_first_line(out)}",
            "is slurmctld up, and SLURM_CONF right? (`sinfo` must work there)",
            key,
        )
    return Check("slurm commands", host, OK, "sbatch and squeue there, slurmctld answers", "", key)


def _config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


def _partition_rows(options: SlurmOptions, host: str, sinfo: tuple[int, str], key: str) -> list[Check]:
    code, out = sinfo
    if code != 0:
        return [Check("partition", host, WARN, f"not checked: sinfo fails ({_first_line(out)})", "", key)]
    states: dict[str, str] = {}
    default = None
    for line in out.splitlines():
        name, _, avail = line.strip().partition("|")
        if name.endswith("*"):
            name = name[:-1]
            default = name
        if name:
            states[name] = avail
    known = ", ".join(sorted(states)) or "none"
    wanted = [p.strip() for p in options.partition.split(",")] if options.partition else [default]
    if wanted == [None]:
        return [
            Check(
                "partition",
                host,
                FAIL,
                "hydra.launcher.partition is not set and the cluster has no default partition",
                f"set hydra.launcher.partition to one of: {known}",
                key,
            )
        ]
    rows = []
    for name in wanted:
        assert name is not None
        if name not in states:
            rows.append(
                Check(
                    "partition",
                    host,
                    FAIL,
                    f"hydra.launcher.partition: {name!r} does not exist (sinfo lists: {known})",
                    f"set hydra.launcher.partition to one of: {known}",
                    key,
                )
            )
        elif states[name] != "up":
            rows.append(
                Check(
                    "partition",
                    host,
                    FAIL,
                    f"partition {name!r} is {states[name]} (sinfo), jobs would not start",
                    f"ask the admins, or pick an up partition: {known}",
                    key,
                )
            )
        else:
            rows.append(Check("partition", host, OK, f"{name} is up", "", key))
    return rows


def _association_rows(
    options: SlurmOptions, host: str, sections: dict[str, tuple[int, str]], config: dict[str, str], key: str
) -> list[Check]:
    """Account and QoS against sacctmgr; a failure is fatal only where Slurm enforces them."""
    enforce = config.get("AccountingStorageEnforce", "").lower()
    rows = []
    code, out = sections.get("assoc", (1, ""))
    accounts = {line.split("|")[0] for line in out.splitlines() if line.strip()} if code == 0 else set()
    if options.account:
        if code != 0:
            rows.append(Check("account", host, WARN, f"not checked: sacctmgr fails ({_first_line(out)})", "", key))
        elif options.account in accounts:
            rows.append(Check("account", host, OK, options.account, "", key))
        else:
            fatal = any(word in enforce for word in ("associations", "limits", "safe", "qos"))
            rows.append(
                Check(
                    "account",
                    host,
                    FAIL if fatal else WARN,
                    f"hydra.launcher.account: {options.account!r} is not one of your accounts "
                    f"({', '.join(sorted(accounts)) or 'none'})",
                    "set hydra.launcher.account to one of them (sacctmgr show assoc user=$USER)",
                    key,
                )
            )
    if options.qos:
        qcode, qout = sections.get("qos", (1, ""))
        names = {line.strip() for line in qout.splitlines() if line.strip()}
        if qcode != 0:
            rows.append(Check("qos", host, WARN, f"not checked: sacctmgr fails ({_first_line(qout)})", "", key))
        elif options.qos in names:
            rows.append(Check("qos", host, OK, options.qos, "", key))
        else:
            rows.append(
                Check(
                    "qos",
                    host,
                    FAIL,
                    f"hydra.launcher.qos: {options.qos!r} does not exist (sacctmgr lists: "
                    f"{', '.join(sorted(names)) or 'none'})",
                    "set hydra.launcher.qos to one of them, or to null",
                    key,
                )
            )
    return rows


def _array_row(options: SlurmOptions, host: str, config: dict[str, str], key: str, n_jobs: int | None) -> Check:
    match = re.match(r"\d+", config.get("MaxArraySize", ""))
    if not match:
        return Check("MaxArraySize", host, WARN, "scontrol show config does not say", "", key)
    cluster = int(match.group(0))
    if options.max_array_size is not None and options.max_array_size > cluster:
        return Check(
            "MaxArraySize",
            host,
            FAIL,
            f"hydra.launcher.max_array_size={options.max_array_size} is above the cluster's MaxArraySize={cluster}:"
            " sbatch would refuse the arrays",
            f"set hydra.launcher.max_array_size to at most {cluster}, or to null (asks the cluster)",
            key,
        )
    size = options.max_array_size or cluster
    detail = f"MaxArraySize={cluster}"
    if n_jobs:
        detail += f": {n_jobs} jobs in {-(-n_jobs // size)} array(s)"
    return Check("MaxArraySize", host, OK, detail, "", key)


def _accounting_row(host: str, sacct: tuple[int, str], key: str) -> Check:
    code, out = sacct
    if code == 0:
        return Check("accounting", host, OK, "sacct works", "", key)
    return Check(
        "accounting",
        host,
        WARN,
        f"sacct fails ({_first_line(out)}): job states come from squeue and the jobs' exit files",
        "",
        key,
    )


def _python_rows(
    options: SlurmOptions,
    host: str,
    python: str,
    sections: dict[str, tuple[int, str]],
    key: str,
    deep: bool,
) -> list[Check]:
    if options.container is not None:
        python, where = options.container.python, "hydra.launcher.container.python"
    else:
        where = "hydra.launcher.python"
    rows = _environment_rows(options, host, python, where, sections.get("python", (1, "")), key, compute_node=False)
    if deep:
        rows += _environment_rows(
            options, "a compute node", python, where, sections.get("deep", (1, "no answer")), key, compute_node=True
        )
    return rows


def _environment_rows(
    options: SlurmOptions,
    host: str,
    python: str,
    where: str,
    section: tuple[int, str],
    key: str,
    *,
    compute_node: bool,
) -> list[Check]:
    """Rows of one run of :func:`job_environment`: a failed set-up line, or the probe's answer."""
    code, out = section
    info = _kv(out)
    failed = setup_failure(info)
    if failed is not None:
        name = info.get("setup_failed", "")
        if compute_node or not name.startswith(f"hydra.launcher.{options.job_setup_key}["):
            return [
                Check(
                    "modules" if "module" in name else "setup",
                    host,
                    FAIL,
                    f"{failed} on {host}; every job would stop there",
                    _setup_fix(name),
                    key,
                )
            ]
        # a setup line may need the job's node or its Slurm variables: the job stops at it if it fails there
        return [
            Check(
                "python",
                host,
                WARN,
                f"not checked: {failed} on {host}; a job whose node fails it too stops there, with it as its reason "
                "(`launcher-core cluster test NAME --deep` runs it on a compute node)",
                "",
                key,
            )
        ]
    if compute_node and "HRLPROBE " not in out and code != 0:
        return [Check("compute node", host, FAIL, f"srun failed: {_first_line(out)}", "check partition/account", key)]
    if options.container is not None and "HRLPROBE " not in out:
        return [
            Check(
                "python in the image",
                host,
                FAIL,
                f"`{options.container.runtime} exec {options.container.image} {python}` does not run on {host}: "
                f"{_first_line(out)}",
                "check hydra.launcher.container (runtime on the PATH after modules/setup, image, python)",
                key,
            )
        ]
    rows = python_checks(host, out, python=python, key=key, where=where)
    if options.container is not None:
        rows = [dataclasses.replace(r, check=f"{r.check} in the image") for r in rows]
    return rows


def _setup_fix(name: str) -> str:
    if name.startswith("hydra.launcher.modules") or name == "hydra.launcher.cuda_module":
        return (
            f"fix {name} (`module avail` lists the modules there), or set hydra.launcher.preflight=false "
            "if only the compute nodes have it"
        )
    return f"fix {name}"


def _kv(out: str) -> dict[str, str]:
    from launcher_core.remote.scripts import parse_kv

    return parse_kv(out)
