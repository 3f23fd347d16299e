"""``ec2``: run a sweep's jobs on EC2 instances that terminate themselves when done; code,
payloads, outputs and state markers travel through S3. Design and module map: docs/ec2.md
"""

from launcher_core.backends.ec2.aws import TAG_GROUP, TAG_RUN, TAG_SWEEP, AwsApiError, root_volume_mapping
from launcher_core.backends.ec2.backend import Ec2Backend, from_config
from launcher_core.backends.ec2.placement import plan_groups
from launcher_core.backends.ec2.settings import Ec2Settings
from launcher_core.backends.ec2.snapshot import build_snapshot
from launcher_core.backends.ec2.strays import StrayInstance, cleanup, find_stray_instances, main

__all__ = [
    "TAG_GROUP",
    "TAG_RUN",
    "TAG_SWEEP",
    "AwsApiError",
    "Ec2Backend",
    "Ec2Settings",
    "StrayInstance",
    "build_snapshot",
    "cleanup",
    "find_stray_instances",
    "from_config",
    "main",
    "plan_groups",
    "root_volume_mapping",
]
