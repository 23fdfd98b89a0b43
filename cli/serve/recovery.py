"""Nothing accepted is lost: what the server does at start-up and when a worker dies.

* A job that was **running** when its worker or the server died is marked ``failed`` with ``retryable: true``.
  Images it had delivered stay delivered. An image file it wrote but had not yet registered is kept when the
  ledger holds its record for this account (the record and the file both exist: it was delivered), and removed
  otherwise (no record: it was never delivered). Its unused reservation goes back to the day's quota.
* A **queued** job stays queued and runs when a worker is free: accepted means committed to the database, and
  its photo is in ``jobs/<id>/`` before that commit.
* Uploads that were still arriving (``tmp/``) and job folders whose job was never committed are removed.
"""

from __future__ import annotations

import logging
import shutil
import time

from .config import JOB_ID, DataFolder
from .store import FAILED, Job, Store
from .worker import DELIVERED_SUFFIXES, image_record

log = logging.getLogger("backdrop.serve")
INTERRUPTED = "interrupted: the server stopped while this job ran; submit it again"


def recover_running(store: Store, data: DataFolder, reason: str = INTERRUPTED, worker: str | None = None,
                    ledger: str | None = None) -> list[str]:
    """Fail every running job (of ``worker``, or all) as retryable, reconciling its written images first against
    the ledger at ``ledger`` (``ServeConfig.ledger_location``; None: the data folder's)."""
    failed = []
    for job in store.running_jobs(worker):
        try:
            _reconcile_outputs(store, data, job, ledger)
        except Exception:  # reconciling is best effort; failing the job must still happen
            log.exception("job %s: checking the images it left failed", job.id)
        if store.finish(job.id, job.claim, FAILED, time.time(), error=reason, retryable=True):
            failed.append(job.id)
            log.warning("job %s marked failed (retryable): %s", job.id, reason)
    return failed


def _reconcile_outputs(store: Store, data: DataFolder, job: Job, ledger: str | None) -> None:
    out = data.job_dir(job.id) / "out"
    if not out.is_dir():
        return
    registered = {image.path for image in job.images}
    n = len(job.images)
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.suffix.lower() in DELIVERED_SUFFIXES):
        relative = data.relative(path)
        if relative in registered:
            continue
        if _recorded_for(data, path, job.account_id, ledger):
            if store.add_image(job.id, job.claim, image_record(relative, path, n)):
                n += 1
                log.info("job %s: image %s was delivered before the interruption; kept", job.id, path.name)
        else:
            path.unlink(missing_ok=True)
            log.info("job %s: image %s has no ledger record (never delivered); removed", job.id, path.name)


def _recorded_for(data: DataFolder, path, account_id: str, ledger: str | None) -> bool:
    from ...runtime.watermark.service import get_service

    try:
        result = get_service(data.root, ledger=ledger).verify_file(path)
    except Exception:
        return False
    return result.found and result.record is not None and result.record.get("account") == account_id


def clean_leftovers(store: Store, data: DataFolder) -> tuple[int, int]:
    """Remove uploads in flight and job folders without a committed job; returns (uploads, folders) removed."""
    uploads = 0
    for entry in data.tmp.iterdir() if data.tmp.is_dir() else ():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        uploads += 1
    folders = [entry.name for entry in data.jobs.iterdir() if entry.is_dir() and JOB_ID.fullmatch(entry.name)]
    known = store.known_job_ids(folders)
    orphans = [name for name in folders if name not in known]
    for name in orphans:
        shutil.rmtree(data.jobs / name, ignore_errors=True)
    return uploads, len(orphans)
