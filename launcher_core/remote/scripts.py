"""The POSIX sh scripts remote_ssh runs on a host (sent on stdin to ``sh -s``), and their answers.

Every value put into a script is a path, a job id, a number or a user setting; paths and ids
go through ``shlex.quote``. Override values never appear: they only live in pickled configs.
The scripts avoid subshells where they loop over jobs, so a poll of many jobs forks little.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

from launcher_core.jobs import RESULT_FILE, JobState, JobStatus, LossCause
from launcher_core.runtime.runner import BOOT_ID, CANCELLED, CLEANUP, EXIT_STATUS, PID

q = shlex.quote


def remote_path_expr(path: str) -> str:
    """A shell word for a remote path; ``~/x`` and relative paths are under ``$HOME``."""
    if path in ("~", ""):
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + q(path[2:])
    if path.startswith("/"):
        return q(path)
    return '"$HOME"/' + q(path)


# POSIX sh helpers (dash, bash, busybox): no subshells, so a poll of many jobs forks almost nothing.
# st PID: S = start time of PID (field 22 of /proc/PID/stat, after the last ")"), empty if gone.
# "kill -s SIG -- -PGID" is the form both dash and bash accept for a process group.
_SH_PROC = r"""set -f
st() {
  S=
  [ -r "/proc/$1/stat" ] || return 0
  read -r s < "/proc/$1/stat" || return 0
  s=${s##*) }
  set -- $s
  S=${20}
}
reused() { st "$1"; [ -n "$S" ] && [ "$S" != "$2" ]; }
grp() { kill -s 0 -- "-$1" 2>/dev/null; }
"""


def prepare_script(
    *,
    remote_dir: str,
    sweep_id: str,
    tag: str,
    rel_sweep: str | None,
    host_key: str,
    container_image: str | None = None,
) -> str:
    """Create the dirs, claim the remote sweep dir, report paths and the snapshot state.

    With ``container_image`` (a path on the host) the image is looked for first: if it is missing
    the script reports that and stops before it creates anything.
    """
    mirror = f'sd="$rd/runs/"{q(rel_sweep)}\nif ! claim "$sd"; then sd="$rd/runs/by-id/"{q(sweep_id)}; claim "$sd"; fi'
    by_id = f'sd="$rd/runs/by-id/"{q(sweep_id)}\nclaim "$sd" || {{ echo "sweep dir $sd is taken" >&2; exit 3; }}'
    return f"""set -e
{_image_check(container_image) if container_image else ""}rd={remote_path_expr(remote_dir)}
mkdir -p "$rd/snapshots/"{q(sweep_id)} "$rd/slots/"{q(host_key)}
claim() {{
  mkdir -p "$1"
  umask 077
  mkdir -p "$1/.launcher/remote_ssh"
  chmod 700 "$1/.launcher"
  f="$1/.launcher/remote_ssh/sweep_id"
  if [ -s "$f" ]; then read -r owner < "$f"; [ "$owner" = {q(sweep_id)} ]; return; fi
  printf '%s\\n' {q(sweep_id)} > "$f"
}}
{mirror if rel_sweep else by_id}
printf 'HRL remote_dir=%s\\n' "$rd"
printf 'HRL sweep_dir=%s\\n' "$sd"
snap="$rd/snapshots/"{q(f"{sweep_id}/{tag}")}
if [ -e "$snap.complete" ]; then echo "HRL snapshot_complete=1"; fi
if [ -s "$rd/snapshots/LATEST" ]; then
  read -r latest < "$rd/snapshots/LATEST"
  if [ -d "$rd/snapshots/$latest" ]; then printf 'HRL latest=%s\\n' "$rd/snapshots/$latest"; fi
fi
"""


def _image_check(image: str) -> str:
    """Report the image's path on the host (``~/`` expanded), or that it is missing/unreadable and stop."""
    return f"""img={remote_path_expr(image)}
if [ ! -e "$img" ]; then printf 'HRL container_image_missing=%s\\n' "$img"; exit 0; fi
if [ ! -r "$img" ]; then printf 'HRL container_image_unreadable=%s\\n' "$img"; exit 0; fi
printf 'HRL container_image=%s\\n' "$img"
"""


def container_check_script(*, prelude: str, runtime: str) -> str:
    """Is the container runtime on the PATH the jobs will have (after env setup and setup_commands)?"""
    return f"""set -e
{prelude}
if command -v {q(runtime)} >/dev/null 2>&1; then
  printf 'HRL container_runtime=%s\\n' "$(command -v {q(runtime)})"
else
  printf 'HRL container_runtime_missing=%s\\n' "$PATH"
fi
"""


# --- set-up lines that stop at the first failure, naming it ----------------------------------------
SETUP_FAILED_RC = 97  # exit code of a script stopped by a failing set-up line (checked_lines)


def checked_lines(lines: Sequence[str], key: str) -> str:
    """The user's set-up ``lines`` (``setup_commands``), each run in the current shell (so
    ``source``, ``export`` and ``conda activate`` last) and checked: the first one that ends
    non-zero prints ``HRL setup_failed=KEY[i]``, its text, exit code and stderr (``HRL`` lines,
    :func:`setup_failure` reads them) and exits :data:`SETUP_FAILED_RC`, under ``set -e`` or not.

    A line is the shell its author wrote (several lines, ``;`` and ``&&`` allowed): like a line
    typed at a prompt, its status is its last command's. Its text appears once more, quoted, as
    data for the message."""
    return checked_steps([(f"{key}[{n}]", line) for n, line in enumerate(lines)])


def checked_steps(steps: Sequence[tuple[str, str]]) -> str:
    """:func:`checked_lines` for ``(name, shell)`` pairs."""
    if not steps:
        return ""
    out = ['hrl_err=$(mktemp "${TMPDIR:-/tmp}/hrl-setup.XXXXXX")']  # private (0600), a name nobody chose
    for name, line in steps:
        out += [
            "{",
            line,
            f"}} 2>\"$hrl_err\" || {{ hrl_rc=$?; printf 'HRL setup_failed=%s\\n' {q(name)};"
            f" printf 'HRL setup_line=%s\\n' {q(one_line(line))};"
            " printf 'HRL setup_rc=%s\\n' \"$hrl_rc\";"
            " printf 'HRL setup_msg=%s\\n' \"$(tail -c 2000 \"$hrl_err\" 2>/dev/null | tr -s '\\n' ' ')\";"
            f' rm -f "$hrl_err"; exit {SETUP_FAILED_RC}; }}',
        ]
    out.append('rm -f "$hrl_err"')
    return "\n".join(out)


def one_line(text: str, limit: int = 200) -> str:
    """A set-up line as messages show it: whitespace runs as one space, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def setup_failure(info: dict[str, str]) -> str | None:
    """``hydra.launcher.setup_commands[1] `module load x` failed (exit 1): <its stderr>`` from the
    ``HRL`` lines of a script stopped by :func:`checked_lines` (None if none failed)."""
    if "setup_failed" not in info:
        return None
    key, line, rc = info["setup_failed"], info.get("setup_line", ""), info.get("setup_rc", "?")
    message = info.get("setup_msg", "").strip()
    return f"{key} `{line}` failed (exit {rc})" + (f": {message}" if message else " and printed nothing")


def finish_snapshot_script(
    *,
    prelude: str,
    remote_dir: str,
    snapshot: str,
    latest: str,
    uv_sync: str | None,
    probe: str | None = None,
) -> str:
    """Enter the job environment (``prelude``) in the new snapshot, run ``uv sync`` there, then the
    Python ``probe`` (a shell command printing the pre-flight probe's answer) in the environment
    the jobs will have; then the snapshot is marked complete and becomes ``snapshots/LATEST``.

    A failing ``uv sync`` prints ``HRL uv_sync_failed=COMMAND`` and its output's last lines (``HRL-UV ``) and stops
    (exit 0: the caller reads why); the probe's answer is printed for the caller to judge."""
    sync = ""
    if uv_sync:
        sync = f"""hrl_uv_log=$(mktemp "${{TMPDIR:-/tmp}}/hrl-uv.XXXXXX")
if ! {{
{uv_sync} sync
}} >"$hrl_uv_log" 2>&1; then
  printf 'HRL uv_sync_failed=%s\\n' {q(uv_sync + " sync")}
  tail -n 15 "$hrl_uv_log" | sed 's/^/HRL-UV /'
  rm -f "$hrl_uv_log"
  exit 0
fi
rm -f "$hrl_uv_log"
"""
    check = ""
    if probe:
        check = f"""hrl_out=$({probe} 2>&1) && hrl_rc=0 || hrl_rc=$?
printf 'HRL probe_rc=%s\\n' "$hrl_rc"
printf '%s\\n' "$hrl_out" | grep '^HRLPROBE ' ||
  printf 'HRL probe_out=%s\\n' "$(printf '%s' "$hrl_out" | tail -c 600 | tr -s '\\n' ' ')"
"""
    return f"""set -e
{prelude}
{sync}{check}touch {q(snapshot + ".complete")}
printf '%s\\n' {q(latest)} > {q(remote_dir + "/snapshots/.LATEST")}.$$
mv -f {q(remote_dir + "/snapshots/.LATEST")}.$$ {q(remote_dir + "/snapshots/LATEST")}
"""


def start_script(*, prelude: str, python: str, batch_file: str) -> str:
    # python is the user's own command (e.g. "uv run --no-sync python"): a shell fragment on purpose
    return f"""set -e
{prelude}
exec {python} -m launcher_core.runtime.runner {q(batch_file)}
"""


def poll_script(jobs: Iterable[tuple[str, str, str]], grace_s: float) -> str:
    """One line per job: ``ID running|queued|cleanup|cancelled|lost|rebooted|orphaned|done CODE HAS_RESULT``
    (``rebooted``: lost, and the host's boot id is not the one the job started under).

    A finished job whose process group still has members (orphans it left behind) gets
    SIGTERM now and SIGKILL once ``grace_s`` passed since; it is reported as ``cleanup``
    until the group is gone. Start times guard every PID against reuse.
    """
    calls = "\n".join(f"chk {q(j)} {q(d)} {q(r)}" for j, d, r in jobs)
    return f"""{_SH_PROC}
now=$(date +%s)
boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
grace={max(0, round(grace_s))}
same() {{
  [ -s "$1" ] || return 1
  read -r rp rt < "$1" || return 1
  st "$rp"
  [ "$S" = "$rt" ]
}}
chk() {{
  j=$1; d=$2; r=$3
  if [ -s "$d/{PID}" ]; then
    read -r p t < "$d/{PID}"
    st "$p"
    if [ "$S" = "$t" ]; then echo "$j running"; return; fi
    if [ -s "$d/{EXIT_STATUS}" ]; then
      read -r code < "$d/{EXIT_STATUS}"
      if ! reused "$p" "$t" && grp "$p"; then
        if [ -s "$d/{CLEANUP}" ]; then
          read -r since < "$d/{CLEANUP}"
          if [ $((now - since)) -ge "$grace" ]; then kill -s KILL -- "-$p" 2>/dev/null; fi
        else
          echo "$now" > "$d/{CLEANUP}"
          kill -s TERM -- "-$p" 2>/dev/null
        fi
        echo "$j cleanup"; return
      fi
      if [ "$code" != 0 ] && [ -f "$d/{CANCELLED}" ]; then echo "$j cancelled"; return; fi
      res=0; [ -f "$d/{RESULT_FILE}" ] && res=1
      echo "$j done $code $res"; return
    fi
    if [ -f "$d/{CANCELLED}" ]; then echo "$j cancelled"; return; fi
    # the leader died (e.g. kill -9 of the pid in the pid file; its pid is free, not reused)
    # but the job's process group lives on: the task is still running
    if [ -z "$S" ] && grp "$p"; then echo "$j running"; return; fi
    if [ -s "$d/{BOOT_ID}" ] && [ -n "$boot" ] && [ "$(cat "$d/{BOOT_ID}")" != "$boot" ]; then
      echo "$j rebooted"; return
    fi
    echo "$j lost"; return
  fi
  if [ -f "$d/{CANCELLED}" ]; then echo "$j cancelled"; return; fi
  if same "$r"; then echo "$j queued"; return; fi
  if [ -s "$d/{PID}" ]; then echo "$j running"; return; fi
  echo "$j orphaned"
}}
{calls}
"""


def cancel_script(launcher_dirs: Iterable[str], grace_s: float) -> str:
    """Mark jobs cancelled (queued ones never start) and kill the process group of running ones."""
    calls = "\n".join(f"stop {q(d)}" for d in launcher_dirs)
    return f"""{_SH_PROC}
pids=""
stop() {{
  d=$1
  touch "$d/{CANCELLED}" 2>/dev/null || true
  [ -s "$d/{PID}" ] || return 0
  read -r p t < "$d/{PID}" || return 0
  if reused "$p" "$t"; then return 0; fi
  if grp "$p"; then kill -s TERM -- "-$p" 2>/dev/null; pids="$pids $p"; fi
  return 0
}}
{calls}
i=0
while [ -n "$pids" ] && [ "$i" -lt {max(1, round(grace_s * 10))} ]; do
  left=""
  for p in $pids; do if grp "$p"; then left="$left $p"; fi; done
  pids=$left
  [ -n "$pids" ] && sleep 0.1
  i=$((i + 1))
done
for p in $pids; do kill -s KILL -- "-$p" 2>/dev/null; done
echo "HRL cancelled"
"""


def parse_kv(output: str) -> dict[str, str]:
    """``HRL key=value`` lines of a remote script (other output, e.g. from a profile, is ignored)."""
    out = {}
    for line in output.splitlines():
        if line.startswith("HRL "):
            key, _, value = line[4:].partition("=")
            out[key.strip()] = value
    return out


def status_from_line(words: Sequence[str], host: str) -> JobStatus:
    """Map one line of :func:`poll_script` to a JobStatus."""
    kind = words[0] if words else "lost"
    if kind in ("running", "cleanup"):
        return JobStatus(JobState.RUNNING, host=host)
    if kind == "queued":
        return JobStatus(JobState.SUBMITTED, host=host)
    if kind == "cancelled":
        return JobStatus(JobState.CANCELLED, "cancelled", host=host)
    if kind == "orphaned":  # never started: safe to start again
        return JobStatus.lost(LossCause.RUNNER_DIED, f"the job runner on {host} died before starting the job", host)
    if kind == "done" and len(words) >= 3:
        code, has_result = int(words[1]), words[2] == "1"
        if code == 0 and has_result:
            return JobStatus(JobState.COMPLETED, host=host)
        if code == 1 and has_result:
            return JobStatus(JobState.FAILED, "task raised an exception", host=host)
        if code < 0:
            return JobStatus(JobState.FAILED, f"killed by signal {-code} on {host}", host=host)
        return JobStatus(JobState.FAILED, f"exited with code {code} without writing a result", host=host)
    # no exit status: the runner that would have written it died with the job (a reboot, a kill
    # of the whole group); a job killed while its runner lives has one ("killed by signal 9")
    return JobStatus.lost(
        LossCause.HOST_REBOOTED if kind == "rebooted" else LossCause.RUNNER_DIED,
        f"the job's process on {host} is gone without an exit status (killed, out of memory or host restarted)",
        host,
    )


CLEAN_MARK = "HRL-CLEAN"


def clean_script(
    *, sweep_id: str, jobs: Iterable[tuple[str, str, str]], sweeps: Iterable[tuple[str, str, Sequence[str]]]
) -> str:
    """Delete job dirs ``(job_id, sweep_dir, job_dir)``, then whole sweeps ``(sweep_dir,
    snapshots_dir, empty parents)``; paths are checked by the caller (:mod:`launcher_core.clean`).

    Nothing is deleted inside a sweep dir whose claim file (written by :func:`prepare_script`)
    names another sweep. A sweep dir holding another sweep's claim further down is kept. The sweep
    dir's own ``.launcher`` (with the claim) goes last, so an interrupted run can be repeated.
    Answers: ``HRL-CLEAN cleaned|refused JOB_ID`` and ``HRL-CLEAN sweep-cleaned|sweep-kept DIR``.
    """
    job_calls = "\n".join(f"job {q(j)} {q(sd)} {q(jd)}" for j, sd, jd in jobs)
    sweep_calls = []
    for sweep_dir, snapshots, parents in sweeps:
        rmdirs = "".join(f" && rmdir -- {q(p)} 2>/dev/null" for p in parents)
        sweep_calls.append(f"if sweep {q(sweep_dir)} {q(snapshots)}; then true{rmdirs}; fi")
    return f"""set -f
sid={q(sweep_id)}
ours() {{
  f="$1/.launcher/remote_ssh/sweep_id"
  [ -s "$f" ] || return 1
  read -r o < "$f" || return 1
  [ "$o" = "$sid" ]
}}
job() {{
  if [ ! -e "$3" ] && [ ! -L "$3" ]; then echo "{CLEAN_MARK} cleaned $1"; return 0; fi
  if ! ours "$2"; then echo "{CLEAN_MARK} refused $1"; return 0; fi
  if rm -rf -- "$3"; then echo "{CLEAN_MARK} cleaned $1"; else echo "{CLEAN_MARK} refused $1"; fi
}}
sweep() {{
  sd=$1
  if [ -d "$sd" ]; then
    if ours "$sd"; then
      other=$(find "$sd" -mindepth 4 -path '*/.launcher/remote_ssh/sweep_id' -print 2>/dev/null | head -n 1)
      if [ -n "$other" ]; then echo "{CLEAN_MARK} sweep-kept $sd"; return 1; fi
      find "$sd" -mindepth 1 -maxdepth 1 ! -name .launcher -exec rm -rf -- {{}} + || return 1
      rm -rf -- "$sd/.launcher" || return 1
    fi
    rmdir -- "$sd" 2>/dev/null || {{ echo "{CLEAN_MARK} sweep-kept $sd"; return 1; }}
  fi
  rm -rf -- "$2" || return 1
  echo "{CLEAN_MARK} sweep-cleaned $sd"
}}
{job_calls}
{chr(10).join(sweep_calls)}
echo "{CLEAN_MARK} end"
"""


def parse_clean(output: str) -> tuple[set[str], set[str], set[str], set[str]]:
    """(cleaned job ids, refused job ids, cleaned sweep dirs, kept sweep dirs) from :func:`clean_script`."""
    found: dict[str, set[str]] = {k: set() for k in ("cleaned", "refused", "sweep-cleaned", "sweep-kept", "end")}
    for line in output.splitlines():
        mark, _, rest = line.partition(" ")
        kind, _, value = rest.partition(" ")
        if mark == CLEAN_MARK and kind in found:
            found[kind].add(value)
    return found["cleaned"], found["refused"], found["sweep-cleaned"], found["sweep-kept"]


def read_log_script(path: str, offset: int) -> str:
    """The bytes of a log file from ``offset`` on (nothing if it does not exist yet)."""
    return f'f={q(path)}\nif [ -f "$f" ]; then tail -c +{int(offset) + 1} "$f"; fi\n'
