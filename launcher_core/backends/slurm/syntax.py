"""What the slurm settings (:mod:`.settings`), the batch script (:mod:`.sbatch`) and the site
template (:mod:`.template`) share: Slurm's rule for abbreviated option names and the names of the
script's blocks. It imports none of them."""

from __future__ import annotations

from collections.abc import Sequence

#: the script's blocks, in order; an ``sbatch_template`` may override any of them (docs/slurm.md)
BLOCKS = ("shebang", "comment", "sbatch", "trap", "job_dir", "environment", "setup", "run")


def abbreviates(name: str, options: Sequence[str]) -> str | None:
    """The option of ``options`` that ``name`` spells or abbreviates (Slurm's commands take unambiguous
    prefixes of long options, ``--sig`` is ``--signal``), or None."""
    return next((o for o in options if o == name or (len(name) >= 3 and o.startswith(name))), None)
