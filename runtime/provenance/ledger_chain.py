"""What every ledger backend shares: signing, the hash chain, the signed head, idempotency keys, verification.

A backend (``ledger.Ledger`` on SQLite, ``ledger_postgres.PostgresLedger``) only stores rows. It provides
connections whose ``execute(sql, params)`` takes ``?`` placeholders and returns a cursor (``fetchone``/``fetchall``):

* ``_reader()``: a connection that cannot write; a store without our tables reads as an empty ledger;
* ``_transaction()``: a writing connection inside one transaction that holds the ledger's append lock (so chain
  appends are serialised by the store itself, across processes and machines), with the schema in place; it
  commits when the block succeeds and rolls back otherwise;

and the hooks ``_before_append`` / ``_after_commit`` / ``_tip_problems`` (the SQLite witness file), ``file_state``
and ``file_warnings``. Everything else (what a record is, how it is hashed, signed, chained and checked) is here,
once, so a record verifies the same in either backend and can be copied between them.

Idempotency: a record whose ``metadata["idempotency_key"]`` (a string, covered by hash and signature) is set is
also stored under that key in a UNIQUE column. Appending a record whose key is already recorded raises
:class:`DuplicateRecordError` while the append lock is held, before the caller's delivery block runs, and the whole
batch rolls back: each key has at most one record, however many writers race for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import InvalidInputError
from .records import (
    GENESIS_HASH,
    IDEMPOTENCY_KEY,
    Record,
    RecordContent,
    canonical_bytes,
    format_id,
    json_depth,
    new_watermark_id,
    signed_message,
)

HEAD_DOMAIN = b"comfyui-backdrop/ledger-head/v1\n"
MAX_STORED_DEPTH = 500  # JSON read back from a row deeper than this is kept as raw text (and fails its hash)

VALID, INVALID, UNTRUSTED = "valid", "invalid", "untrusted signer"
INTACT, BROKEN = "intact", "broken"
NOT_FOUND = "no record"
# What the ledger store looks like (LedgerReport.file_state).
FILE_MISSING, FILE_EMPTY, FILE_NO_TABLES, FILE_OK = "missing", "empty (0 bytes)", "no ledger tables", "ok"

COLUMNS = ("seq", "id", "created_at", "account", "prompt", "negative_prompt", "seed", "models", "loras",
           "image_sha256", "metadata", "signer", "prev_hash", "record_hash", "signature")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM records"
_INSERT = (f"INSERT INTO records ({', '.join(COLUMNS)}, idempotency_key) "
           f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})")
_UPSERT_HEAD = ("INSERT INTO head (one, seq, record_hash, signer, signature) VALUES (1, ?, ?, ?, ?) "
                "ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, record_hash = excluded.record_hash, "
                "signer = excluded.signer, signature = excluded.signature")


class DuplicateRecordError(InvalidInputError):
    """A record with this idempotency key is already in the ledger (``existing``); nothing of the batch was
    recorded."""

    def __init__(self, message: str, existing: Record):
        super().__init__(message)
        self.existing = existing

    def __reduce__(self):  # picklable across processes (Ray, multiprocessing) with its record
        return type(self), (str(self), self.existing)


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
    """Result of checking every record in order, the signed head and (SQLite) the witness in the key folder."""

    records: int = 0
    signature: str = VALID  # valid when every record's signature is valid
    chain: str = INTACT  # intact when every link, the head and the witness are
    problems: list[str] = field(default_factory=list)
    per_record: dict[int, RecordCheck] = field(default_factory=dict)  # seq -> check
    file_state: str = FILE_OK  # ok | missing | empty (0 bytes) | no ledger tables
    witnessed_seq: int | None = None  # the last seq this home's keys signed (None: no witness)
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

    @property
    def idempotency_key(self) -> str | None:
        key = self.content.metadata.get(IDEMPOTENCY_KEY)
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidInputError(f"metadata[{IDEMPOTENCY_KEY!r}] must be a non-empty string, got {key!r}")
        return key


@dataclass(frozen=True)
class SignedBatch:
    """Records signed onto the chain tip, ready to insert: their idempotency keys and the new head's signature."""

    records: list[Record]
    keys: list[str | None]
    head_signature: str


class ChainLedger:
    """Signed, hash-chained records over a backend's storage (see the module docstring for the hooks)."""

    backend = ""  # "sqlite" | "postgresql"

    def __init__(self, keys) -> None:
        self.keys = keys

    @property
    def location(self) -> str:
        """Where the records are, safe to show (never a password)."""
        raise NotImplementedError

    # ---- storage hooks -------------------------------------------------------------------------------
    def _reader(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _transaction(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _has_idempotency_column(self, con) -> bool:
        return True

    def _before_append(self, tip_seq: int) -> None:
        """Refuse an append that would hide a loss (SQLite: the witness)."""

    def _after_commit(self, seq: int, digest: str) -> None:
        """After the append committed (SQLite: move the witness forwards)."""

    def _tip_problems(self, last: Record | None) -> list[str]:
        """Is the end of the ledger what the keys signed last, beyond the head (SQLite: the witness)?"""
        return []

    def file_state(self) -> str:
        return FILE_OK

    def file_warnings(self) -> list[str]:
        return []

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
        delivered. Other appenders wait while the block runs, so keep it short (on PostgreSQL the transaction
        stays open; SQLite inserts after the block, see ``ledger.Ledger.appending``). A record whose idempotency
        key is already recorded raises :class:`DuplicateRecordError` before the block runs.
        """
        for item in pending:
            _ = item.idempotency_key  # a bad key fails before the lock is taken
        with self._transaction() as con:
            last_seq, last_hash = self._chain_tip(con)
            self._before_append(last_seq)
            batch = self._sign_batch(con, pending, last_seq, last_hash)
            self._write_batch(con, batch)
            yield batch.records
        if batch.records:
            self._after_commit(batch.records[-1].seq, batch.records[-1].record_hash)

    def _sign_batch(self, con, pending: Sequence[PendingRecord], last_seq: int, last_hash: str) -> SignedBatch:
        """Check ``pending`` against the ledger (idempotency keys, IDs) and sign it onto (last_seq, last_hash):
        reads only, so a backend may do it before taking its write lock."""
        records: list[Record] = []
        seen_keys: set[str] = set()
        seen_ids: set[int] = set()
        for item in pending:
            wid, key = int(item.watermark_id), item.idempotency_key
            if key is not None:
                row = con.execute(f"{_SELECT} WHERE idempotency_key = ?", (key,)).fetchone()
                if row is not None:
                    existing = from_row(row)
                    raise DuplicateRecordError(f"idempotency key {key!r} is already recorded (ID "
                                               f"{existing.id_hex}, seq {existing.seq}); nothing of this batch was "
                                               "recorded", existing)
                if key in seen_keys:
                    raise InvalidInputError(f"idempotency key {key!r} appears twice in one batch; nothing of this "
                                            "batch was recorded")
                seen_keys.add(key)
            exists = wid in seen_ids or con.execute("SELECT 1 FROM records WHERE id = ?",
                                                    (wid,)).fetchone() is not None
            if exists and not item.add_to_existing:
                raise InvalidInputError(f"watermark ID {format_id(wid)} is already in the ledger")
            if item.add_to_existing and not exists:
                raise InvalidInputError(f"watermark ID {format_id(wid)} has no record to add to")
            seen_ids.add(wid)
            record = self._signed_record(item.content, item.image_sha256, wid, last_seq + 1, last_hash)
            last_seq, last_hash = record.seq, record.record_hash
            records.append(record)
        head_signature = self.keys.sign(head_message(last_seq, last_hash)).hex() if records else ""
        return SignedBatch(records, [item.idempotency_key for item in pending], head_signature)

    def _write_batch(self, con, batch: SignedBatch) -> None:
        """Insert a signed batch and move the signed head, inside the caller's write transaction."""
        for record, key in zip(batch.records, batch.keys, strict=True):
            con.execute(_INSERT, (*to_row(record), key))
        if batch.records:
            last = batch.records[-1]
            con.execute(_UPSERT_HEAD, (last.seq, last.record_hash, self.keys.ledger_public_key_hex,
                                       batch.head_signature))

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

    def _chain_tip(self, con) -> tuple[int, str]:
        """(seq, hash) to chain onto: the signed head if it verifies, else the last row, else genesis."""
        head = self._head_row(con)
        if head and self._head_valid(*head):
            return int(head[0]), str(head[1])
        last = con.execute("SELECT seq, record_hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)

    # ---- reading -------------------------------------------------------------------------------------
    def get(self, watermark_id: int) -> Record | None:
        """The ID's first (origin) record, or None."""
        with self._reader() as con:
            row = con.execute(f"{_SELECT} WHERE id = ? ORDER BY seq LIMIT 1", (int(watermark_id),)).fetchone()
        return None if row is None else from_row(row)

    def find_idempotent(self, key: str) -> Record | None:
        """The record stored under idempotency ``key``, or None (also for an older ledger without the column)."""
        with self._reader() as con:
            if not self._has_idempotency_column(con):
                return None
            row = con.execute(f"{_SELECT} WHERE idempotency_key = ?", (str(key),)).fetchone()
        return None if row is None else from_row(row)

    def contains(self, watermark_id: int) -> bool:
        with self._reader() as con:
            return con.execute("SELECT 1 FROM records WHERE id = ?", (int(watermark_id),)).fetchone() is not None

    def records(self) -> Iterator[Record]:
        """All records in ledger order (by seq)."""
        with self._reader() as con:
            rows = con.execute(f"{_SELECT} ORDER BY seq").fetchall()
        for row in rows:
            yield from_row(row)

    def __len__(self) -> int:
        with self._reader() as con:
            return int(con.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    # ---- verification --------------------------------------------------------------------------------
    def check_signature(self, record: Record) -> str:
        """``valid`` / ``invalid`` / ``untrusted signer`` for the record as stored."""
        if record.signer != self.keys.ledger_public_key_hex:
            return UNTRUSTED
        ok = ed25519_valid(record.signer, record.signature, signed_message(record.computed_hash()))
        return VALID if ok else INVALID

    def check_id(self, watermark_id: int) -> list[tuple[Record, RecordCheck]]:
        """Every record of an ID (origin first), each checked against its neighbours: no full scan."""
        with self._reader() as con:
            seqs = [r[0] for r in con.execute("SELECT seq FROM records WHERE id = ? ORDER BY seq",
                                              (int(watermark_id),)).fetchall()]
        return [self.check_seq(seq) for seq in seqs]

    def check_seq(self, seq: int) -> tuple[Record, RecordCheck]:
        """The record at ``seq`` and its status against its neighbours (previous, next, head, witness)."""
        with self._reader() as con:
            row = con.execute(f"{_SELECT} WHERE seq = ?", (int(seq),)).fetchone()
            if row is None:
                raise InvalidInputError(f"the ledger has no record at seq {seq}")
            record = from_row(row)
            prev_row = con.execute(f"{_SELECT} WHERE seq < ? ORDER BY seq DESC LIMIT 1", (record.seq,)).fetchone()
            next_row = con.execute("SELECT seq, prev_hash FROM records WHERE seq > ? ORDER BY seq LIMIT 1",
                                   (record.seq,)).fetchone()
            head = self._head_row(con)
        previous = None if prev_row is None else from_row(prev_row)
        problems = self._link_problems(record, previous)
        if next_row is not None and next_row[1] != record.record_hash:
            problems.append(f"the next record (seq {next_row[0]}) does not link to this one")
        if next_row is None:
            problems.extend(self._head_problems(head, record))
            problems.extend(self._tip_problems(record))
        return record, RecordCheck(self.check_signature(record), BROKEN if problems else INTACT, tuple(problems))

    def integrity_problems(self) -> list[str]:
        """Without a full scan: is the ledger wiped or cut short compared with its head (and SQLite's witness)?"""
        with self._reader() as con:
            row = con.execute(f"{_SELECT} ORDER BY seq DESC LIMIT 1").fetchone()
            head = self._head_row(con)
        last = None if row is None else from_row(row)
        return [f"head: {p}" for p in self._head_problems(head, last)] + self._tip_problems(last)

    def verify(self) -> LedgerReport:
        """Check every record's signature and link, the head (and SQLite's witness), in one pass. Read-only."""
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
            head = self._head_row(con)
        chain_problems.extend(f"head: {p}" for p in self._head_problems(head, previous))
        chain_problems.extend(self._report_tip(report, previous))
        report.problems.extend(chain_problems)
        bad_signatures = sum(c.signature != VALID for c in report.per_record.values())
        report.signature = VALID if not bad_signatures else f"{INVALID} ({bad_signatures} of {report.records})"
        report.chain = INTACT if not chain_problems else f"{BROKEN}: {chain_problems[0]}"
        return report

    def _report_tip(self, report: LedgerReport, last: Record | None) -> list[str]:
        """Tip problems for :meth:`verify`; a backend may add what it knows to the report (SQLite: the witness)."""
        return self._tip_problems(last)

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
            message = head_message(int(seq), str(digest))
        except (TypeError, ValueError, UnicodeError):
            return False
        return ed25519_valid(signer, signature, message)

    def _head_row(self, con):
        return con.execute("SELECT seq, record_hash, signer, signature FROM head WHERE one = 1").fetchone()


def ed25519_valid(public_hex: str, signature_hex: str, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def head_message(seq: int, digest: str) -> bytes:
    return HEAD_DOMAIN + f"{seq}:{digest}".encode("ascii")


def to_row(record: Record) -> tuple:
    """The stored columns (``COLUMNS``) of a record: JSON fields as canonical text, the seed as text."""
    return (record.seq, record.id, record.created_at, record.account, record.prompt, record.negative_prompt,
            None if record.seed is None else str(record.seed), _dumps(record.models), _dumps(record.loras),
            record.image_sha256, _dumps(record.metadata), record.signer, record.prev_hash,
            record.record_hash, record.signature)


def from_row(row: Sequence) -> Record:
    """A stored row as a Record. Values edited to the wrong type are coerced (``seq``/``id`` to 0, JSON
    columns to their raw text) so that verification reports them instead of failing."""
    values = dict(zip(COLUMNS, row, strict=True))
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
