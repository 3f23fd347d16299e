"""Submission intents: how a launch killed between a backend accepting a submission and the state
store recording it is resumed without submitting anything twice.

Before each submission a backend's jobs outlive (an ``sbatch`` array, a ``RunInstances`` call) the
backend records a :class:`SubmitIntent` in the state store (one SQLite transaction) and tags what
it submits with the intent's ``tag`` (slurm: the array's job name; ec2: the instance's tag and
its ``ClientToken``). A relaunch that finds intents whose jobs were never recorded asks the
backend, in one lookup for all of them (:meth:`~launcher_core.backends.base.Backend.accepted`),
which it accepted, records their handles and submits only the rest (docs/guarantees.md).
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: test hook, not a setting: SIGKILL the launching process right after its N-th accepted
#: submission returns and before the state store records it (tests/test_exactly_once_window.py)
TEST_KILL_AFTER_SUBMIT_ENV = "HYDRA_LAUNCHER_TEST_HOOK_KILL_AFTER_SUBMIT"
_accepted_submissions = 0


@dataclass(frozen=True)
class SubmitIntent:
    """One submission about to be made: ``tag`` is what the backend puts on it to find it again,
    ``handles`` the handles its jobs will have once accepted, without the backend's own id
    (:meth:`~launcher_core.backends.base.Backend.accepted` fills it in)."""

    key: str
    tag: str
    handles: Mapping[str, Any]  # job id -> handle: a backend's handle class, or its JSON read back
    launch_id: str = ""
    created_at: float = 0.0


class IntentJournal(Protocol):
    """Where a backend records its submissions before making them (the controller's state store)."""

    def key_for(self, job_ids: Collection[str]) -> str:
        """The key of the next submission of exactly these jobs: the key of a submission of them
        that an interrupted launch recorded and the backend does not know (so an EC2
        ``ClientToken`` stays the same across the resume), else a new one."""
        ...

    def record(self, intent: SubmitIntent) -> None: ...

    def discard(self, keys: Sequence[str]) -> None:
        """Submissions known not to have left anything on the backend (undone after a failure)."""


class NoJournal:
    """Records nothing: a backend used outside a launch (the behaviour suite, a dry run)."""

    def key_for(self, job_ids: Collection[str]) -> str:
        return new_intent_key()

    def record(self, intent: SubmitIntent) -> None:
        """Nothing to record."""

    def discard(self, keys: Sequence[str]) -> None:
        """Nothing to discard."""


def new_intent_key() -> str:
    """A fresh key (12 hex digits): unique among the submissions of every launch of a sweep."""
    return secrets.token_hex(6)


def after_accepted_submission() -> None:
    """Test hook: count an accepted submission; with :data:`TEST_KILL_AFTER_SUBMIT_ENV` set to N,
    the N-th one kills this process with SIGKILL (a crash the state store never heard of)."""
    global _accepted_submissions
    _accepted_submissions += 1
    wanted = os.environ.get(TEST_KILL_AFTER_SUBMIT_ENV, "")
    if wanted.isdigit() and int(wanted) == _accepted_submissions:
        os.kill(os.getpid(), signal.SIGKILL)
