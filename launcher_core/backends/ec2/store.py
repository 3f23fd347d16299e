"""The S3 side of an ec2 sweep: where each object lies under ``PREFIX/SWEEP_ID/`` (the layout:
docs/ec2.md), and the puts, listings, downloads and deletes made there.

Objects of this launch go to the configured bucket; what a job handle names (polling, fetching,
cancelling a stored sweep) is read from the handle's own ``bucket``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from launcher_core.backends.ec2.aws import AwsClient, error_code
from launcher_core.backends.ec2.settings import setting_key
from launcher_core.errors import BackendError, ConfigError
from launcher_core.jobs import PullFilter
from launcher_core.remote.codesync import RsyncFilter

log = logging.getLogger("launcher_core.ec2")

Skip = Callable[[PurePosixPath, int], bool]
"""Which synced files of a job a fetch leaves out: (path under the job's dir, size) -> skip."""


# --- the layout -------------------------------------------------------------------------------
def sweep_base(prefix: str, sweep_id: str) -> str:
    """``PREFIX/SWEEP_ID``: everything of one sweep lies under it."""
    prefix = prefix.strip("/")
    return f"{prefix}/{sweep_id}" if prefix else sweep_id


def group_key(base: str, run: str, group: str, name: str) -> str:
    """``BASE/runs/RUN/GROUP/NAME``: an object of one instance (``plan.json``, ``agent.log``,
    ``setup.log``, ``user-data.sh``)."""
    return f"{base}/runs/{run}/{group}/{name}"


def job_prefix(base: str, run: str, job_id: str) -> str:
    """``BASE/runs/RUN/jobs/JOB_ID/``: a job's payload and (under ``out/``) its synced outputs."""
    return f"{base}/runs/{run}/jobs/{job_id}/"


def markers_prefix(base: str, run: str | None = None) -> str:
    """``BASE/markers/`` (every run) or ``BASE/markers/RUN/``: the jobs' state markers."""
    return f"{base}/markers/{run}/" if run else f"{base}/markers/"


def marker_key(base: str, run: str, job_id: str, state: str) -> str:
    """``BASE/markers/RUN/JOB_ID.STATE`` (running, done, failed, cancel)."""
    return f"{markers_prefix(base, run)}{job_id}.{state}"


def log_key(out_prefix: str, stream: str) -> str:
    """The live log of a job (``stdout`` or ``stderr``) under its synced outputs."""
    return f"{out_prefix}.launcher/{'stderr.log' if stream == 'stderr' else 'stdout.log'}"


Markers = dict[tuple[str, str], dict[str, str]]
"""``{(run, job_id): {state: key}}``."""


class S3Store:
    """The S3 calls of the ec2 backend; :meth:`put` refuses data holding the active credentials."""

    def __init__(self, aws: AwsClient, bucket: str, prefix: str) -> None:
        self.aws = aws
        self.bucket = bucket
        self.prefix = prefix

    def base(self, sweep_id: str) -> str:
        """``PREFIX/SWEEP_ID`` in this store's prefix."""
        return sweep_base(self.prefix, sweep_id)

    # --- this launch's bucket ---------------------------------------------------------------
    def check_bucket(self) -> None:
        """ConfigError when the bucket does not answer (missing, or no access)."""
        from botocore.exceptions import ClientError

        try:
            self.aws.s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise ConfigError(
                f"{setting_key('s3_bucket')}={self.bucket!r} cannot be used ({error_code(exc) or exc}): create the "
                "bucket or fix the name; this machine and the instance role need read/write access to it"
            ) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.aws.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put(self, key: str, data: bytes, what: str) -> None:
        """Upload ``data`` (``what`` names it in a refusal) unless it holds the active credentials."""
        self.aws.check_no_secrets(data, what)
        self.aws.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def upload_file(self, path: Path, key: str) -> None:
        """Upload a file whose content was checked as it was written (the code snapshot)."""
        self.aws.s3.upload_file(str(path), self.bucket, key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (paginated listing, batches of 1000); return the count."""
        deleted = 0
        for page in self.aws.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [obj["Key"] for obj in page.get("Contents", []) if obj["Key"].startswith(prefix)]
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                answer = self.aws.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                failed = answer.get("Errors") or []
                if failed:
                    first = failed[0]
                    raise BackendError(
                        f"S3 refused to delete {len(failed)} objects under s3://{self.bucket}/{prefix} "
                        f"(first: {first.get('Key')}: {first.get('Code')} {first.get('Message')})"
                    )
                deleted += len(batch)
        return deleted

    # --- any bucket a handle names ----------------------------------------------------------
    def get_json(self, bucket: str, key: str) -> Any:
        """A JSON object's content (botocore's ClientError when it cannot be read)."""
        return json.loads(self.aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def put_marker(self, bucket: str, key: str) -> None:
        """An empty marker (``{}``), e.g. a ``.cancel`` request for an instance's agent."""
        self.aws.s3.put_object(Bucket=bucket, Key=key, Body=b"{}")

    def list_markers(self, bucket: str, prefix: str, run: str | None = None) -> Markers:
        """``{(run, job_id): {state: key}}`` from one (paginated) listing.

        ``prefix`` is ``BASE/markers/`` (all runs), or ``BASE/markers/RUN/`` with ``run`` given.
        """
        markers: Markers = {}
        for page in self.aws.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(prefix) :]
                if run is None:
                    key_run, _, name = rest.partition("/")
                else:
                    key_run, name = run, rest
                job_id, _, state = name.rpartition(".")
                if key_run and job_id:
                    markers.setdefault((key_run, job_id), {})[state] = obj["Key"]
        return markers

    def list_files(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        """(path under ``prefix``, size) of each object there, as :meth:`download` would write them."""
        files = []
        for page in self.aws.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = PurePosixPath(obj["Key"][len(prefix) :])
                if rel.parts and ".." not in rel.parts:
                    files.append((str(rel), int(obj["Size"])))
        return files

    def read_from(self, bucket: str, key: str, offset: int) -> bytes:
        """The object's bytes from ``offset`` on; ``b""`` when it is not there (yet) or shorter."""
        from botocore.exceptions import ClientError

        try:
            response = self.aws.s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={int(offset)}-")
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "InvalidRange", "404", "416"):
                return b""
            raise
        return bytes(response["Body"].read())

    def download(self, bucket: str, prefix: str, dest: Path, skip: Skip | None) -> None:
        """Download the objects under ``prefix`` into ``dest``, incrementally.

        A downloaded file gets the object's LastModified as its mtime, so a file already there
        with the same size and mtime is skipped; each file is downloaded to a temporary name and
        renamed into place. Keys that would land outside ``dest`` are skipped; ``skip`` never
        drops the job's private ``.launcher/`` files.
        """
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for page in self.aws.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = PurePosixPath(obj["Key"][len(prefix) :])
                target = (root / rel).resolve()
                if not rel.parts or ".." in rel.parts or root not in target.parents:
                    log.warning("skipping S3 object with an unsafe path: %s", obj["Key"])
                    continue
                private = ".launcher" in rel.parts
                if not private and skip is not None and skip(rel, int(obj["Size"])):
                    continue
                stamp = obj["LastModified"].timestamp()
                if not _same_file(target, int(obj["Size"]), stamp):
                    self._download_file(bucket, obj["Key"], target, stamp, private)

    def _download_file(self, bucket: str, key: str, target: Path, stamp: float, private: bool) -> None:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o777)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            self.aws.s3.download_file(bucket, key, str(tmp))
            os.chmod(tmp, 0o600 if private else 0o644)
            os.utime(tmp, (stamp, stamp))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _same_file(path: Path, size: int, mtime: float) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and abs(st.st_mtime - mtime) < 1e-3


def bare_filter(pull_filter: PullFilter | None, job_rel: str) -> Skip | None:
    """``pull --bare``: which of a job's files to skip (``None``: none). Files above the size limit,
    and files an exclude pattern matches as it does in the other backends' rsync fetch: on the
    path from the sweep dir (``job_rel``, the job's subdir, first; :class:`RsyncFilter`)."""
    if pull_filter is None or not pull_filter.is_bare:
        return None
    patterns = RsyncFilter(exclude=pull_filter.exclude)
    limit = pull_filter.max_size_bytes

    def skip(rel: PurePosixPath, size: int) -> bool:
        if limit is not None and size > limit:
            return True
        return patterns.excludes(f"{job_rel}/{rel.as_posix()}" if job_rel else rel.as_posix(), listed=job_rel)

    return skip
