"""``launcher-core clean`` on an ec2 sweep: delete each job's objects, and with every job of the
sweep clean, everything left under ``PREFIX/SWEEP_ID/``. Every prefix is checked to lie inside
the sweep's own prefix before any call."""

from __future__ import annotations

from launcher_core.backends.base import CleanReport, CleanRequest, Handle
from launcher_core.backends.ec2.handle import Ec2Handle
from launcher_core.backends.ec2.store import S3Store, job_prefix
from launcher_core.errors import BackendError
from launcher_core.remote.paths import CleanRefused


def clean_sweep_files(store: S3Store, request: CleanRequest) -> CleanReport:
    """Delete each job's objects (``runs/<run>/jobs/<job_id>/``: payload and synced outputs);
    with ``sweep_handles`` (every job of the sweep, all clean after this) everything left
    under ``PREFIX/SWEEP_ID/``: code tarball, sweep payload, plans, agent logs, markers.

    Markers stay until then: cancelling jobs still running on a shared instance reads them.
    """
    base = _clean_base(store, request.sweep_id)
    location = f"s3://{store.bucket}"
    prefixes = {job_id: _clean_job_prefix(store, job_id, h, base) for job_id, h in request.handles.items()}
    report = CleanReport()
    report.jobs[location] = len(prefixes)
    for prefix in prefixes.values():
        report.add_target(location, prefix)
    if request.sweep_handles is not None:
        for handle in request.sweep_handles.values():
            _check_handle_base(store, handle, base)
        report.add_target(location, f"{base}/")
    if request.dry_run:
        return report
    store.aws.connect()
    try:
        for job_id, prefix in prefixes.items():
            store.delete_prefix(prefix)
            report.cleaned.add(job_id)  # what is gone so far is recorded even if a later call fails
        if request.sweep_handles is not None:
            store.delete_prefix(f"{base}/")
            report.sweep_cleaned = True
    except Exception as exc:  # noqa: BLE001 - S3/network errors: report, keep what was done
        report.errors.append(f"{location}: {type(exc).__name__}: {exc}")
    return report


def _clean_base(store: S3Store, sweep_id: str) -> str:
    if not sweep_id or "/" in sweep_id or sweep_id in (".", "..") or not sweep_id.isprintable():
        raise CleanRefused(f"refusing to clean: the sweep id {sweep_id!r} is not a plain name")
    return store.base(sweep_id)


def _typed(handle: Handle) -> Ec2Handle:
    try:
        return Ec2Handle.of(handle)
    except BackendError as exc:
        raise CleanRefused(f"refusing to clean: {exc}") from None


def _check_handle_base(store: S3Store, stored: Handle, base: str) -> None:
    handle = _typed(stored)
    if handle.bucket != store.bucket or handle.base != base:
        raise CleanRefused(
            f"refusing to clean: a job handle names bucket {handle.bucket!r} and prefix "
            f"{handle.base!r}, not this sweep's s3://{store.bucket}/{base}"
        )


def _clean_job_prefix(store: S3Store, job_id: str, stored: Handle, base: str) -> str:
    """``BASE/runs/<run>/jobs/<job_id>/`` of a handle, or CleanRefused naming the value."""
    handle = _typed(stored)
    _check_handle_base(store, handle, base)
    run = str(handle.run or "")
    out = handle.out_prefix
    bad = not run or "/" in run or run in (".", "..") or not job_id or "/" in job_id or job_id in (".", "..")
    prefix = job_prefix(base, run, job_id)
    if bad or out != f"{prefix}out/":
        raise CleanRefused(f"refusing to clean job {job_id}: its S3 prefix {out!r} is not under {prefix!r}")
    return prefix
