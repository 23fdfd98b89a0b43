"""The provenance ledger: signed, hash-chained records in SQLite (WAL mode, safe with several writers).

Every append runs in ``BEGIN IMMEDIATE`` (one writer at a time, others wait up to ``busy_timeout``),
takes the chain position from the signed *head* (the last record's seq and hash, signed with the
ledger key), signs the new record and moves the head in the same transaction.

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
signing key anyway.

Reading never changes the ledger: readers open it read-only (``file:...?mode=ro``), never create it and never
write a schema into it; a missing or empty file reads as a ledger without records (and ``verify`` says which).
Only appends create or write the file.

Records follow delivery: :meth:`Ledger.appending` holds the append transaction open while the caller
delivers the image (saves the file, returns the batch) and commits only when that succeeded; a failure
rolls every record of the batch back, so a record always stands for an image that was delivered.

What a local ledger cannot prove: someone holding the signing key can rewrite history (the witness
included), and an *older* ledger file put back together with the older key folder it came with looks like an
intact, shorter ledger (an older ledger alone is caught by the witness). Keep backups of the key folder apart
from the ledger to make the first harder. SQLite's
WAL mode needs the ledger on a local file system, not a network share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import sqlite3
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInputError
from .keys import KeyStore
from .records import (
    GENESIS_HASH,
    Record,
    RecordContent,
    canonical_bytes,
    format_id,
    json_depth,
    new_watermark_id,
    signed_message,
)

LEDGER_FILENAME = "ledger.sqlite3"
BUSY_TIMEOUT_S = 30.0
HEAD_DOMAIN = b"comfyui-backdrop/ledger-head/v1\n"
WITNESS_DOMAIN = b"comfyui-backdrop/ledger-witness/v1\n"
WITNESS_SUFFIX = "_witness.json"
MAX_STORED_DEPTH = 500  # JSON read back from a row deeper than this is kept as raw text (and fails its hash)

VALID, INVALID, UNTRUSTED = "valid", "invalid", "untrusted signer"
INTACT, BROKEN = "intact", "broken"
NOT_FOUND = "no record"
# What the ledger file looks like on disk (LedgerReport.file_state).
FILE_MISSING, FILE_EMPTY, FILE_NO_TABLES, FILE_OK = "missing", "empty (0 bytes)", "no ledger tables", "ok"

_POSIX = os.name == "posix"
_COLUMNS = ("seq", "id", "created_at", "account", "prompt", "negative_prompt", "seed", "models", "loras",
            "image_sha256", "metadata", "signer", "prev_hash", "record_hash", "signature")
_SCHEMA = """
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
    signature TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_id ON records (id, seq);
CREATE TABLE IF NOT EXISTS head (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    record_hash TEXT NOT NULL,
    signer TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class RecordCheck:
    """Signature and chain status of one record, with the reasons for anything not fine."""

    signature: str  # valid | invalid | untrusted signer
    chain: str  # intact | broken
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.signature == VALID and self.chain == INTACT


@dataclass
class LedgerReport:
    """Result of checking every record in order, the signed head and the witness in the key folder."""

    records: int = 0
    signature: str = VALID  # valid when every record's signature is valid
    chain: str = INTACT  # intact when every link, the head and the witness are
    problems: list[str] = field(default_factory=list)
    per_record: dict[int, RecordCheck] = field(default_factory=dict)  # seq -> check
    file_state: str = FILE_OK  # ok | missing | empty (0 bytes) | no ledger tables
    witnessed_seq: int | None = None  # the last seq this home's keys signed (None: no witness yet)
    warnings: list[str] = field(default_factory=list)  # e.g. the file is readable by other users

    @property
    def ok(self) -> bool:
        return self.signature == VALID and self.chain == INTACT


@dataclass(frozen=True)
class PendingRecord:
    """A record to append: what the caller states, the hash of the delivered pixels and the watermark ID."""

    content: RecordContent
    image_sha256: str
    watermark_id: int
    add_to_existing: bool = False


@dataclass(frozen=True)
class Witness:
    """The last (seq, record hash) this home's keys signed, kept in the key folder apart from the ledger."""

    seq: int
    record_hash: str
    valid: bool  # signed by this ledger key
    path: Path


class Ledger:
    """Append-only, signed, chained records in ``<home>/ledger.sqlite3``.

    Each operation opens its own short-lived connection, so one Ledger may be shared between threads
    and several processes may write to the same file. Reads are read-only connections.
    """

    def __init__(self, path: str | os.PathLike, keys: KeyStore) -> None:
        self.path = Path(path)
        self.keys = keys
        self._ready = False

    @property
    def witness_path(self) -> Path:
        return self.keys.folder / f"{self.path.stem}{WITNESS_SUFFIX}"

    # ---- writing -------------------------------------------------------------------------------------
    def append(self, content: RecordContent, image_sha256: str, watermark_id: int | None = None,
               add_to_existing: bool = False) -> Record:
        """Sign and append one record; returns it. ``watermark_id`` defaults to a fresh random ID.

        An ID normally has one record. ``add_to_existing`` appends a further record to an ID the ledger
        already holds (the re-marking policy ``add-record``); the first record stays the image's origin.
        """
        wid = new_watermark_id() if watermark_id is None else int(watermark_id)
        with self.appending([PendingRecord(content, image_sha256, wid, add_to_existing)]) as (record,):
            pass
        return record

    @contextlib.contextmanager
    def appending(self, pending: Sequence[PendingRecord]) -> Iterator[list[Record]]:
        """Sign and insert ``pending`` in one transaction; yields the records, commits when the block succeeds.

        Use it to make records follow delivery: save the image (or hand the batch on) inside the block. An
        exception in the block rolls every record back: nothing is recorded for a batch that was not
        delivered. Other writers wait while the block runs (up to ``BUSY_TIMEOUT_S``), so keep it short.
        """
        records: list[Record] = []
        with self._transaction() as con:
            last_seq, last_hash = self._chain_tip(con)
            self._refuse_if_wiped(last_seq)
            for item in pending:
                record = self._insert(con, item, last_seq + 1, last_hash)
                last_seq, last_hash = record.seq, record.record_hash
                records.append(record)
            if records:
                head_sig = self.keys.sign(_head_message(last_seq, last_hash)).hex()
                con.execute("INSERT OR REPLACE INTO head (one, seq, record_hash, signer, signature) "
                            "VALUES (1, ?, ?, ?, ?)", (last_seq, last_hash, self.keys.ledger_public_key_hex, head_sig))
            yield records
        if records:
            # After COMMIT, and only forwards: a crash in between leaves the witness one behind (safe: never a false
            # alarm), and a slower writer that committed earlier never moves it back.
            self._advance_witness(last_seq, last_hash)

    def _insert(self, con: sqlite3.Connection, item: PendingRecord, seq: int, prev_hash: str) -> Record:
        wid = int(item.watermark_id)
        exists = con.execute("SELECT 1 FROM records WHERE id = ?", (wid,)).fetchone() is not None
        if exists and not item.add_to_existing:
            raise InvalidInputError(f"watermark ID {format_id(wid)} is already in the ledger")
        if item.add_to_existing and not exists:
            raise InvalidInputError(f"watermark ID {format_id(wid)} has no record to add to")
        record = self._signed_record(item.content, item.image_sha256, wid, seq, prev_hash)
        con.execute(f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    _to_row(record))
        return record

    def contains(self, watermark_id: int) -> bool:
        with self._reader() as con:
            return con.execute("SELECT 1 FROM records WHERE id = ?", (int(watermark_id),)).fetchone() is not None

    def _signed_record(self, content: RecordContent, image_sha256: str, wid: int, seq: int,
                       prev_hash: str) -> Record:
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        unsigned = Record(seq=seq, id=wid, created_at=created, account=content.account, prompt=content.prompt,
                          negative_prompt=content.negative_prompt, seed=content.seed, models=dict(content.models),
                          loras=dict(content.loras), image_sha256=image_sha256,
                          metadata=json.loads(json.dumps(content.metadata)), signer=self.keys.ledger_public_key_hex,
                          prev_hash=prev_hash, record_hash="", signature="")
        digest = unsigned.computed_hash()
        signature = self.keys.sign(signed_message(digest)).hex()
        return dataclasses.replace(unsigned, record_hash=digest, signature=signature)

    def _chain_tip(self, con: sqlite3.Connection) -> tuple[int, str]:
        """(seq, hash) to chain onto: the signed head if it verifies, else the last row, else genesis."""
        head = _head_row(con)
        if head and self._head_valid(*head):
            return int(head[0]), str(head[1])
        last = con.execute("SELECT seq, record_hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)

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

    # ---- the witness (key folder) --------------------------------------------------------------------
    def witness(self) -> Witness | None:
        """The signed witness of the last seq this home's keys appended, or None for a home without one."""
        path = self.witness_path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            seq, digest = int(data["seq"]), str(data["record_hash"])
            signer, signature = str(data["signer"]), str(data["signature"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            return Witness(seq=0, record_hash="", valid=False, path=path)
        valid = signer == self.keys.ledger_public_key_hex and _ed25519_valid(
            signer, signature, _witness_message(seq, digest))
        return Witness(seq=seq, record_hash=digest, valid=valid, path=path)

    def _advance_witness(self, seq: int, digest: str) -> None:
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

    # ---- reading -------------------------------------------------------------------------------------
    def get(self, watermark_id: int) -> Record | None:
        """The ID's first (origin) record, or None."""
        with self._reader() as con:
            row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records WHERE id = ? ORDER BY seq LIMIT 1",
                              (int(watermark_id),)).fetchone()
        return None if row is None else _from_row(row)

    def records(self) -> Iterator[Record]:
        """All records in ledger order (by seq)."""
        with self._reader() as con:
            rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records ORDER BY seq").fetchall()
        for row in rows:
            yield _from_row(row)

    def __len__(self) -> int:
        with self._reader() as con:
            return int(con.execute("SELECT COUNT(*) FROM records").fetchone()[0])

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

    # ---- verification --------------------------------------------------------------------------------
    def check_signature(self, record: Record) -> str:
        """``valid`` / ``invalid`` / ``untrusted signer`` for the record as stored."""
        if record.signer != self.keys.ledger_public_key_hex:
            return UNTRUSTED
        ok = _ed25519_valid(record.signer, record.signature, signed_message(record.computed_hash()))
        return VALID if ok else INVALID

    def check_id(self, watermark_id: int) -> list[tuple[Record, RecordCheck]]:
        """Every record of an ID (origin first), each checked against its neighbours: no full scan."""
        with self._reader() as con:
            seqs = [r[0] for r in con.execute("SELECT seq FROM records WHERE id = ? ORDER BY seq",
                                              (int(watermark_id),))]
        return [self.check_seq(seq) for seq in seqs]

    def check_seq(self, seq: int) -> tuple[Record, RecordCheck]:
        """The record at ``seq`` and its status against its neighbours (previous, next, head, witness)."""
        with self._reader() as con:
            row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records WHERE seq = ?", (int(seq),)).fetchone()
            if row is None:
                raise InvalidInputError(f"the ledger has no record at seq {seq}")
            record = _from_row(row)
            prev_row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records WHERE seq < ? ORDER BY seq DESC "
                                   "LIMIT 1", (record.seq,)).fetchone()
            next_row = con.execute("SELECT seq, prev_hash FROM records WHERE seq > ? ORDER BY seq LIMIT 1",
                                   (record.seq,)).fetchone()
            head = _head_row(con)
        previous = None if prev_row is None else _from_row(prev_row)
        problems = self._link_problems(record, previous)
        if next_row is not None and next_row[1] != record.record_hash:
            problems.append(f"the next record (seq {next_row[0]}) does not link to this one")
        if next_row is None:
            problems.extend(self._head_problems(head, record))
            problems.extend(self._witness_problems(record))
        return record, RecordCheck(self.check_signature(record), BROKEN if problems else INTACT, tuple(problems))

    def integrity_problems(self) -> list[str]:
        """Without a full scan: is the ledger missing, wiped or cut short compared with the witness?"""
        with self._reader() as con:
            row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return self._witness_problems(None if row is None else _from_row(row))

    def verify(self) -> LedgerReport:
        """Check every record's signature and link, the head and the witness, in one pass. Read-only."""
        report = LedgerReport(file_state=self.file_state(), warnings=self.file_warnings())
        chain_problems: list[str] = []
        previous: Record | None = None
        for record in self.records():
            problems = self._link_problems(record, previous)
            check = RecordCheck(self.check_signature(record), BROKEN if problems else INTACT, tuple(problems))
            report.per_record[record.seq] = check
            report.records += 1
            chain_problems.extend(f"seq {record.seq} (ID {record.id_hex}): {p}" for p in problems)
            if check.signature != VALID:
                report.problems.append(f"seq {record.seq} (ID {record.id_hex}): signature {check.signature}")
            previous = record
        with self._reader() as con:
            head = _head_row(con)
        chain_problems.extend(f"head: {p}" for p in self._head_problems(head, previous))
        witness_problems = self._witness_problems(previous)
        chain_problems.extend(witness_problems)
        witness = self.witness()
        report.witnessed_seq = None if witness is None else witness.seq
        if report.file_state == FILE_EMPTY and not witness_problems:
            report.warnings.append(f"the ledger file {self.path} is empty (0 bytes); this home has no witness of "
                                   "earlier records, so whether it held any cannot be told")
        report.problems.extend(chain_problems)
        bad_signatures = sum(c.signature != VALID for c in report.per_record.values())
        report.signature = VALID if not bad_signatures else f"{INVALID} ({bad_signatures} of {report.records})"
        report.chain = INTACT if not chain_problems else f"{BROKEN}: {chain_problems[0]}"
        return report

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

    def _link_problems(self, record: Record, previous: Record | None) -> list[str]:
        problems = []
        if record.computed_hash() != record.record_hash:
            problems.append("content altered (stored hash does not match the fields)")
        expected_seq = 1 if previous is None else previous.seq + 1
        if record.seq != expected_seq:
            problems.append(f"records {expected_seq}..{record.seq - 1} are missing" if record.seq > expected_seq
                            else "out of order")
        expected_prev = GENESIS_HASH if previous is None else previous.record_hash
        if record.prev_hash != expected_prev:
            problems.append("does not link to the previous record")
        return problems

    def _head_problems(self, head, last: Record | None) -> list[str]:
        if head is None:
            return ["the signed head is missing"] if last is not None else []
        if not self._head_valid(*head):
            return ["the head's signature is invalid"]
        if last is None:
            return [f"the head names seq {head[0]} but the ledger is empty (records removed)"]
        if int(head[0]) != last.seq or head[1] != last.record_hash:
            return [f"the ledger ends at seq {last.seq} but the signed head names seq {head[0]} "
                    "(records removed or replaced at the end)"]
        return []

    def _head_valid(self, seq, digest, signer, signature) -> bool:
        if signer != self.keys.ledger_public_key_hex:
            return False
        try:
            message = _head_message(int(seq), str(digest))
        except (TypeError, ValueError, UnicodeError):
            return False
        return _ed25519_valid(signer, signature, message)

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
            for statement in filter(str.strip, _SCHEMA.split(";")):
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


def _head_row(con: sqlite3.Connection):
    try:
        return con.execute("SELECT seq, record_hash, signer, signature FROM head WHERE one = 1").fetchone()
    except sqlite3.OperationalError:  # a ledger whose head table was dropped: no head
        return None


def _ed25519_valid(public_hex: str, signature_hex: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _head_message(seq: int, digest: str) -> bytes:
    return HEAD_DOMAIN + f"{seq}:{digest}".encode("ascii")


def _witness_message(seq: int, digest: str) -> bytes:
    return WITNESS_DOMAIN + f"{seq}:{digest}".encode()


def _to_row(record: Record) -> tuple:
    return (record.seq, record.id, record.created_at, record.account, record.prompt, record.negative_prompt,
            None if record.seed is None else str(record.seed), _dumps(record.models), _dumps(record.loras),
            record.image_sha256, _dumps(record.metadata), record.signer, record.prev_hash,
            record.record_hash, record.signature)


def _from_row(row: tuple) -> Record:
    """A stored row as a Record. Values edited to the wrong type are coerced (``seq``/``id`` to 0, JSON
    columns to their raw text) so that verification reports them instead of failing."""
    values = dict(zip(_COLUMNS, row, strict=True))
    for name in ("seq", "id"):
        values[name] = values[name] if isinstance(values[name], int) else 0
    for name in ("models", "loras", "metadata"):
        values[name] = _loads(values[name])
    seed = values["seed"]
    try:
        values["seed"] = None if seed is None else int(seed)
    except (TypeError, ValueError):
        values["seed"] = seed
    for name in ("created_at", "account", "prompt", "negative_prompt", "image_sha256", "signer", "prev_hash",
                 "record_hash", "signature"):
        values[name] = "" if values[name] is None else str(values[name])
    return Record(**values)


def _dumps(value) -> str:
    return canonical_bytes(value).decode("utf-8")


def _loads(text):
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (TypeError, ValueError, RecursionError):
        return text  # edited to invalid (or absurdly nested) JSON: the raw text makes the hash differ
    return value if json_depth(value) <= MAX_STORED_DEPTH else text


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in a record")
