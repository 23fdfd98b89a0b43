"""The server's store on PostgreSQL (psycopg 3; ``pip install 'comfyui-backdrop[db]'``).

Same SQL as SQLite (``store.Store``); what differs: a transaction locks only the account it changes
(``SELECT ... FOR UPDATE`` on the account row, READ COMMITTED), and workers claim queued jobs with
``FOR UPDATE SKIP LOCKED``, so several workers never wait on each other's claims. Creating the schema is
serialised with an advisory lock, so a server and ``backdrop accounts`` may start at the same moment.
"""

from __future__ import annotations

import contextlib

from .extras import require
from .store import Store

SCHEMA_LOCK = 0x6261636B64726F70  # "backdrop"
SERVER_LOCK = SCHEMA_LOCK + 1

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    status TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL,
    retryable INTEGER NOT NULL,
    error TEXT,
    params TEXT NOT NULL,
    input_name TEXT NOT NULL,
    images_reserved INTEGER NOT NULL,
    usage_day TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    claim TEXT,
    worker TEXT,
    attempts INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_account ON jobs (account_id, status);
CREATE TABLE IF NOT EXISTS job_images (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    n INTEGER NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS usage (
    account_id TEXT NOT NULL REFERENCES accounts (id),
    day TEXT NOT NULL,
    images INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)
)
"""


class PostgresStore(Store):
    placeholder = "%s"
    lock_account_sql = "SELECT id FROM accounts WHERE id = ? FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._psycopg = require("psycopg", "db", "A PostgreSQL database (--database postgresql://...)")
        self.url = url
        from .config import database_label

        self.label = f"PostgreSQL database {database_label(url)}"

    def _connect(self):
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.OperationalError as exc:
            from ...runtime.errors import InvalidInputError

            raise InvalidInputError(f"cannot connect to the {self.label}: {str(exc).strip()}") from None

    def _usable(self, con) -> bool:
        return not con.closed and not con.broken

    def _begin(self, con) -> None:
        con.execute("BEGIN")

    def _prepare_schema(self, db) -> None:
        db.one("SELECT pg_advisory_xact_lock(?)", SCHEMA_LOCK)

    @contextlib.contextmanager
    def server_lock(self):
        """A session advisory lock on a connection of its own, held while the server runs."""
        con = self._connect()
        try:
            if not con.execute("SELECT pg_try_advisory_lock(%s)", (SERVER_LOCK,)).fetchone()[0]:
                from ...runtime.errors import InvalidInputError

                raise InvalidInputError(f"another backdrop serve is using the {self.label}; one server per "
                                        "database")
            yield
        finally:
            con.close()

    def _schema(self) -> str:
        return _POSTGRES_SCHEMA

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)
