"""The one workspace layer for machines that are not this one.

Over an SSH connection (:mod:`.ssh`: remote_ssh hosts and a Slurm login node) it holds the frozen
code snapshot (:mod:`.codesync`), the shell scripts run there (:mod:`.scripts`), config
relocation out and results back, fetch with its bare-pull rules, and clean
(:mod:`.workspace`); :mod:`.paths` decides which remote paths may be filled and deleted. The
ec2 backend reaches its instances through S3 and shares the path rules and excludes.
"""
