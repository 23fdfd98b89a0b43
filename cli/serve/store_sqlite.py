"""The server's store on SQLite (the default): the data folder's ``ledger.sqlite3``, WAL mode, shared with the
provenance ledger (whose appends hold the write lock only for their insert: ``runtime.provenance.ledger``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

from ...runtime.errors import InvalidInputError
from .server_lock import exclusive_lock
from .store import Store

SQLITE_BUSY_TIMEOUT_S = 30.0

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    status TEXT NOT NULL,
    progress REAL NOT NULL,
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
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
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
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS usage (
    account_id TEXT NOT NULL REFERENCES accounts (id),
    day TEXT NOT NULL,
    images INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)
)
"""


class SqliteStore(Store):
    """SQLite in WAL mode. ``synchronous = NORMAL``: a committed job survives the server being killed
    (SIGKILL, a crash); only a power cut can lose the last commits (the ledger itself syncs every record)."""

    label = "SQLite database"
    # In WAL mode a read never waits for the writer, and an indexed lookup in the page cache takes tens of
    # microseconds: less than a trip through the API's thread pool (measured with py-spy under the load benchmark:
    # the hops were a sixth of the API process's CPU).
    reads_on_event_loop = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self._write_lock = threading.Lock()
        self.path = Path(path)
        self.label = f"SQLite database {self.path}"
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def _connect(self):
        con = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None,
                              check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            con.close()
            raise InvalidInputError(f"{self.path} is not a usable server database ({exc}); move it away to "
                                    "start a new one") from None
        return con

    def _writing(self):
        # SQLite admits one writer; threads of this process queue on a lock instead of in SQLite's busy handler,
        # which polls with sleeps of up to 100 ms and turns a burst of requests into seconds of waiting.
        return self._write_lock

    def server_lock(self):
        return exclusive_lock(self.path.with_name(self.path.name + ".server-lock"),
                              f"another backdrop serve is using the {self.label}; one server per database")

    def _begin(self, con) -> None:
        con.execute("BEGIN IMMEDIATE")

    def _schema(self) -> str:
        return _SQLITE_SCHEMA

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)
