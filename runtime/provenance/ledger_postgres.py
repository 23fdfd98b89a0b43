"""The provenance ledger on PostgreSQL (psycopg 3): one ledger for many writers on many machines.

Records, hashes, signatures, the chain and the signed head are those of the SQLite ledger (ledger_chain.py), so a
record verifies the same in either backend. Rows are stored as text exactly like SQLite stores them (canonical
JSON, the seed as text), in the tables ``records`` and ``head`` of the database (and search_path) the URL names.

**Appends are serialised in the database.** Each append is one transaction that first takes a transaction-level
advisory lock (``pg_advisory_xact_lock``), then reads the signed head, checks IDs and idempotency keys, inserts
its records, moves the head and commits once the caller's delivery block succeeded. PostgreSQL makes a commit
visible before it releases the lock, so the next writer, on whatever machine, chains onto it. A writer waits for
the lock at most ``LOCK_TIMEOUT_S``.

**No witness file.** The SQLite ledger keeps a signed witness of its last seq in the key folder to catch a wiped
file. A ledger written by many machines has no single key folder (workers get their keys in memory, see
``KeyStore.from_secrets``), so no one place could hold that witness: the signed ``head`` row in the database is
the chain tip. Edited, removed or reordered records and a cut-short end are caught (hashes, signatures, links, the
head); emptying both tables is not. Guard against that with database privileges (writers need SELECT and INSERT on
``records``, SELECT, INSERT and UPDATE on ``head``; nobody needs DELETE or TRUNCATE) and with backups.

**Readers never write.** They connect with ``default_transaction_read_only=on`` and never create the schema: a
database without the tables reads as a ledger without records (``file_state`` says so). The first append creates
the schema, under the same lock.

**Secrets.** The URL may carry a password. Messages and :attr:`PostgresLedger.location` name the user, host, port and
database only, and errors from the driver are shown with any password masked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import InvalidInputError
from .keys import KeyStore
from .ledger import _empty_ledger
from .ledger_chain import FILE_NO_TABLES, FILE_OK, ChainLedger

LOCK_KEY = int.from_bytes(b"bdledger", "big") & (2**63 - 1)  # one ledger per database: one advisory lock
LOCK_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10
INSTALL_HINT = "pip install 'comfyui-backdrop[db]'"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS records (
        seq BIGINT PRIMARY KEY,
        id BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        account TEXT NOT NULL,
        prompt TEXT NOT NULL,
        negative_prompt TEXT NOT NULL,
        seed TEXT,
        models TEXT NOT NULL,
        loras TEXT NOT NULL,
        image_sha256 TEXT NOT NULL,
        metadata TEXT NOT NULL,
        signer TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        record_hash TEXT NOT NULL,
        signature TEXT NOT NULL,
        idempotency_key TEXT UNIQUE
    )""",
    "CREATE INDEX IF NOT EXISTS records_by_id ON records (id, seq)",
    """CREATE TABLE IF NOT EXISTS head (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        seq BIGINT NOT NULL,
        record_hash TEXT NOT NULL,
        signer TEXT NOT NULL,
        signature TEXT NOT NULL
    )""",
)


class PostgresLedger(ChainLedger):
    """Append-only, signed, chained records in a PostgreSQL database (``postgresql://user@host:port/db``).

    Each operation opens its own connection, so one PostgresLedger may be shared between threads, and any number of
    processes on any number of machines may append to the same database.
    """

    backend = "postgresql"

    def __init__(self, url: str, keys: KeyStore) -> None:
        super().__init__(keys)
        self._url = str(url)
        self._location = safe_location(self._url)
        self._secrets = _passwords(self._url)
        self._params = parse_url(self._url)
        self._ready = False

    @property
    def location(self) -> str:
        return self._location

    def __repr__(self) -> str:
        return f"PostgresLedger({self._location})"

    def file_state(self) -> str:
        """``ok``, or ``no ledger tables`` for a database nothing was appended to yet. Read-only."""
        with self._reader() as con:
            return FILE_OK if isinstance(con, _Connection) else FILE_NO_TABLES

    # ---- connections ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reader(self) -> Iterator:
        """A read-only connection; a database without our tables reads as an empty ledger."""
        psycopg = _psycopg()
        options = f"{self._params.get('options') or ''} -c default_transaction_read_only=on".strip()
        con = self._connect(autocommit=True, options=options)
        try:
            try:
                tables = con.execute("SELECT to_regclass('records') IS NOT NULL").fetchone()[0]
            except psycopg.Error as exc:
                raise self._failed("reading", exc) from None
            if not tables:
                empty = _empty_ledger()
                try:
                    yield empty
                finally:
                    empty.close()
                return
            try:
                yield _Connection(con)
            except psycopg.Error as exc:
                raise self._failed("reading", exc) from None
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator:
        """One transaction holding the ledger's advisory lock, with the schema in place; commits on success."""
        psycopg = _psycopg()
        con = self._connect(autocommit=False)
        try:
            with con.transaction():
                con.execute("SELECT set_config('lock_timeout', %s, true)", (f"{LOCK_TIMEOUT_S}s",))
                con.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                if not self._ready:
                    for statement in _SCHEMA:
                        con.execute(statement)
                yield _Connection(con)
            self._ready = True
        except psycopg.errors.LockNotAvailable:
            raise InvalidInputError(f"the PostgreSQL ledger {self._location} stayed locked by another writer for "
                                    f"{LOCK_TIMEOUT_S} s; nothing was recorded. Try again") from None
        except psycopg.Error as exc:
            raise self._failed("appending to", exc) from None
        finally:
            con.close()

    def _connect(self, autocommit: bool, options: str | None = None):
        psycopg = _psycopg()
        extra = {} if options is None else {"options": options}
        if "connect_timeout" not in self._params:
            extra["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            return psycopg.connect(self._url, autocommit=autocommit, **extra)
        except psycopg.Error as exc:
            raise InvalidInputError(f"cannot connect to the PostgreSQL ledger {self._location}: "
                                    f"{self._scrub(exc)}") from None

    def _head_row(self, con):
        psycopg = _psycopg()
        try:
            return super()._head_row(con)
        except psycopg.errors.UndefinedTable:  # the head table was dropped: no head
            return None

    def _failed(self, doing: str, exc: Exception) -> InvalidInputError:
        return InvalidInputError(f"{doing} the PostgreSQL ledger {self._location} failed: {self._scrub(exc)}")

    def _scrub(self, exc: Exception) -> str:
        return _scrub(exc, self._secrets)


class _Connection:
    """A psycopg connection that takes the ``?`` placeholders the shared chain code writes."""

    def __init__(self, con) -> None:
        self.con = con

    def execute(self, sql: str, params: tuple = ()):
        return self.con.execute(sql.replace("?", "%s"), params)


def parse_url(url: str) -> dict:
    """The URL's connection parameters (parsed by libpq, nothing connected); InvalidInputError when it is bad."""
    psycopg = _psycopg()
    try:
        return psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise InvalidInputError(f"{safe_location(url)} is not a usable PostgreSQL URL ({_scrub(exc, _passwords(url))})"
                                "; give postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE") from None


def _scrub(exc: Exception, secrets: list[str]) -> str:
    text = str(exc).strip() or type(exc).__name__
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def safe_location(url: str) -> str:
    """``postgresql://user@host:port/database`` from a URL, without its password (or any query parameter)."""
    try:
        parts = urlsplit(str(url))
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or [""])[0]
        try:
            port = parts.port
        except ValueError:
            port = None
        user = unquote(parts.username or (query.get("user") or [""])[0])
        dbname = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [""])[0]
    except ValueError:
        return "postgresql://(unreadable URL)"
    return f"postgresql://{user + '@' if user else ''}{host}{f':{port}' if port else ''}/{dbname}"


def _passwords(url: str) -> list[str]:
    """Every form of the URL's password (raw, decoded, from ``?password=``), longest first, to mask in messages."""
    found: set[str] = set()
    try:
        parts = urlsplit(str(url))
        netloc_password = parts.netloc.rpartition("@")[0].partition(":")[2] if "@" in parts.netloc else ""
        found.update({netloc_password, unquote(netloc_password)})
        for value in parse_qs(parts.query).get("password", []):
            found.update({value, unquote(value)})
        raw_query = [p.partition("=")[2] for p in parts.query.split("&") if p.startswith("password=")]
        found.update(raw_query)
    except ValueError:
        pass
    return sorted((s for s in found if s), key=len, reverse=True)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise InvalidInputError(f"a PostgreSQL ledger needs psycopg 3 (not installed): {INSTALL_HINT}") from None
    return psycopg
