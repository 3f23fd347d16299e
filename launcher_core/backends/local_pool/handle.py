"""A local_pool job's handle: the host it runs on and its pid file ("PID START_TIME", written by
the job: a process of a dead launcher is found again, and a reused PID is not taken for it), and
the machine's boot id when it was submitted (absent in handles of earlier versions)."""

from __future__ import annotations

from dataclasses import dataclass

from launcher_core.backends.base import JobHandle, written_with


@dataclass(frozen=True, kw_only=True)
class LocalPoolHandle(JobHandle):
    host: str
    pid_file: str
    boot_id: str | None = written_with("boot_id")  # the machine's boot when submitted: a change tells a reboot

    def host_label(self) -> str | None:
        return self.host
