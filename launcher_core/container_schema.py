"""``hydra.launcher.container`` of slurm and remote_ssh: its keys and defaults (see
:mod:`launcher_core.container` for what they do). Written with ``typing.Optional``/``List``/``Dict``
and without postponed annotations: OmegaConf reads these types at run time."""

from dataclasses import dataclass, field


@dataclass
class ContainerConf:
    """Run the job's Python in a Singularity/Apptainer image (``launcher_core.container``); off while
    ``image`` is null. The code dir and sweep dir are always bound."""

    # path of the image (.sif or sandbox dir) on the machines that run the jobs; null = no container
    image: str | None = None
    # singularity | apptainer
    runtime: str = "singularity"
    # extra binds SRC[:DST[:ro|rw]] (absolute paths)
    binds: list[str] = field(default_factory=list)
    # auto (--nv when GPUs are requested) | true | false
    nv: str = "auto"
    # more arguments for `<runtime> exec`, before the image
    extra_args: list[str] = field(default_factory=list)
    # environment inside the container (--env NAME=VALUE)
    env: dict[str, str] = field(default_factory=dict)
    # Python command inside the image (needs hydra-core, cloudpickle and this package)
    python: str = "python"
