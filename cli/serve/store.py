"""Accounts, API-key hashes, jobs and quota use: one small interface, on SQLite (default) or PostgreSQL.

:class:`Store` is what the server, its workers and ``backdrop accounts`` use; :func:`open_store` picks the
implementation from the database setting. Both share the SQL below and differ only in connecting, locking and
placeholders (``store_sqlite.SqliteStore``, ``store_postgres.PostgresStore``; ``database.open_store``
picks one).

**Exact under concurrency.** Every check-and-change runs in one transaction that first takes the account's lock:
SQLite's ``BEGIN IMMEDIATE`` (one writer at a time), PostgreSQL's ``SELECT ... FOR UPDATE`` on the account row.
So the images a day, the concurrent jobs and the Idempotency-Key are each checked and reserved atomically,
however many clients race: a tier that allows 100 images a day accepts jobs for exactly 100. (The request rate is
counted in the server process: :class:`RateLimiter`.)

**Quota accounting.** A job reserves its variations against the day's ``usage`` when it is accepted. When it
ends short (failed, canceled, interrupted) the images it did not deliver are given back in the same transaction
that ends it, so ``usage`` is always reserved-and-running plus delivered.

**Workers fence their writes** with the job's ``claim`` token: a write from a worker whose claim was taken away
(the job was failed by a restart) changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...runtime.errors import BackdropError, InvalidInputError
from .tiers import Tier

SCHEMA_VERSION = 1
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
ACTIVE = (QUEUED, RUNNING)
CONCURRENT_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    tier: str
    key_hint: str  # the key's first characters, to tell keys apart in listings
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class JobImage:
    n: int
    path: str  # relative to the data folder
    format: str
    width: int
    height: int
    bytes: int
    sha256: str
    created_at: float


@dataclass(frozen=True)
class Job:
    id: str
    account_id: str
    status: str
    progress: float
    retryable: bool
    error: str | None
    params: dict[str, Any]
    input_name: str
    images_reserved: int
    usage_day: str
    cancel_requested: bool
    claim: str | None
    worker: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    idempotency_key: str | None
    fingerprint: str
    images: tuple[JobImage, ...] = ()


@dataclass(frozen=True)
class NewJob:
    id: str
    account_id: str
    idempotency_key: str | None
    fingerprint: str  # parameters + upload hash: a replayed Idempotency-Key must carry the same
    params: dict[str, Any]
    input_name: str
    images: int  # reserved against images_per_day


@dataclass(frozen=True)
class Submission:
    job: Job
    replayed: bool  # the Idempotency-Key named an earlier job with the same request: that job, not a new one


class LimitExceeded(BackdropError):
    """A tier limit refused the request; ``retry_after`` seconds (None: waiting does not help)."""

    def __init__(self, limit: str, value: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.limit, self.value, self.retry_after = limit, value, retry_after


class IdempotencyConflict(BackdropError):
    """The Idempotency-Key was used before with a different request."""


class Unauthorized(BackdropError):
    """No account has this key, or it was revoked."""


class RateLimiter:
    """``requests_per_minute`` as a GCRA per account (a burst of N, then one every 60/N s), in this process.

    Kept in memory, not in the database: every request passes through the one server of a database (a lock on
    the data folder, and on PostgreSQL an advisory lock, make sure of that), so a lock here is exact, and a GET
    costs no database write. A restart forgets at most a minute of history.
    """

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def admit(self, account_id: str, limit: int, now: float) -> None:
        """Count one request, or raise LimitExceeded with the seconds to wait."""
        if limit <= 0:
            raise LimitExceeded("requests_per_minute", limit, "this tier allows no requests", retry_after=60)
        interval = 60.0 / limit
        with self._lock:
            new_tat = max(self._tat.get(account_id, 0.0), now) + interval
            if new_tat - now > 60.0 + 1e-9:
                wait = new_tat - now - 60.0
                raise LimitExceeded("requests_per_minute", limit, f"over {limit} requests per minute; retry in "
                                    f"{wait:.1f} s", retry_after=max(1, int(wait + 0.999)))
            self._tat[account_id] = new_tat


def utc_day(now: float) -> str:
    return _dt.datetime.fromtimestamp(now, _dt.timezone.utc).date().isoformat()


def seconds_to_utc_midnight(now: float) -> int:
    return max(1, int(86400 - (now % 86400)) + 1)


_ACCOUNT_COLUMNS = "id, name, tier, key_hint, created_at, revoked_at"
_JOB_COLUMNS = ("id, account_id, status, progress, retryable, error, params, input_name, images_reserved, usage_day, "
                "cancel_requested, claim, worker, attempts, created_at, started_at, finished_at, idempotency_key, "
                "fingerprint")
_IMAGE_COLUMNS = "n, path, format, width, height, bytes, sha256, created_at"


def _account(row) -> Account:
    return Account(id=row[0], name=row[1], tier=row[2], key_hint=row[3], created_at=float(row[4]),
                   revoked_at=None if row[5] is None else float(row[5]))


def _job(row, images: tuple[JobImage, ...] = ()) -> Job:
    return Job(id=row[0], account_id=row[1], status=row[2], progress=float(row[3]), retryable=bool(row[4]),
               error=row[5], params=json.loads(row[6]), input_name=row[7], images_reserved=int(row[8]),
               usage_day=row[9], cancel_requested=bool(row[10]), claim=row[11], worker=row[12], attempts=int(row[13]),
               created_at=float(row[14]), started_at=None if row[15] is None else float(row[15]),
               finished_at=None if row[16] is None else float(row[16]), idempotency_key=row[17], fingerprint=row[18],
               images=images)


def _image(row) -> JobImage:
    return JobImage(n=int(row[0]), path=row[1], format=row[2], width=int(row[3]), height=int(row[4]),
                    bytes=int(row[5]), sha256=row[6], created_at=float(row[7]))


class _Session:
    """One connection's statements, with ``?`` placeholders whatever the database."""

    def __init__(self, con, placeholder: str) -> None:
        self.con, self.placeholder = con, placeholder

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def one(self, sql: str, *params):
        return self.con.execute(self._sql(sql), params).fetchone()

    def all(self, sql: str, *params) -> list:
        return list(self.con.execute(self._sql(sql), params).fetchall())

    def run(self, sql: str, *params) -> int:
        return self.con.execute(self._sql(sql), params).rowcount


class Store:
    """The server's database. Thread-safe: each thread gets its own connection."""

    placeholder = "?"
    reads_on_event_loop = False  # reads are quick and never wait for a writer: the API may run them inline
    lock_account_sql = ""  # statement that locks one account row inside a transaction ("" where BEGIN locks all)
    skip_locked = ""
    label = "database"

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()

    # ---- implemented per database ---------------------------------------------------------------------
    def _connect(self):
        raise NotImplementedError

    def _usable(self, con) -> bool:
        return True

    def _begin(self, con) -> None:
        raise NotImplementedError

    def _schema(self) -> str:
        raise NotImplementedError

    def _is_unique_violation(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def _prepare_schema(self, db: _Session) -> None:
        """Inside the schema transaction, before the tables are created (PostgreSQL serialises it)."""

    def server_lock(self) -> contextlib.AbstractContextManager:
        """Held while a server runs on this database: a second server is refused (recovery at start-up fails the
        running jobs, which must be this server's own, and the request rate is counted in the process)."""
        return contextlib.nullcontext()

    # ---- connections and transactions ------------------------------------------------------------------
    def _con(self):
        con = getattr(self._local, "con", None)
        if con is None or not self._usable(con):
            con = self._connect()
            self._local.con = con
            with self._connections_lock:
                self._connections.append(con)
        return con

    def _writing(self) -> contextlib.AbstractContextManager:
        """Held around each transaction of this process (SQLite: one writer at a time anyway)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Session]:
        con = self._con()
        with self._writing():
            self._begin(con)
            try:
                yield _Session(con, self.placeholder)
            except BaseException:
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def reading(self) -> _Session:
        return _Session(self._con(), self.placeholder)

    def close(self) -> None:
        with self._connections_lock:
            for con in self._connections:
                with contextlib.suppress(Exception):
                    con.close()
            self._connections.clear()
        self._local = threading.local()

    def init_schema(self) -> None:
        with self.transaction() as db:
            self._prepare_schema(db)
            for statement in filter(str.strip, self._schema().split(";")):
                db.run(statement)
            row = db.one("SELECT value FROM meta WHERE key = 'schema_version'")
            if row is None:
                db.run("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", str(SCHEMA_VERSION))
            elif int(row[0]) > SCHEMA_VERSION:
                raise InvalidInputError(f"the {self.label} holds schema version {row[0]}, newer than this "
                                        f"backdrop ({SCHEMA_VERSION}); upgrade comfyui-backdrop")

    def _lock_account(self, db: _Session, account_id: str) -> None:
        if self.lock_account_sql:
            db.one(self.lock_account_sql, account_id)

    # ---- accounts --------------------------------------------------------------------------------------
    def create_account(self, name: str, tier: str, key_hash: str, key_hint: str, now: float) -> Account:
        account_id = "acct_" + secrets.token_hex(8)
        try:
            with self.transaction() as db:
                if db.one("SELECT 1 FROM accounts WHERE name = ?", name) is not None:
                    raise InvalidInputError(f"an account named {name!r} already exists")
                db.run("INSERT INTO accounts (id, name, tier, key_hash, key_hint, created_at, revoked_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, NULL)", account_id, name, tier, key_hash, key_hint, now)
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise InvalidInputError(f"an account named {name!r} already exists") from None
            raise
        return self.account(account_id)

    def accounts(self) -> list[Account]:
        return [_account(r) for r in self.reading().all(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts "
                                                          "ORDER BY created_at, name")]

    def account(self, ref: str) -> Account | None:
        """The account whose id or name is ``ref``."""
        row = self.reading().one(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ? OR name = ?", ref, ref)
        return None if row is None else _account(row)

    def _existing(self, ref: str) -> Account:
        account = self.account(ref)
        if account is None:
            known = ", ".join(a.name for a in self.accounts()[:20]) or "none yet"
            raise InvalidInputError(f"no account is named {ref!r} (accounts: {known})")
        return account

    def revoke(self, ref: str, now: float) -> Account:
        account = self._existing(ref)
        with self.transaction() as db:
            db.run("UPDATE accounts SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", now, account.id)
        return self._existing(account.id)

    def set_tier(self, ref: str, tier: str) -> Account:
        account = self._existing(ref)
        with self.transaction() as db:
            db.run("UPDATE accounts SET tier = ? WHERE id = ?", tier, account.id)
        return self._existing(account.id)

    def authenticate(self, key_hash: str) -> Account:
        """The active account whose key hashes to ``key_hash``; Unauthorized otherwise. Read-only, per request:
        a revoked key is refused from its next request."""
        import hmac

        row = self.reading().one(f"SELECT {_ACCOUNT_COLUMNS}, key_hash FROM accounts WHERE key_hash = ?", key_hash)
        if row is None or not hmac.compare_digest(str(row[6]), key_hash) or row[5] is not None:
            raise Unauthorized("the API key is unknown or was revoked")
        return _account(row)

    def usage(self, account_id: str, day: str) -> int:
        row = self.reading().one("SELECT images FROM usage WHERE account_id = ? AND day = ?", account_id, day)
        return 0 if row is None else int(row[0])

    def active_jobs(self, account_id: str) -> int:
        row = self.reading().one("SELECT COUNT(*) FROM jobs WHERE account_id = ? AND status IN (?, ?)",
                                 account_id, *ACTIVE)
        return int(row[0])

    # ---- jobs: the API side ----------------------------------------------------------------------------
    def submit(self, new: NewJob, tier: Tier, now: float) -> Submission:
        """Idempotency, concurrent jobs and images per day checked and reserved, and the job queued: one
        transaction under the account's lock."""
        day = utc_day(now)
        with self.transaction() as db:
            self._lock_account(db, new.account_id)
            if new.idempotency_key is not None:
                row = db.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE account_id = ? AND idempotency_key = ?",
                             new.account_id, new.idempotency_key)
                if row is not None:
                    earlier = _job(row)
                    if earlier.fingerprint != new.fingerprint:
                        raise IdempotencyConflict(
                            f"the Idempotency-Key was already used for job {earlier.id} with a different photo or "
                            "parameters; use a new key for a new request")
                    return Submission(self._job_with_images(db, earlier), replayed=True)
            active = int(db.one("SELECT COUNT(*) FROM jobs WHERE account_id = ? AND status IN (?, ?)",
                                new.account_id, *ACTIVE)[0])
            if active >= tier.concurrent_jobs:
                raise LimitExceeded("concurrent_jobs", tier.concurrent_jobs,
                                    f"this account already has {active} job(s) queued or running; the "
                                    f"{tier.name} tier allows {tier.concurrent_jobs} at once",
                                    retry_after=CONCURRENT_RETRY_AFTER_S)
            row = db.one("SELECT images FROM usage WHERE account_id = ? AND day = ?", new.account_id, day)
            used = 0 if row is None else int(row[0])
            if used + new.images > tier.images_per_day:
                left = max(0, tier.images_per_day - used)
                raise LimitExceeded("images_per_day", tier.images_per_day,
                                    f"the {tier.name} tier allows {tier.images_per_day} images per UTC day; "
                                    f"{left} left today and this job asks for {new.images}",
                                    retry_after=seconds_to_utc_midnight(now))
            db.run("INSERT INTO usage (account_id, day, images) VALUES (?, ?, ?) ON CONFLICT (account_id, day) "
                   "DO UPDATE SET images = usage.images + excluded.images", new.account_id, day, new.images)
            db.run("INSERT INTO jobs (id, account_id, status, progress, retryable, error, params, input_name, "
                   "images_reserved, usage_day, cancel_requested, claim, worker, attempts, created_at, started_at, "
                   "finished_at, idempotency_key, fingerprint) "
                   "VALUES (?, ?, ?, 0, 0, NULL, ?, ?, ?, ?, 0, NULL, NULL, 0, ?, NULL, NULL, ?, ?)",
                   new.id, new.account_id, QUEUED, json.dumps(new.params, sort_keys=True), new.input_name,
                   new.images, day, now, new.idempotency_key, new.fingerprint)
            job = _job(db.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", new.id))
        return Submission(job, replayed=False)

    def job(self, job_id: str, account_id: str | None = None) -> Job | None:
        """The job with its delivered images; ``account_id`` given: only that account's job."""
        db = self.reading()
        if account_id is None:
            row = db.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", job_id)
        else:
            row = db.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND account_id = ?", job_id, account_id)
        return None if row is None else self._job_with_images(db, _job(row))

    def _job_with_images(self, db: _Session, job: Job) -> Job:
        rows = db.all(f"SELECT {_IMAGE_COLUMNS} FROM job_images WHERE job_id = ? ORDER BY n", job.id)
        return dataclasses.replace(job, images=tuple(_image(r) for r in rows))

    def cancel(self, job_id: str, account_id: str, now: float) -> Job | None:
        """Cancel a queued job at once (its reservation is given back); ask a running one to stop."""
        with self.transaction() as db:
            self._lock_account(db, account_id)
            row = db.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND account_id = ?", job_id, account_id)
            if row is None:
                return None
            job = _job(row)
            if job.status == QUEUED:
                db.run("UPDATE jobs SET status = ?, cancel_requested = 1, finished_at = ?, error = ? WHERE id = ?",
                       CANCELED, now, "canceled before it started", job_id)
                self._give_back(db, job, delivered=0)
            elif job.status == RUNNING:
                db.run("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", job_id)
        return self.job(job_id, account_id)

    def _give_back(self, db: _Session, job: Job, delivered: int) -> None:
        unused = job.images_reserved - delivered
        if unused > 0:
            db.run("UPDATE usage SET images = images - ? WHERE account_id = ? AND day = ?", unused, job.account_id,
                   job.usage_day)

    # ---- jobs: the worker side -------------------------------------------------------------------------
    def claim(self, worker: str, now: float) -> Job | None:
        """Take the oldest queued job (status running, a fresh claim token), or None."""
        token = secrets.token_hex(8)
        with self.transaction() as db:
            row = db.one("UPDATE jobs SET status = ?, claim = ?, worker = ?, started_at = ?, attempts = attempts + 1 "
                         f"WHERE id = (SELECT id FROM jobs WHERE status = ? ORDER BY seq LIMIT 1{self.skip_locked}) "
                         "RETURNING id", RUNNING, token, worker, now, QUEUED)
        return None if row is None else self.job(row[0])

    def set_progress(self, job_id: str, claim: str, progress: float) -> bool:
        with self.transaction() as db:
            return db.run("UPDATE jobs SET progress = ? WHERE id = ? AND claim = ? AND status = ?",
                          float(progress), job_id, claim, RUNNING) == 1

    def should_stop(self, job_id: str, claim: str) -> bool:
        """True when the job's owner asked to cancel it, or the claim is no longer this worker's."""
        row = self.reading().one("SELECT cancel_requested, status, claim FROM jobs WHERE id = ?", job_id)
        return row is None or bool(row[0]) or row[1] != RUNNING or row[2] != claim

    def add_image(self, job_id: str, claim: str, image: JobImage) -> bool:
        """Record one delivered image of a running job; False when the claim is no longer valid."""
        with self.transaction() as db:
            row = db.one("SELECT 1 FROM jobs WHERE id = ? AND claim = ? AND status = ?", job_id, claim, RUNNING)
            if row is None:
                return False
            db.run(f"INSERT INTO job_images (job_id, {_IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   job_id, image.n, image.path, image.format, image.width, image.height, image.bytes, image.sha256,
                   image.created_at)
        return True

    def finish(self, job_id: str, claim: str, status: str, now: float, error: str | None = None,
               retryable: bool = False) -> bool:
        """End a running job; images it did not deliver go back to the day's quota. False: not this claim's."""
        owner = self.reading().one("SELECT account_id FROM jobs WHERE id = ?", job_id)
        if owner is None:
            return False
        with self.transaction() as db:
            self._lock_account(db, owner[0])
            row = db.one(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND claim = ? AND status = ?", job_id, claim,
                         RUNNING)
            if row is None:
                return False
            job = _job(row)
            delivered = int(db.one("SELECT COUNT(*) FROM job_images WHERE job_id = ?", job_id)[0])
            db.run("UPDATE jobs SET status = ?, error = ?, retryable = ?, finished_at = ?, "
                   "progress = CASE WHEN ? = 1 THEN 1.0 ELSE progress END WHERE id = ?",
                   status, error, int(retryable), now, int(status == SUCCEEDED), job_id)
            self._give_back(db, job, delivered)
        return True

    def running_jobs(self, worker: str | None = None) -> list[Job]:
        db = self.reading()
        if worker is None:
            rows = db.all(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY seq", RUNNING)
        else:
            rows = db.all(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = ? AND worker = ? ORDER BY seq", RUNNING,
                          worker)
        return [self._job_with_images(db, _job(r)) for r in rows]

    def count_jobs(self, status: str) -> int:
        return int(self.reading().one("SELECT COUNT(*) FROM jobs WHERE status = ?", status)[0])

    def known_job_ids(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        db = self.reading()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            found.update(r[0] for r in db.all(f"SELECT id FROM jobs WHERE id IN ({marks})", *chunk))
        return found
