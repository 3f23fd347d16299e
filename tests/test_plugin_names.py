"""``--info plugins`` names each of our launchers under a name no other installed plugin uses
(hydra-submitit-launcher, installed for the benchmark, has a ``SlurmLauncher`` of its own)."""

from __future__ import annotations

from tests.conftest import REPO_ROOT, run_app

OURS = ("LocalPoolLauncher", "RemoteSSHLauncher", "SlurmArrayLauncher", "Ec2Launcher", "SpillLauncher")


def test_each_launcher_is_listed_once_under_its_own_name() -> None:
    result = run_app(REPO_ROOT / "example_app" / "train.py", ["--info", "plugins"], cwd=REPO_ROOT / "example_app")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Launcher:")
    names = []
    for line in lines[start + 2 :]:
        if not line.startswith("\t\t"):
            break
        names.append(line.strip())
    assert "SlurmLauncher" in names  # hydra-submitit-launcher's, beside ours
    for ours in OURS:
        assert names.count(ours) == 1, names
    assert len(names) == len(set(names)), names
