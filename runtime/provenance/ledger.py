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

What a local ledger cannot prove: someone holding the signing key can rewrite history, and a copy of
an *older* ledger file (with its own older, validly signed head) is indistinguishable from a
truncation. Keep backups of the key folder apart from the ledger to make the first harder. SQLite's
WAL mode needs the ledger on a local file system, not a network share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import sqlite3
from collections.abc import Iterator
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
    new_watermark_id,
    signed_message,
)

LEDGER_FILENAME = "ledger.sqlite3"
BUSY_TIMEOUT_S = 30.0
HEAD_DOMAIN = b"comfyui-backdrop/ledger-head/v1\n"

VALID, INVALID, UNTRUSTED = "valid", "invalid", "untrusted signer"
INTACT, BROKEN = "intact", "broken"
NOT_FOUND = "no record"

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
    """Result of checking every record in order, plus the signed head."""

    records: int = 0
    signature: str = VALID  # valid when every record's signature is valid
    chain: str = INTACT  # intact when every link and the head are
    problems: list[str] = field(default_factory=list)
    per_record: dict[int, RecordCheck] = field(default_factory=dict)  # seq -> check

    @property
    def ok(self) -> bool:
        return self.signature == VALID and self.chain == INTACT


class Ledger:
    """Append-only, signed, chained records in ``<home>/ledger.sqlite3``.

    Each operation opens its own short-lived connection, so one Ledger may be shared between threads
    and several processes may write to the same file.
    """

    def __init__(self, path: str | os.PathLike, keys: KeyStore) -> None:
        self.path = Path(path)
        self.keys = keys
        self._ready = False

    # ---- writing -------------------------------------------------------------------------------------
    def append(self, content: RecordContent, image_sha256: str, watermark_id: int | None = None,
               add_to_existing: bool = False) -> Record:
        """Sign and append one record; returns it. ``watermark_id`` defaults to a fresh random ID.

        An ID normally has one record. ``add_to_existing`` appends a further record to an ID the ledger
        already holds (the re-marking policy ``add-record``); the first record stays the image's origin.
        """
        wid = new_watermark_id() if watermark_id is None else int(watermark_id)
        with self._transaction() as con:
            exists = con.execute("SELECT 1 FROM records WHERE id = ?", (wid,)).fetchone() is not None
            if exists and not add_to_existing:
                raise InvalidInputError(f"watermark ID {format_id(wid)} is already in the ledger")
            if add_to_existing and not exists:
                raise InvalidInputError(f"watermark ID {format_id(wid)} has no record to add to")
            last_seq, last_hash = self._chain_tip(con)
            record = self._signed_record(content, image_sha256, wid, last_seq + 1, last_hash)
            con.execute(f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                        _to_row(record))
            head_sig = self.keys.sign(_head_message(record.seq, record.record_hash)).hex()
            con.execute("INSERT OR REPLACE INTO head (one, seq, record_hash, signer, signature) VALUES (1, ?, ?, ?, ?)",
                        (record.seq, record.record_hash, self.keys.ledger_public_key_hex, head_sig))
        return record

    def contains(self, watermark_id: int) -> bool:
        with self._connection() as con:
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
        head = con.execute("SELECT seq, record_hash, signer, signature FROM head WHERE one = 1").fetchone()
        if head and self._head_valid(*head):
            return int(head[0]), str(head[1])
        last = con.execute("SELECT seq, record_hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)

    # ---- reading -------------------------------------------------------------------------------------
    def get(self, watermark_id: int) -> Record | None:
        """The ID's first (origin) record, or None."""
        with self._connection() as con:
            row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records WHERE id = ? ORDER BY seq LIMIT 1",
                              (int(watermark_id),)).fetchone()
        return None if row is None else _from_row(row)

    def records(self) -> Iterator[Record]:
        """All records in ledger order (by seq)."""
        with self._connection() as con:
            rows = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records ORDER BY seq").fetchall()
        for row in rows:
            yield _from_row(row)

    def __len__(self) -> int:
        with self._connection() as con:
            return int(con.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    # ---- verification --------------------------------------------------------------------------------
    def check_signature(self, record: Record) -> str:
        """``valid`` / ``invalid`` / ``untrusted signer`` for the record as stored."""
        if record.signer != self.keys.ledger_public_key_hex:
            return UNTRUSTED
        ok = _ed25519_valid(record.signer, record.signature, signed_message(record.computed_hash()))
        return VALID if ok else INVALID

    def check_id(self, watermark_id: int) -> list[tuple[Record, RecordCheck]]:
        """Every record of an ID (origin first), each checked against its neighbours: no full scan."""
        with self._connection() as con:
            seqs = [r[0] for r in con.execute("SELECT seq FROM records WHERE id = ? ORDER BY seq",
                                              (int(watermark_id),))]
        return [self.check_seq(seq) for seq in seqs]

    def check_seq(self, seq: int) -> tuple[Record, RecordCheck]:
        """The record at ``seq`` and its status against its neighbours (previous, next, head)."""
        with self._connection() as con:
            row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records WHERE seq = ?", (int(seq),)).fetchone()
            if row is None:
                raise InvalidInputError(f"the ledger has no record at seq {seq}")
            record = _from_row(row)
            prev_row = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM records WHERE seq < ? ORDER BY seq DESC "
                                   "LIMIT 1", (record.seq,)).fetchone()
            next_row = con.execute("SELECT seq, prev_hash FROM records WHERE seq > ? ORDER BY seq LIMIT 1",
                                   (record.seq,)).fetchone()
            head = con.execute("SELECT seq, record_hash, signer, signature FROM head WHERE one = 1").fetchone()
        previous = None if prev_row is None else _from_row(prev_row)
        problems = self._link_problems(record, previous)
        if next_row is not None and next_row[1] != record.record_hash:
            problems.append(f"the next record (seq {next_row[0]}) does not link to this one")
        if next_row is None:
            problems.extend(self._head_problems(head, record))
        return record, RecordCheck(self.check_signature(record), BROKEN if problems else INTACT, tuple(problems))

    def verify(self) -> LedgerReport:
        """Check every record's signature and link, and the head, in one pass."""
        report = LedgerReport()
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
        with self._connection() as con:
            head = con.execute("SELECT seq, record_hash, signer, signature FROM head WHERE one = 1").fetchone()
        chain_problems.extend(f"head: {p}" for p in self._head_problems(head, previous))
        report.problems.extend(chain_problems)
        bad_signatures = sum(c.signature != VALID for c in report.per_record.values())
        report.signature = VALID if not bad_signatures else f"{INVALID} ({bad_signatures} of {report.records})"
        report.chain = INTACT if not chain_problems else f"{BROKEN}: {chain_problems[0]}"
        return report

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
    def _connection(self) -> Iterator[sqlite3.Connection]:
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
            raise InvalidInputError(f"{self.path} is not a usable provenance ledger ({exc}); move it away to start "
                                    "a new one (keep it: its records are still evidence)") from exc
        finally:
            con.close()
        self._ready = True


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
        return json.loads(text, parse_constant=_reject_constant)
    except (TypeError, ValueError):
        return text  # edited to invalid JSON: the raw text makes the hash differ


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in a record")
