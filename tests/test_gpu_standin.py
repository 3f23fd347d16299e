"""The stand-in ``nvidia-smi`` (tests/gpu_standin.py) answers in real ``nvidia-smi``'s formats.

It stands in for a GPU driver, which cannot exist here; these checks run the script itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.gpu_standin import install_nvidia_smi, remove_nvidia_smi, stand_in_uuid


def _smi(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=30)


def test_lists_and_queries_like_nvidia_smi(tmp_path: Path) -> None:
    smi = install_nvidia_smi(tmp_path / "bin", 4, util=[35, 0, 0, 7], mem=1024, apps=[(4242, 2, 900)])
    listed = _smi(smi, "-L").stdout.splitlines()
    assert listed[0] == f"GPU 0: NVIDIA Stand-in GPU (UUID: {stand_in_uuid(0)})" and len(listed) == 4
    csv = _smi(smi, "--query-gpu=index,utilization.gpu,memory.used", "--format=csv").stdout.splitlines()
    assert csv[:2] == ["index, utilization.gpu [%], memory.used [MiB]", "0, 35 %, 1024 MiB"]
    bare = _smi(smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits").stdout.splitlines()
    assert bare == ["0, 81559", "1, 81559", "2, 81559", "3, 81559"]
    apps = _smi(smi, "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv").stdout.splitlines()
    assert apps == ["pid, gpu_uuid, used_gpu_memory [MiB]", f"4242, {stand_in_uuid(2)}, 900 MiB"]
    assert _smi(smi, "-i", "3", "--query-gpu=utilization.gpu", "--format=csv,noheader").stdout == "7 %\n"


def test_refuses_unknown_fields_and_can_be_removed(tmp_path: Path) -> None:
    smi = install_nvidia_smi(tmp_path / "bin", 2)
    bad = _smi(smi, "--query-gpu=index,bogus", "--format=csv")
    assert bad.returncode == 2 and bad.stdout == 'Field "bogus" is not a valid field to query.\n'
    install_nvidia_smi(tmp_path / "bin", 1)  # rewriting changes the answers
    assert len(_smi(smi, "-L").stdout.splitlines()) == 1
    remove_nvidia_smi(tmp_path / "bin")
    assert not smi.exists()
