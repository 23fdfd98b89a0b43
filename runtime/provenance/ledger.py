"""The provenance ledger on SQLite (WAL mode, safe with several writers on one machine): the embedded default.

The record format, signatures, hash chain, idempotency keys and verification are shared with the PostgreSQL
backend (ledger_chain.py); this module stores rows in a file and keeps the witness. ``ledger_backends.open_ledger``
picks the backend from a location.

Every append holds the ledger's append lock (``<ledger>-append.lock``, one appender at a time across threads and
processes), takes the chain position from the signed *head* (the last record's seq and hash, signed with the
ledger key), signs the new record, and inserts it and moves the head in one short ``BEGIN IMMEDIATE``
transaction. The file may hold other tables too (``backdrop serve`` keeps its accounts and jobs in it): their
writers wait only for that insert.

Tamper evidence, per record and for the whole ledger:

* **signature**: the Ed25519 signature over the hash recomputed from the stored fields. Editing any
  field makes it ``invalid``; a record signed by another key is ``untrusted signer``.
* **chain**: the record's stored hash matches its content, its ``prev_hash`` is the previous
  record's hash and no seq number is skipped; otherwise ``broken`` with the reason (content altered,
  records missing, not linked, out of order). Removing records from the end is caught by the head.

Wipes and truncations: every append also moves a signed *witness* of the head (after the commit, and only
forwards), kept in the key folder (``keys/<ledger stem>_witness.json``, 0600). A ledger file that was deleted,
emptied, replaced by a fresh one or cut short reads as such (``verify`` names the seq the keys signed last), and
appending to it is refused, so a wipe cannot be papered over by marking one more image. A brand-new home has no
witness yet: its empty ledger is fine. Deleting the witness needs write access to the key folder, which holds the
signing key anyway. A :class:`KeyStore` made in memory (``KeyStore.from_secrets``, e.g. in a Ray worker) has no
key folder, so it neither reads nor writes a witness: such a writer gets the head and chain checks only.

Reading never changes the ledger: readers open it read-only (``file:...?mode=ro``), never create it and never
write a schema into it; a missing or empty file reads as a ledger without records (and ``verify`` says which).
Only appends create or write the file.

Records follow delivery: :meth:`Ledger.appending` holds the append lock while the caller delivers the image
(saves the file, returns the batch) and inserts the records only when that succeeded; a failure records nothing
of the batch, so a record always stands for an image that was delivered.

What a local ledger cannot prove: someone holding the signing key can rewrite history (the witness
included), and an *older* ledger file put back together with the older key folder it came with looks like an
intact, shorter ledger (an older ledger alone is caught by the witness). Keep backups of the key folder apart
from the ledger to make the first harder. SQLite's
WAL mode needs the ledger on a local file system, not a network share: for many machines use PostgreSQL.

Ledger files made before idempotency keys lack the ``idempotency_key`` column: readers cope (no record has a key),
and the first append adds the column and its unique index.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError
from .keys import KeyStore
from .ledger_chain import (
    BROKEN,
    FILE_EMPTY,
    FILE_MISSING,
    FILE_NO_TABLES,
    FILE_OK,
    INTACT,
    INVALID,
    NOT_FOUND,
    UNTRUSTED,
    VALID,
    ChainLedger,
    DuplicateRecordError,
    LedgerReport,
    PendingRecord,
    RecordCheck,
    ed25519_valid,
)
from .records import Record

__all__ = ["BROKEN", "FILE_EMPTY", "FILE_MISSING", "FILE_NO_TABLES", "FILE_OK", "INTACT", "INVALID", "NOT_FOUND",
           "UNTRUSTED", "VALID", "DuplicateRecordError", "Ledger", "LedgerReport", "PendingRecord", "RecordCheck",
           "Witness"]

LEDGER_FILENAME = "ledger.sqlite3"
APPEND_LOCK_SUFFIX = "-append.lock"
BUSY_TIMEOUT_S = 30.0
WITNESS_DOMAIN = b"comfyui-backdrop/ledger-witness/v1\n"
WITNESS_SUFFIX = "_witness.json"

_POSIX = os.name == "posix"
_TABLES = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    id INTEGER NOT NULL,
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
    idempotency_key TEXT
);
CREATE TABLE IF NOT EXISTS head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    record_hash TEXT NOT NULL,
    signer TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS records_by_id ON records (id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_idempotency_key ON records (idempotency_key);
"""
_SCHEMA = _TABLES + _INDEXES


@dataclass(frozen=True)
class Witness:
    """The last (seq, record hash) this home's keys signed, kept in the key folder apart from the ledger."""

    seq: int
    record_hash: str
    valid: bool  # signed by this ledger key
    path: Path


class Ledger(ChainLedger):
    """Append-only, signed, chained records in ``<home>/ledger.sqlite3``.

    Each operation opens its own short-lived connection, so one Ledger may be shared between threads
    and several processes may write to the same file. Reads are read-only connections.
    """

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike, keys: KeyStore) -> None:
        super().__init__(keys)
        self.path = Path(path)
        self._ready = False

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def witness_path(self) -> Path | None:
        """``keys/<ledger stem>_witness.json``; None for keys held in memory (no key folder: no witness)."""
        return None if self.keys.folder is None else self.keys.folder / f"{self.path.stem}{WITNESS_SUFFIX}"

    # ---- the witness (key folder) --------------------------------------------------------------------
    def _before_append(self, tip_seq: int) -> None:
        self._refuse_if_wiped(tip_seq)

    def _after_commit(self, seq: int, digest: str) -> None:
        self._advance_witness(seq, digest)

    def _tip_problems(self, last: Record | None) -> list[str]:
        return self._witness_problems(last)

    def _refuse_if_wiped(self, tip_seq: int) -> None:
        """Appending to a ledger that lost records would hide the loss: refuse, saying how to go on."""
        witness = self.witness()
        if witness is None:
            return
        if not witness.valid:
            raise InvalidInputError(
                f"the ledger witness {witness.path} is damaged or was not signed by this home's key, so a wiped "
                f"ledger could not be told from an intact one; nothing was recorded. Restore the key folder from a "
                f"backup, or move {witness.path.name} away to accept {self.path} as it is")
        if witness.seq > tip_seq:
            raise InvalidInputError(
                f"{self._loss_message(tip_seq, witness)}; nothing was recorded, so the loss stays visible. Restore "
                f"the ledger from a backup; to start a new ledger anyway, move both {self.path} and {witness.path} "
                "away (their records can then no longer be verified here)")

    def witness(self) -> Witness | None:
        """The signed witness of the last seq this home's keys appended, or None for a home without one."""
        path = self.witness_path
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            seq, digest = int(data["seq"]), str(data["record_hash"])
            signer, signature = str(data["signer"]), str(data["signature"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            return Witness(seq=0, record_hash="", valid=False, path=path)
        valid = signer == self.keys.ledger_public_key_hex and ed25519_valid(
            signer, signature, _witness_message(seq, digest))
        return Witness(seq=seq, record_hash=digest, valid=valid, path=path)

    def _advance_witness(self, seq: int, digest: str) -> None:
        # After COMMIT, and only forwards: a crash in between leaves the witness one behind (safe: never a false
        # alarm), and a slower writer that committed earlier never moves it back.
        if self.witness_path is None:
            return
        current = self.witness()
        if current is None or not current.valid or current.seq < seq:
            self._write_witness(seq, digest)

    def _write_witness(self, seq: int, digest: str) -> None:
        path = self.witness_path
        data = {"v": 1, "ledger": self.path.name, "seq": seq, "record_hash": digest,
                "signer": self.keys.ledger_public_key_hex,
                "signature": self.keys.sign(_witness_message(seq, digest)).hex()}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _loss_message(self, last_seq: int, witness: Witness) -> str:
        state = self.file_state()
        signed = f"this home's keys signed {witness.seq} record(s) (witness {witness.path})"
        if state == FILE_MISSING:
            return f"the ledger file {self.path} is missing, but {signed}: it was deleted or moved"
        if state != FILE_OK or last_seq == 0:
            what = {FILE_EMPTY: "is an empty file", FILE_NO_TABLES: "holds no ledger tables"}.get(state,
                                                                                                  "holds no records")
            return f"the ledger {self.path} {what} but {signed}: it was wiped or replaced"
        return (f"the ledger ends at seq {last_seq} but {signed}, up to seq {witness.seq}: records were removed "
                "from the end, or an older copy of the ledger was put back")

    def file_state(self) -> str:
        """``ok``, ``missing``, ``empty (0 bytes)`` or ``no ledger tables``: the file as found, read-only."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return FILE_MISSING
        if size == 0:
            return FILE_EMPTY
        con, tables = self._open_file_read_only()
        con.close()
        return FILE_OK if tables else FILE_NO_TABLES

    def file_warnings(self) -> list[str]:
        """Things about the ledger file a user should fix: readable by other users (it holds private prompts)."""
        warnings = []
        if not _POSIX:
            return warnings
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)  # SQLite gives its -wal and -shm files the same mode
        except OSError:
            return warnings
        if mode & 0o044:
            warnings.append(f"{self.path} is readable by other users (mode {mode:04o}) but holds private prompts and "
                            f"accounts; fix with: chmod 600 '{self.path}'*")
        return warnings

    # ---- verification (what SQLite adds: the witness) ------------------------------------------------
    def _report_tip(self, report: LedgerReport, last: Record | None) -> list[str]:
        witness_problems = self._tip_problems(last)
        witness = self.witness()
        report.witnessed_seq = None if witness is None else witness.seq
        if report.file_state == FILE_EMPTY and not witness_problems:
            report.warnings.append(f"the ledger file {self.path} is empty (0 bytes); this home has no witness of "
                                   "earlier records, so whether it held any cannot be told")
        return witness_problems

    def _witness_problems(self, last: Record | None) -> list[str]:
        witness = self.witness()
        if witness is None:
            return []
        if not witness.valid:
            return [f"the ledger witness {witness.path} is damaged or not signed by this home's key"]
        last_seq = 0 if last is None else last.seq
        if witness.seq > last_seq:
            return [self._loss_message(last_seq, witness)]
        if witness.seq == last_seq and last is not None and witness.record_hash != last.record_hash:
            return [f"the last record (seq {last_seq}) is not the one this home's keys signed (witness "
                    f"{witness.path}): the end of the ledger was replaced"]
        return []

    def _head_row(self, con: sqlite3.Connection):
        try:
            return super()._head_row(con)
        except sqlite3.OperationalError:  # a ledger whose head table was dropped: no head
            return None

    def _has_idempotency_column(self, con: sqlite3.Connection) -> bool:
        return _has_column(con, "idempotency_key")

    # ---- appending: the chain lock over delivery, the database's write lock over the insert only -----
    @contextlib.contextmanager
    def appending(self, pending: Sequence[PendingRecord]) -> Iterator[list[Record]]:
        """As :meth:`ChainLedger.appending`; on SQLite the database's write lock is held only to insert.

        Appenders take the ledger's *append lock* (an exclusive ``flock`` on ``<ledger>-append.lock``, released by
        the kernel if the process dies) for the whole append: read the chain tip, sign, deliver (the block), then
        insert the rows and move the head in one short ``BEGIN IMMEDIATE`` transaction. So the chain stays
        serialised across threads and processes, while other writers of the same database file (the server's
        jobs and accounts) wait only for the insert, never for an image being saved. The insert checks that the
        tip did not move (a writer that ignored the append lock): if it did, nothing is recorded and the append
        fails. Where ``flock`` is missing (Windows) the whole append runs in the write transaction instead.
        """
        if not _POSIX:
            with super().appending(pending) as records:
                yield records
            return
        for item in pending:
            _ = item.idempotency_key  # a bad key fails before the lock is taken
        with self._append_lock(), self._connection() as con:
            con.execute("BEGIN")  # one consistent read of the tip and of what the batch must not repeat
            try:
                tip = self._chain_tip(con)
                self._before_append(tip[0])
                batch = self._sign_batch(con, pending, *tip)
            finally:
                con.execute("COMMIT")  # a read transaction: ends the snapshot before delivery
            yield batch.records
            if not batch.records:
                return
            con.execute("BEGIN IMMEDIATE")
            try:
                if self._chain_tip(con) != tip:
                    raise InvalidInputError(
                        f"another writer appended to {self.path} without taking its append lock (an older "
                        "comfyui-backdrop?) while this batch was delivered; nothing of the batch was recorded, try "
                        "again")
                self._write_batch(con, batch)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        self._after_commit(batch.records[-1].seq, batch.records[-1].record_hash)

    @property
    def append_lock_path(self) -> Path:
        return self.path.with_name(self.path.name + APPEND_LOCK_SUFFIX)

    @contextlib.contextmanager
    def _append_lock(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.append_lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one fd per append: threads of one process exclude each other too
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # ---- connections ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection; a missing file or one without our tables reads as an empty ledger."""
        if self.path.exists():
            con, tables = self._open_file_read_only()
            if not tables:
                con.close()
                con = _empty_ledger()
        else:
            con = _empty_ledger()
        try:
            yield con
        except sqlite3.DatabaseError as exc:  # e.g. a records table of another shape: not our ledger
            raise self._unusable(exc) from exc
        finally:
            con.close()

    def _open_file_read_only(self) -> tuple[sqlite3.Connection, bool]:
        """(read-only connection to the file, whether it holds the records table). Never writes the file."""
        uri = self.path.resolve().as_uri() + "?mode=ro"
        con = None
        try:
            try:
                con = _connect(uri)
                return con, _has_tables(con)
            except sqlite3.OperationalError as first:  # e.g. a WAL ledger in a folder this user cannot write
                if con is not None:
                    con.close()
                if "not a database" in str(first):
                    raise
                con = _connect(uri + "&immutable=1")
                return con, _has_tables(con)
        except sqlite3.DatabaseError as exc:
            if con is not None:
                con.close()
            raise self._unusable(exc) from exc

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A writing connection (creates the file and its schema on first use)."""
        self._prepare()
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA synchronous = FULL")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _prepare(self) -> None:
        if self._ready:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with contextlib.suppress(FileExistsError):  # another process may create it at the same moment
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
            con.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _TABLES.split(";")):
                con.execute(statement)
            if not _has_column(con, "idempotency_key"):  # a ledger made before idempotency keys
                con.execute("ALTER TABLE records ADD COLUMN idempotency_key TEXT")
            for statement in filter(str.strip, _INDEXES.split(";")):
                con.execute(statement)
            con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from exc
        finally:
            con.close()
        self._ready = True

    def _unusable(self, exc: Exception) -> InvalidInputError:
        return InvalidInputError(f"{self.path} is not a usable provenance ledger ({exc}); move it away to start "
                                 "a new one (keep it: its records are still evidence)")


def _connect(uri: str) -> sqlite3.Connection:
    con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return con


def _has_tables(con: sqlite3.Connection) -> bool:
    names = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return "records" in names


def _empty_ledger() -> sqlite3.Connection:
    """An in-memory ledger without records: what reading a missing or table-less file sees."""
    con = sqlite3.connect(":memory:", isolation_level=None)
    con.executescript(_SCHEMA)
    return con


def _witness_message(seq: int, digest: str) -> bytes:
    return WITNESS_DOMAIN + f"{seq}:{digest}".encode()


def _has_column(con: sqlite3.Connection, name: str) -> bool:
    return any(row[1] == name for row in con.execute("PRAGMA table_info(records)"))
