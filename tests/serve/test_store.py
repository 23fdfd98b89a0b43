"""The server's store on SQLite and on a real PostgreSQL: quotas exact under racing threads, idempotency,
the request rate, claims and their fencing, and quota given back when a job ends short."""

from __future__ import annotations

import threading
import time

import pytest

from comfyui_backdrop.cli.serve.api_keys import hash_api_key, key_hint, new_api_key
from comfyui_backdrop.cli.serve.database import open_store
from comfyui_backdrop.cli.serve.store import (
    CANCELED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    IdempotencyConflict,
    JobImage,
    LimitExceeded,
    NewJob,
    RateLimiter,
    Unauthorized,
    utc_day,
)
from comfyui_backdrop.cli.serve.tiers import Tier

NOW = 1_800_000_000.0  # a fixed moment, mid-day UTC


def tier(**limits) -> Tier:
    values = {"requests_per_minute": 1000, "images_per_day": 1000, "max_resolution": 4096, "max_variations": 8,
              "concurrent_jobs": 1000, **limits}
    return Tier(name="t", **values)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        opened = open_store(None, tmp_path)
    else:
        opened = open_store(request.getfixturevalue("postgres_url"), tmp_path)
    yield opened
    opened.close()


def account(store, name="acme", tier_name="t"):
    key = new_api_key()
    return store.create_account(name, tier_name, hash_api_key(key), key_hint(key), NOW), key


def new_job(account_id, n=1, key=None, fingerprint="f", suffix=""):
    import secrets

    return NewJob(id="job_" + secrets.token_hex(12), account_id=account_id, idempotency_key=key,
                  fingerprint=fingerprint, params={"variations": n, "scene": suffix}, input_name="photo.png", images=n)


def race(count, fn):
    """Run ``fn(i)`` on ``count`` threads released together; returns the results and exceptions."""
    barrier, results = threading.Barrier(count), [None] * count

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_images_per_day_holds_exactly_with_50_threads_racing(store):
    acme, _ = account(store)
    limits = tier(images_per_day=100)
    results = race(50, lambda i: [_try(store.submit, new_job(acme.id, n=1 + (i + k) % 3), limits, NOW)
                                  for k in range(4)])
    accepted = [r for batch in results for r in batch if not isinstance(r, LimitExceeded)]
    refused = [r for batch in results for r in batch if isinstance(r, LimitExceeded)]
    images = sum(s.job.images_reserved for s in accepted)
    assert images <= 100 and store.usage(acme.id, utc_day(NOW)) == images
    assert images >= 100 - 2, "refused although the day had room for a job of 1-3 images"
    assert refused and {r.limit for r in refused} == {"images_per_day"}
    assert all(r.retry_after and 0 < r.retry_after <= 86400 for r in refused)


def test_an_idempotency_key_gives_one_job_however_many_send_it(store):
    acme, _ = account(store)
    results = race(20, lambda i: store.submit(new_job(acme.id, key="order-7"), tier(), NOW))
    ids = {r.job.id for r in results}
    assert len(ids) == 1 and sum(not r.replayed for r in results) == 1
    assert store.usage(acme.id, utc_day(NOW)) == 1, "a replay reserved images again"
    with pytest.raises(IdempotencyConflict, match="different photo or parameters"):
        store.submit(new_job(acme.id, key="order-7", fingerprint="other"), tier(), NOW)
    other, _ = account(store, "other")
    assert store.submit(new_job(other.id, key="order-7"), tier(), NOW).job.id not in ids, "keys are per account"


def test_requests_per_minute_is_a_burst_then_a_steady_rate():
    limiter = RateLimiter()
    for _ in range(6):
        limiter.admit("acct_a", 6, NOW)
    with pytest.raises(LimitExceeded) as refused:
        limiter.admit("acct_a", 6, NOW)
    assert refused.value.limit == "requests_per_minute" and refused.value.retry_after == 10
    limiter.admit("acct_b", 6, NOW)  # per account
    limiter.admit("acct_a", 6, NOW + 10)
    with pytest.raises(LimitExceeded):
        limiter.admit("acct_a", 6, NOW + 10)


def test_request_rate_holds_with_threads_racing():
    limiter = RateLimiter()
    results = race(40, lambda i: _try(limiter.admit, "acct_a", 30, NOW))
    assert sum(not isinstance(r, LimitExceeded) for r in results) == 30


def test_unknown_and_revoked_keys(store):
    acme, key = account(store)
    assert store.authenticate(hash_api_key(key)).id == acme.id
    with pytest.raises(Unauthorized):
        store.authenticate(hash_api_key(new_api_key()))
    store.revoke("acme", NOW)
    with pytest.raises(Unauthorized):
        store.authenticate(hash_api_key(key))
    assert not store.account(acme.id).active


def test_concurrent_jobs_count_queued_and_running(store):
    acme, _ = account(store)
    limits = tier(concurrent_jobs=2)
    first = store.submit(new_job(acme.id), limits, NOW).job
    store.submit(new_job(acme.id), limits, NOW)
    with pytest.raises(LimitExceeded) as refused:
        store.submit(new_job(acme.id), limits, NOW)
    assert refused.value.limit == "concurrent_jobs" and refused.value.retry_after
    claimed = store.claim("w0", NOW)
    assert claimed.id == first.id and claimed.status == RUNNING
    assert store.finish(claimed.id, claimed.claim, SUCCEEDED, NOW)
    assert store.submit(new_job(acme.id), limits, NOW).job.status == QUEUED


def test_a_job_ending_short_gives_its_unused_images_back(store):
    acme, _ = account(store)
    day = utc_day(NOW)
    job = store.submit(new_job(acme.id, n=3), tier(), NOW).job
    queued = store.submit(new_job(acme.id, n=2), tier(), NOW).job
    assert store.usage(acme.id, day) == 5
    assert store.cancel(queued.id, acme.id, NOW).status == CANCELED
    assert store.usage(acme.id, day) == 3
    running = store.claim("w0", NOW)
    assert running.id == job.id
    image = JobImage(n=0, path=f"jobs/{job.id}/out/0/a.png", format="png", width=8, height=8, bytes=1, sha256="0",
                     created_at=NOW)
    assert store.add_image(job.id, running.claim, image)
    assert store.cancel(job.id, acme.id, NOW).cancel_requested and store.should_stop(job.id, running.claim)
    assert store.finish(job.id, running.claim, CANCELED, NOW)
    assert store.usage(acme.id, day) == 1, "the delivered image counts, the two not made do not"
    assert [i.n for i in store.job(job.id, acme.id).images] == [0]


def test_claims_are_exclusive_and_fence_stale_workers(store):
    acme, _ = account(store)
    ids = {store.submit(new_job(acme.id), tier(), NOW).job.id for _ in range(12)}
    claims = race(16, lambda i: store.claim(f"w{i}", NOW))
    got = [c.id for c in claims if c is not None]
    assert sorted(got) == sorted(ids), "a job was claimed twice or not at all"
    job = next(c for c in claims if c is not None)
    assert not store.finish(job.id, "not-the-claim", SUCCEEDED, NOW)
    assert store.finish(job.id, job.claim, FAILED, NOW, error="x", retryable=True)
    assert not store.add_image(job.id, job.claim, JobImage(0, "p", "png", 1, 1, 1, "0", NOW)), "after it ended"
    assert store.job(job.id).retryable and store.job(job.id, "acct_someone_else") is None


def test_account_names_are_unique(store):
    account(store, "acme")
    with pytest.raises(Exception, match="already exists"):
        account(store, "acme")


def _try(fn, *args):
    try:
        return fn(*args)
    except LimitExceeded as exc:
        return exc


def test_utc_day_boundaries():
    assert utc_day(86400 * 3 - 0.001) != utc_day(86400 * 3)
    assert time.gmtime(86400 * 3).tm_hour == 0
