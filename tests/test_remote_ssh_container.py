"""remote_ssh with ``container``: jobs really run inside a container root on the "host".

Sweeps go over the loopback sshd (tests/sshd.py) and run as the non-root test user. The runtime
is the test stand-in ``singularity`` (tests/container_standin): it records its argv and runs the
command with charliecloud's ``ch-run`` in a directory image, so there is no mock between the
launcher and a real unprivileged container. It is copied to a world-readable dir that the
remote user puts on its PATH with ``prepare_commands``, as a user would ``module load apptainer``.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from launcher_core.backends.remote_ssh import RemoteSSHSettings
from launcher_core.errors import ConfigError
from launcher_core.jobs import JobState
from tests.conftest import REPO_ROOT
from tests.slurm_cluster import STANDIN_DIR, skeleton_image
from tests.sshd import REMOTE_SITE, REMOTE_VENV, USERS, SSHTestEnv, make_project, shared_dir, shared_file
from tests.test_remote_ssh import launch, outcomes, result, rows, states

pytestmark = pytest.mark.ssh

MARKER = "inside the test image"

APP = '''\
"""Reports from inside the container: a file only the image has, and what the job saw."""
import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    if cfg.x in cfg.raise_on:
        raise ValueError(f"bad x={cfg.x}")
    with open("/etc/hrl-container-marker") as f:
        marker = f.read().strip()
    result = {
        "x": cfg.x,
        "text": cfg.text,
        "marker": marker,
        "ch_running": os.environ.get("CH_RUNNING"),
        "hrl_a": os.environ.get("HRL_A"),
        "job_id": os.environ.get("HRL_JOB_ID"),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "python": sys.executable,
    }
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "inside.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
'''


def _userns_problem(user: str) -> str | None:
    """Why ``user`` cannot run ch-run here (checked, not assumed), or None."""
    if shutil.which("ch-run") is None:
        return "charliecloud's ch-run is needed by the singularity stand-in (apt-get install charliecloud-runtime)"
    probe = subprocess.run(
        ["runuser", "-u", user, "--", "unshare", "--user", "--map-root-user", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"{user} cannot create a user namespace (needed by ch-run): {probe.stderr.strip()}"
    return None


@pytest.fixture(name="standin_bin")
def standin_bin_fixture() -> Path:
    """A world-readable dir holding the stand-in ``singularity`` (the repo may not be readable)."""
    reason = _userns_problem(USERS[0])
    if reason:
        pytest.skip(reason)
    bin_dir = shared_dir("hrl-standin") / "bin"
    bin_dir.mkdir(mode=0o755)
    shutil.copy2(STANDIN_DIR / "singularity", bin_dir / "singularity")
    os.chmod(bin_dir / "singularity", 0o755)
    return bin_dir


def _image(path: Path, owner: str) -> Path:
    """A charliecloud directory image owned by the remote user (the stand-in creates bind targets)."""
    skeleton_image(path, MARKER)
    user = pwd.getpwnam(owner)
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, user.pw_uid, user.pw_gid)
    return path


def _project(root: Path) -> Path:
    proj = make_project(root)
    (proj / "app.py").write_text(APP)
    return proj


def _path_prepend(bin_dir: Path) -> str:
    """``prepare_commands`` as a Hydra list override: the stand-in's dir first on the PATH."""
    line = f"PATH={shlex.quote(str(bin_dir))}:$PATH; export PATH"
    return "[" + json.dumps(line) + "]"


def _calls(log: Path) -> list[list[str]]:
    """The stand-in's calls that ran jobs (not the pre-flight's probe of the image's Python)."""
    return [argv for argv in _logged(log) if not any("HRLPROBE" in a for a in argv)]


def _logged(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _hydra_quoted(value: str) -> str:
    """Hydra's quoted-string syntax (the values hold no backslash or single quote)."""
    assert "'" not in value and "\\" not in value
    return f"'{value}'"


@pytest.mark.timeout(300)
def test_jobs_run_inside_the_container_with_the_exact_argv_and_results_come_home(
    ssh_env: SSHTestEnv, standin_bin: Path, tmp_path: Path
) -> None:
    canary = shared_dir("hrl-canary") / "canary"
    # shell syntax in the image path, a container.env value and a task value: data everywhere
    image = _image(shared_dir("hrl-image") / f"img $(touch {canary}) `touch {canary}`; x", USERS[0])
    env_value = f"one,two $(touch {canary}) 'q'"
    text = f"$(touch {canary}); `touch {canary}`"
    argv_log = shared_file("hrl-argv")
    proj = _project(tmp_path / "proj")
    name = "container-e2e"
    connections = ssh_env.server.connections()

    proc, sweep = launch(
        ssh_env,
        proj,
        name,
        "x=1,2,3",
        "raise_on=[3]",
        f"text={_hydra_quoted(text)}",
        f"hydra.launcher.container.image={_hydra_quoted(str(image))}",
        f"hydra.launcher.container.python={ssh_env.python}",
        f"hydra.launcher.container.binds=[{REMOTE_VENV},{REMOTE_SITE}:{REMOTE_SITE}:ro]",
        f'+hydra.launcher.container.env.HRL_A="{env_value}"',
        f"+hydra.launcher.env.vars.CONTAINER_STANDIN_LOG={argv_log}",
        max_parallel=3,
        prepare_commands=_path_prepend(standin_bin),
    )

    # the failed task comes back as a failure with its own exception, like any remote_ssh job
    assert proc.returncode != 0 and "bad x=3" in proc.stderr, proc.stderr
    got = outcomes(sweep)
    assert [got[n][0] for n in range(3)] == [JobState.COMPLETED, JobState.COMPLETED, JobState.FAILED]
    assert got[2][1] == "ValueError: bad x=3"
    assert {s for s, _ in states(sweep).values()} == {JobState.PULLED}
    assert ssh_env.server.connections() - connections == 1  # the host checks reuse the launch's connection

    remote = ssh_env.remote_path(name)
    remote_sweep = remote / "runs" / "multirun" / name
    (snapshot,) = (remote / "snapshots").glob("*/*/")
    job_ids = {row.idx: row.job_id for row in rows(sweep)}
    for num in range(2):
        ret = result(sweep, num)
        assert ret.return_value == {
            "x": num + 1,
            "text": text,  # verbatim, nothing ran it
            "marker": MARKER,  # /etc/hrl-container-marker exists only in the image
            "ch_running": "Weird Al Yankovic",  # set by ch-run inside its containers
            "hrl_a": env_value,  # container.env, CSV-quoted for --env and read back whole
            "job_id": job_ids[num],  # the runner's environment reaches the job inside
            "uid": pwd.getpwnam(USERS[0]).pw_uid,  # unprivileged: the remote test user
            "cwd": str(snapshot),  # the bound code snapshot, as without a container
            "python": ssh_env.python,
        }
        # outputs written inside the container are on the host and were pulled home
        assert json.loads((sweep / str(num) / "inside.json").read_text()) == ret.return_value
        assert (remote_sweep / str(num) / "inside.json").exists()
        assert (sweep / str(num) / ".hydra" / "config.yaml").exists()
    assert "bad x=3" in (sweep / "2" / ".launcher" / "stderr.log").read_text()  # traceback pulled home
    assert not canary.exists()
    # container.env is redacted like env.vars in what Hydra writes (it may hold secrets)
    hydra_files = [sweep / "multirun.yaml", *(sweep / str(n) / ".hydra" / "hydra.yaml" for n in range(3))]
    assert [env_value in p.read_text() for p in hydra_files] == [False] * 4
    assert "HRL_A: REDACTED" in (sweep / "multirun.yaml").read_text()

    sweep_payload = next((sweep / ".launcher" / "remote_ssh").glob("*/sweep-*.pkl")).relative_to(sweep)
    # one batch file per host and launch: the job table the jobs compose their configs from
    (batch_file,) = (sweep / ".launcher" / "remote_ssh").glob("*/batches/*.json")
    batch_rel = batch_file.relative_to(sweep)
    index = {job["idx"]: job["index"] for job in json.loads(batch_file.read_text())["jobs"]}
    expected = [
        [
            "singularity",
            "exec",
            # snapshot and sweep dir first (same depth: by name, runs/ before snapshots/), then container.binds
            "--bind",
            str(remote_sweep),
            "--bind",
            str(snapshot),
            "--bind",
            str(REMOTE_VENV),
            "--bind",
            f"{REMOTE_SITE}:{REMOTE_SITE}:ro",
            "--env",
            '"HRL_A=' + env_value + '"',
            str(image),
            ssh_env.python,
            "-m",
            "launcher_core.runtime.remote_worker",
            str(remote_sweep / sweep_payload),
            str(remote_sweep / batch_rel),
            str(index[num]),
        ]
        for num in sorted(range(3), key=lambda n: str(index[n]))
    ]
    assert any("HRLPROBE" in a for argv in _logged(argv_log) for a in argv)  # the image's Python was checked
    assert sorted(_calls(argv_log), key=lambda argv: argv[-1]) == expected


@pytest.mark.parametrize("form", ["absolute", "home"])
@pytest.mark.timeout(120)
def test_missing_image_on_the_host_names_key_and_value_and_starts_nothing(
    ssh_env: SSHTestEnv, standin_bin: Path, tmp_path: Path, form: str
) -> None:
    canary = shared_dir("hrl-canary") / "canary"
    if form == "absolute":
        image = str(shared_dir("hrl-image") / f"gone $(touch {canary}).sif")
        shown = repr(image)
    else:
        image = "~/hrl-no-such-dir/train.sif"
        shown = f"{image!r} ({ssh_env.home(USERS[0]) / 'hrl-no-such-dir' / 'train.sif'})"
    argv_log = shared_file("hrl-argv")
    proj = _project(tmp_path / "proj")
    name = f"container-no-image-{form}"

    proc, sweep = launch(
        ssh_env,
        proj,
        name,
        "x=1,2",
        f"hydra.launcher.container.image={_hydra_quoted(image)}",
        f"+hydra.launcher.env.vars.CONTAINER_STANDIN_LOG={argv_log}",
        prepare_commands=_path_prepend(standin_bin),
    )

    assert proc.returncode != 0
    host = ssh_env.server.alias(USERS[0])
    assert f"hydra.launcher.container.image: no image at {shown} on host {host}" in proc.stderr, proc.stderr
    assert "none of the 2 jobs was started" in proc.stderr
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}
    assert not ssh_env.remote_path(name).exists()  # checked before anything was created there
    assert argv_log.read_text() == "" and not canary.exists()


@pytest.mark.timeout(120)
def test_runtime_missing_on_the_host_path_names_the_key_and_starts_nothing(ssh_env: SSHTestEnv, tmp_path: Path) -> None:
    image = _image(shared_dir("hrl-image") / "img", USERS[0])
    proj = _project(tmp_path / "proj")
    name = "container-no-runtime"
    proc, sweep = launch(
        ssh_env,
        proj,
        name,
        "x=1,2",
        f"hydra.launcher.container.image={image}",
        "hydra.launcher.container.runtime=apptainer",
        prepare_commands='["PATH=/usr/bin:/bin; export PATH"]',  # no apptainer there on this machine
    )
    assert proc.returncode != 0
    host = ssh_env.server.alias(USERS[0])
    assert f"hydra.launcher.container.runtime: 'apptainer' is not on the PATH of host {host}" in proc.stderr
    assert "PATH=/usr/bin:/bin" in proc.stderr and "none of the 2 jobs was started" in proc.stderr
    assert {s for s, _ in states(sweep).values()} == {JobState.PENDING}
    remote_sweep = ssh_env.remote_path(name) / "runs" / "multirun" / name
    assert not (remote_sweep / "0").exists() and not (remote_sweep / "1").exists()  # no job dir, no job
    assert not list((remote_sweep / ".launcher" / "remote_ssh").glob("*/batches"))


# --- settings (no sshd needed, but kept with the ssh tests they belong to) -----------------------
@pytest.mark.parametrize(
    "container, message",
    [
        ({"image": "/i.sif", "runtime": "docker"}, "hydra.launcher.container.runtime must be one of"),
        ({"image": "/i.sif", "binds": ["data:/data"]}, "hydra.launcher.container.binds: 'data:/data' needs absolute"),
        ({"image": "/i.sif", "nv": "maybe"}, "hydra.launcher.container.nv must be auto, true or false"),
        ({"image": "/i.sif", "env": {"1X": "a"}}, "hydra.launcher.container.env: '1X' is not a valid"),
        ({"image": "/i.sif", "imagee": "x"}, r"hydra.launcher.container has unknown keys \['imagee'\]"),
        ({"image": "images/train.sif"}, "hydra.launcher.container.image must be an absolute path on the host"),
        ({"image": "~other/train.sif"}, r"~/PATH \(your home there\) or a URI"),
        ("/i.sif", "hydra.launcher.container must be a mapping"),
    ],
)
def test_bad_container_settings_name_the_key(container: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RemoteSSHSettings.from_mapping({"hosts": ["h"], "container": container})


def test_container_settings_are_validated_and_kept_out_of_the_state_store() -> None:
    settings = RemoteSSHSettings.from_mapping(
        {"hosts": ["h"], "container": {"image": "~/i.sif", "runtime": "apptainer", "env": {"TOKEN": "s3cret"}}}
    )
    assert settings.container is not None and settings.container.env == (("TOKEN", "s3cret"),)
    assert settings.container.runtime == "apptainer" and settings.container.image == "~/i.sif"
    assert "container" not in settings.stored_config()  # may hold secrets; polling does not need it
    uri = RemoteSSHSettings.from_mapping({"hosts": ["h"], "container": {"image": "docker://python:3.11"}})
    assert uri.container is not None and uri.container.image == "docker://python:3.11"
    off = RemoteSSHSettings.from_mapping({"hosts": ["h"], "container": {"image": None, "runtime": "singularity"}})
    assert off.container is None


def test_container_preset_composes_and_validates(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = tmp_path / "conf"
    (conf / "cluster").mkdir(parents=True)
    (conf / "config.yaml").write_text("lr: 0.1\n")
    shutil.copy(REPO_ROOT / "conf" / "cluster" / "ssh_container.yaml", conf / "cluster" / "ssh_container.yaml")
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(config_name="config", overrides=["+cluster=ssh_container"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(launcher, dict) and launcher["_target_"].endswith("RemoteSSHLauncher")
    settings = RemoteSSHSettings.from_mapping({k: v for k, v in launcher.items() if k != "_target_"})
    assert settings.container is not None
    assert (settings.container.runtime, settings.container.image) == ("apptainer", "~/images/train.sif")
    assert settings.container.binds == ("/data:/data:ro",) and settings.gpus_per_job == 1
