"""A stand-in ``nvidia-smi`` for the tests: it stands in for a real GPU driver, which cannot exist
on the machines these tests run on (no GPU, no NVIDIA kernel module).

:func:`install_nvidia_smi` writes an executable ``nvidia-smi`` into a directory; put that
directory first on a PATH (the local one, or a test sshd user's) and every caller sees
``n_gpus`` GPUs. It answers what real ``nvidia-smi`` answers, in the same text formats:

- ``nvidia-smi -L`` (``--list-gpus``): ``GPU 0: NVIDIA Stand-in GPU (UUID: GPU-...)``;
- ``nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits]`` for ``index``, ``uuid``,
  ``name``, ``utilization.gpu``, ``memory.used``, ``memory.total``, ``memory.free``,
  ``temperature.gpu`` and ``count``: a header such as
  ``index, utilization.gpu [%], memory.used [MiB]`` (the header keeps its units under
  ``nounits``, as the real one does) and rows such as ``0, 35 %, 1024 MiB`` (``0, 35, 1024``
  with ``nounits``);
- ``nvidia-smi --query-compute-apps=FIELDS --format=csv,...`` for ``pid``, ``gpu_uuid``,
  ``gpu_bus_id``, ``process_name`` and ``used_memory`` (header ``used_gpu_memory [MiB]``):
  one row per process in ``apps``, only the header when there is none;
- ``-i``/``--id=0,2`` limits the rows to those GPUs.

An unknown field is refused as the real one refuses it (``Field "x" is not a valid field to
query.``, exit 2). The answers are fixed when the script is written; call
:func:`install_nvidia_smi` again to change them. The script runs under ``/usr/bin/python3``
(any user's, e.g. a test sshd login's) and reads nothing but its own text.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["GpuApp", "install_nvidia_smi", "remove_nvidia_smi", "stand_in_uuid"]

DEFAULT_NAME = "NVIDIA Stand-in GPU"
DEFAULT_TOTAL_MIB = 81559  # what an 80 GB card reports

# (pid, GPU index, used MiB): one process on a GPU, as --query-compute-apps lists it
GpuApp = tuple[int, int, int]

_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

_SCRIPT = r"""
import json
import sys

DATA = json.loads(__DATA__)
GPU_FIELDS = {
    "index": ("index", ""),
    "uuid": ("uuid", ""),
    "gpu_uuid": ("uuid", ""),
    "name": ("name", ""),
    "gpu_name": ("name", ""),
    "utilization.gpu": ("util", "%"),
    "memory.used": ("used", "MiB"),
    "memory.total": ("total", "MiB"),
    "memory.free": ("free", "MiB"),
    "temperature.gpu": ("temp", ""),
    "count": ("count", ""),
}
APP_FIELDS = {
    "pid": ("pid", "", "pid"),
    "gpu_uuid": ("uuid", "", "gpu_uuid"),
    "gpu_bus_id": ("bus", "", "gpu_bus_id"),
    "process_name": ("process", "", "process_name"),
    "name": ("process", "", "process_name"),
    "used_memory": ("used", "MiB", "used_gpu_memory"),
    "used_gpu_memory": ("used", "MiB", "used_gpu_memory"),
}


def fail(message, code=2):
    sys.stdout.write(message + "\n")
    sys.exit(code)


def options(argv):
    opts = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-L", "--list-gpus"):
            opts["list"] = True
        elif arg in ("-i", "--id") and i + 1 < len(argv):
            i += 1
            opts["id"] = argv[i]
        elif "=" in arg and arg.startswith("--"):
            key, value = arg[2:].split("=", 1)
            opts[key] = value
        elif arg.startswith("-i") and len(arg) > 2:
            opts["id"] = arg[2:]
        else:
            fail('Invalid combination of input arguments. Please run "nvidia-smi -h" for help.')
        i += 1
    return opts


def gpus(opts):
    rows = DATA["gpus"]
    if "id" in opts:
        wanted = opts["id"].split(",")
        rows = [g for g in rows if str(g["index"]) in wanted or g["uuid"] in wanted]
        if not rows:
            fail("No devices were found", 6)
    return rows


def table(fields, rows, unit_of, header_of, fmt):
    if fmt[0] != "csv":
        fail(f'"{",".join(fmt)}" is not a valid format. Valid formats are: csv')
    lines = []
    if "noheader" not in fmt:
        lines.append(", ".join(header_of(f) for f in fields))
    for row in rows:
        cells = []
        for f in fields:
            value, unit = row[f], unit_of(f)
            cells.append(f"{value} {unit}" if unit and "nounits" not in fmt else str(value))
        lines.append(", ".join(cells))
    return "".join(line + "\n" for line in lines)


def query(spec, known, rows, fmt):
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    for f in fields:
        if f not in known:
            fail(f'Field "{f}" is not a valid field to query.')
    cells = [{f: row[known[f][0]] for f in fields} for row in rows]

    def unit_of(f):
        return known[f][1]

    def header_of(f):
        name = known[f][2] if len(known[f]) > 2 else f
        return f"{name} [{unit_of(f)}]" if unit_of(f) else name

    return table(fields, cells, unit_of, header_of, fmt)


def main(argv):
    opts = options(argv)
    shown = gpus(opts)
    if opts.get("list"):
        return "".join(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n" for g in shown)
    fmt = [p.strip() for p in opts.get("format", "").split(",")]
    if "query-gpu" in opts:
        rows = [dict(g, count=len(DATA["gpus"])) for g in shown]
        return query(opts["query-gpu"], GPU_FIELDS, rows, fmt)
    if "query-compute-apps" in opts:
        uuids = {g["uuid"] for g in shown}
        rows = [a for a in DATA["apps"] if a["uuid"] in uuids]
        return query(opts["query-compute-apps"], APP_FIELDS, rows, fmt)
    if not argv:
        return DATA["summary"]
    fail('Invalid combination of input arguments. Please run "nvidia-smi -h" for help.')


sys.stdout.write(main(sys.argv[1:]))
"""


def stand_in_uuid(index: int) -> str:
    """The UUID the stand-in gives GPU ``index`` (the shape real ones have)."""
    return f"GPU-{index:08x}-5eed-4a11-9b0d-{index:012x}"


def _per_gpu(value: int | Sequence[int], n_gpus: int, key: str) -> list[int]:
    values = [int(value)] * n_gpus if isinstance(value, int) else [int(v) for v in value]
    if len(values) != n_gpus:
        raise ValueError(f"{key}: {len(values)} values for {n_gpus} GPUs")
    return values


def _data(
    n_gpus: int, util: list[int], mem: list[int], total_mib: int, name: str, apps: Sequence[GpuApp]
) -> dict[str, object]:
    gpus = [
        {
            "index": i,
            "uuid": stand_in_uuid(i),
            "name": name,
            "util": util[i],
            "used": mem[i],
            "total": total_mib,
            "free": total_mib - mem[i],
            "temp": 30 + util[i] // 2,
            "bus": f"00000000:{i + 0x17:02X}:00.0",
        }
        for i in range(n_gpus)
    ]
    procs = [
        {"pid": pid, "uuid": stand_in_uuid(gpu), "bus": gpus[gpu]["bus"], "process": "python", "used": used}
        for pid, gpu, used in apps
    ]
    summary = "".join(f"| {g['index']}  {name}  {g['util']}%  {g['used']}MiB / {total_mib}MiB |\n" for g in gpus)
    return {"gpus": gpus, "apps": procs, "summary": summary or "No devices were found\n"}


def install_nvidia_smi(
    bin_dir: Path,
    n_gpus: int = 4,
    *,
    util: int | Sequence[int] = 0,
    mem: int | Sequence[int] = 0,
    total_mib: int = DEFAULT_TOTAL_MIB,
    name: str = DEFAULT_NAME,
    apps: Sequence[GpuApp] = (),
) -> Path:
    """Write ``bin_dir/nvidia-smi`` (created 0755, readable by every user) answering for ``n_gpus``
    GPUs; ``util`` (percent) and ``mem`` (used MiB) are one value for all GPUs or one per GPU;
    ``apps`` are the processes ``--query-compute-apps`` lists. Returns the script's path."""
    if n_gpus < 0:
        raise ValueError(f"n_gpus: {n_gpus} is negative")
    for pid, gpu, _used in apps:
        if not 0 <= gpu < n_gpus:
            raise ValueError(f"apps: process {pid} is on GPU {gpu}, there are {n_gpus}")
    data = _data(n_gpus, _per_gpu(util, n_gpus, "util"), _per_gpu(mem, n_gpus, "mem"), total_mib, name, apps)
    bin_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(bin_dir, 0o755)
    script = bin_dir / "nvidia-smi"
    text = f"#!{_PYTHON}\n" + _SCRIPT.replace("__DATA__", repr(json.dumps(data)))
    tmp = bin_dir / ".nvidia-smi.tmp"
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, script)  # a caller running it meanwhile sees the old answers or the new ones
    return script


def remove_nvidia_smi(bin_dir: Path) -> None:
    """Take the stand-in away again (a machine "without nvidia-smi")."""
    (bin_dir / "nvidia-smi").unlink(missing_ok=True)
