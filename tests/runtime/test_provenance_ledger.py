"""Ledger: append/read/verify, tamper evidence (edited field, deleted row, swapped rows, truncation,
foreign signer), several concurrent writers."""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import sqlite3
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.keys import load_keys
from comfyui_backdrop.runtime.provenance.ledger import INTACT, INVALID, UNTRUSTED, VALID, Ledger
from comfyui_backdrop.runtime.provenance.records import (
    GENESIS_HASH,
    RecordContent,
    format_id,
    parse_id,
    pixel_sha256,
)


def _content(i: int) -> RecordContent:
    return RecordContent(account=f"studio-{i % 2}", prompt=f"bottle on linen {i}", negative_prompt="blurry",
                         seed=2**64 - 1 - i, models={"sd15-inpaint.safetensors": "ab" * 32},
                         loras={"soft-spring.safetensors": "cd" * 32}, metadata={"i": i, "note": "ünïcode"})


@pytest.fixture()
def ledger(tmp_path):
    keys = load_keys(tmp_path)
    book = Ledger(tmp_path / "ledger.sqlite3", keys)
    for i in range(5):
        book.append(_content(i), f"{i:064x}")
    return book


def _raw(book: Ledger) -> sqlite3.Connection:
    return sqlite3.connect(book.path, isolation_level=None)


def test_append_read_and_verify(ledger):
    records = list(ledger.records())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.record_hash for a, b in itertools.pairwise(records))
    assert len({r.id for r in records}) == 5 and all(0 < r.id < 2**63 for r in records)
    third = ledger.get(records[2].id)
    assert third == records[2]
    assert third.seed == 2**64 - 3 and third.metadata == {"i": 2, "note": "ünïcode"}
    assert third.models == {"sd15-inpaint.safetensors": "ab" * 32}
    assert third.created_at.endswith("+00:00")
    report = ledger.verify()
    assert report.ok and report.records == 5 and report.signature == VALID and report.chain == INTACT
    [(record, check)] = ledger.check_id(records[2].id)
    assert record == third and check.ok
    assert ledger.get(123) is None and ledger.check_id(123) == []


def test_wal_mode_and_private_file(ledger):
    import os
    import stat

    with _raw(ledger) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    if os.name == "posix":
        assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600


def test_duplicate_ids_are_refused_unless_adding_a_record(ledger):
    first = next(ledger.records())
    with pytest.raises(InvalidInputError, match="already in the ledger"):
        ledger.append(_content(9), "0" * 64, watermark_id=first.id)
    extra = ledger.append(_content(9), "1" * 64, watermark_id=first.id, add_to_existing=True)
    assert ledger.get(first.id) == first, "the first record stays the ID's origin"
    assert [r.seq for r, _ in ledger.check_id(first.id)] == [first.seq, extra.seq]
    with pytest.raises(InvalidInputError, match="no record to add to"):
        ledger.append(_content(9), "1" * 64, watermark_id=77, add_to_existing=True)
    assert ledger.verify().ok


def test_edited_field_is_detected(ledger):
    target = list(ledger.records())[2]
    with _raw(ledger) as con:
        con.execute("UPDATE records SET prompt = 'something else' WHERE seq = 3")
    [(record, check)] = ledger.check_id(target.id)
    assert record.prompt == "something else"
    assert check.signature == INVALID and check.chain == "broken"
    assert any("content altered" in p for p in check.problems)
    report = ledger.verify()
    assert not report.ok and report.signature.startswith(INVALID) and "seq 3" in report.chain
    assert report.per_record[2].ok and report.per_record[4].ok


@pytest.mark.parametrize("column, value", [("seed", "42"), ("models", '{"other.safetensors":"00"}'),
                                           ("account", "mallory"), ("created_at", "2020-01-01T00:00:00+00:00"),
                                           ("image_sha256", "f" * 64), ("metadata", "not json"),
                                           ("metadata", '{"x": NaN}'), ("id", "abc"), ("id", 12345),
                                           ("signature", "zz"), ("prev_hash", "0" * 64)])
def test_every_field_is_covered(ledger, column, value):
    with _raw(ledger) as con:
        con.execute(f"UPDATE records SET {column} = ? WHERE seq = 2", (value,))
    report = ledger.verify()
    assert report.per_record[2].signature == INVALID, column
    assert not report.ok


def test_replaced_signer_is_untrusted(ledger, tmp_path):
    with _raw(ledger) as con:
        con.execute("UPDATE records SET signer = ? WHERE seq = 4", (load_keys(tmp_path / "x").ledger_public_key_hex,))
    assert ledger.verify().per_record[4].signature == UNTRUSTED


def test_rehashed_edit_without_the_key_is_detected(ledger):
    """An attacker who recomputes the record hash still cannot sign it, and the next link breaks."""
    target = list(ledger.records())[1]
    forged = dataclasses.replace(target, prompt="forged")
    with _raw(ledger) as con:
        con.execute("UPDATE records SET prompt = ?, record_hash = ? WHERE seq = 2",
                    ("forged", forged.computed_hash()))
    report = ledger.verify()
    assert report.per_record[2].signature == INVALID
    assert report.per_record[3].chain == "broken"
    assert any("does not link" in p for p in report.per_record[3].problems)


def test_deleted_row_is_detected(ledger):
    ids = [r.id for r in ledger.records()]
    with _raw(ledger) as con:
        con.execute("DELETE FROM records WHERE seq = 3")
    report = ledger.verify()
    assert not report.ok and report.signature == VALID, "the remaining signatures are fine; the chain is not"
    assert report.records == 4
    problems = report.per_record[4].problems
    assert any("records 3..3 are missing" in p for p in problems)
    [(_, check)] = ledger.check_id(ids[3])
    assert check.chain == "broken"
    [(_, before)] = ledger.check_id(ids[1])
    assert any("does not link to this one" in p for p in before.problems)


def test_swapped_rows_are_detected(ledger):
    with _raw(ledger) as con:
        con.execute("BEGIN")
        con.execute("UPDATE records SET seq = -2 WHERE seq = 2")
        con.execute("UPDATE records SET seq = 2 WHERE seq = 3")
        con.execute("UPDATE records SET seq = 3 WHERE seq = -2")
        con.execute("COMMIT")
    report = ledger.verify()
    assert not report.ok
    assert report.per_record[2].signature == INVALID and report.per_record[3].signature == INVALID
    assert report.per_record[2].chain == report.per_record[3].chain == "broken"


def test_removed_tail_is_caught_by_the_signed_head(ledger):
    last = list(ledger.records())[-1]
    with _raw(ledger) as con:
        con.execute("DELETE FROM records WHERE seq = 5")
    report = ledger.verify()
    assert not report.ok and "head" in report.chain and "seq 5" in report.chain
    # appending afterwards chains onto the signed head, so the gap stays visible
    ledger.append(_content(7), "2" * 64)
    report = ledger.verify()
    assert not report.ok and any("records 5..5 are missing" in p for p in report.problems)
    assert ledger.get(last.id) is None


def test_foreign_signer_is_untrusted(ledger, tmp_path):
    stranger = Ledger(ledger.path, load_keys(tmp_path / "stranger"))
    report = stranger.verify()
    assert report.per_record[1].signature == UNTRUSTED and not report.ok


def test_ids_format_and_parse():
    assert format_id(0x2A) == "000000000000002a" and parse_id("000000000000002a") == 0x2A
    assert parse_id("0x2A") == 42 and parse_id(42) == 42
    for bad in ("", "xyz", "1" * 17, "0", 2**63):
        with pytest.raises(InvalidInputError):
            parse_id(bad)


def test_pixel_hash_matches_between_float_and_uint8():
    import numpy as np

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert pixel_sha256(pixels) == pixel_sha256(pixels.astype(np.float32) / 255.0)
    assert pixel_sha256(pixels) == pixel_sha256(pixels.astype(np.uint16) * 257)
    assert pixel_sha256(pixels) != pixel_sha256(pixels[:, :8])
    changed = pixels.copy()
    changed[0, 0, 0] ^= 1
    assert pixel_sha256(changed) != pixel_sha256(pixels)


def _append_many(home: str, worker: int, count: int) -> list[int]:
    keys = load_keys(home)
    book = Ledger(f"{home}/ledger.sqlite3", keys)
    return [book.append(_content(worker * 1000 + i), f"{worker:032x}{i:032x}").id for i in range(count)]


def test_concurrent_writers_processes_and_threads(tmp_path):
    home = str(tmp_path)
    load_keys(home)  # created before the race so every worker signs with the same key
    # spawn, not fork: by now the test process runs torch's thread pools, which fork cannot copy safely.
    with ProcessPoolExecutor(max_workers=3, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_append_many, home, w, 12) for w in range(3)]
        thread_ids: list[int] = []
        threads = [threading.Thread(target=lambda w=w: thread_ids.extend(_append_many(home, w, 12)))
                   for w in (3, 4)]
        for t in threads:
            t.start()
        process_ids = [i for f in futures for i in f.result()]
        for t in threads:
            t.join()
    book = Ledger(tmp_path / "ledger.sqlite3", load_keys(home))
    report = book.verify()
    assert report.ok, report.problems
    assert report.records == 60 == len(set(process_ids + thread_ids))
    assert [r.seq for r in book.records()] == list(range(1, 61))
