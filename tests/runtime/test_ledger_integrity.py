"""Issue 14: a wiped, emptied, deleted or cut-short ledger reads as such (never "0 record(s), chain intact"),
reading never changes the ledger, records are written only when the block delivering the image succeeds,
the ledger file's mode is checked, and absurdly nested metadata is refused with a message."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.keys import load_keys
from comfyui_backdrop.runtime.provenance.ledger import (
    _SCHEMA,
    FILE_EMPTY,
    FILE_MISSING,
    FILE_NO_TABLES,
    FILE_OK,
    INTACT,
    Ledger,
    PendingRecord,
)
from comfyui_backdrop.runtime.provenance.records import MAX_METADATA_DEPTH, RecordContent


def _content(i: int) -> RecordContent:
    return RecordContent(account="acme", prompt=f"bottle {i}", seed=i, metadata={"i": i})


@pytest.fixture()
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture()
def filled(home):
    """A ledger holding three records, as a home that has been used."""
    book = Ledger(home / "ledger.sqlite3", load_keys(home))
    for i in range(3):
        book.append(_content(i), f"{i:064x}")
    return book


def _fingerprint(path) -> tuple[bytes, int] | None:
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).digest(), path.stat().st_mtime_ns


def _fresh(book: Ledger) -> Ledger:
    """The same ledger and keys as another process would open them."""
    return Ledger(book.path, load_keys(book.path.parent))


# ---- wiped ledgers ----------------------------------------------------------------------------------------------

def test_a_zero_byte_ledger_that_held_records_is_reported_as_wiped(filled):
    filled.path.write_bytes(b"")  # what `: > ledger.sqlite3` does
    for name in ("-wal", "-shm"):
        filled.path.with_name(filled.path.name + name).unlink(missing_ok=True)
    report = _fresh(filled).verify()
    assert not report.ok and report.records == 0 and report.file_state == FILE_EMPTY
    assert report.chain.startswith("broken") and "wiped or replaced" in report.chain
    assert "signed 3 record(s)" in report.chain and report.witnessed_seq == 3
    assert filled.path.stat().st_size == 0, "verifying must not write a schema into the evidence"


def test_a_deleted_ledger_is_reported_and_not_recreated_by_reading(filled):
    for name in ("", "-wal", "-shm"):
        filled.path.with_name(filled.path.name + name).unlink(missing_ok=True)
    book = _fresh(filled)
    report = book.verify()
    assert not report.ok and report.file_state == FILE_MISSING and "is missing" in report.chain
    assert book.get(1) is None and len(book) == 0 and book.check_id(1) == []
    assert not filled.path.exists(), "reading must not create the ledger"
    assert "deleted or moved" in book.integrity_problems()[0]


@pytest.mark.parametrize("how", ["fresh database", "rows and head deleted", "tables dropped"])
def test_a_replaced_or_emptied_ledger_is_reported(filled, how):
    if how == "fresh database":
        for name in ("", "-wal", "-shm"):
            filled.path.with_name(filled.path.name + name).unlink(missing_ok=True)
        fresh = sqlite3.connect(filled.path)
        fresh.executescript(_SCHEMA)  # a brand-new, empty ledger put in its place
        fresh.close()
        expected = "holds no records"
    else:
        with sqlite3.connect(filled.path, isolation_level=None) as con:
            if how == "tables dropped":
                con.execute("DROP TABLE records")
                con.execute("DROP TABLE head")
                expected = "holds no ledger tables"
            else:
                con.execute("DELETE FROM records")
                con.execute("DELETE FROM head")
                expected = "holds no records"
    report = _fresh(filled).verify()
    assert not report.ok and report.records == 0 and expected in report.chain, report.chain
    if how == "tables dropped":
        assert report.file_state == FILE_NO_TABLES


def test_a_cut_tail_with_its_head_rewritten_is_caught_by_the_witness(filled):
    """Deleting the last record and the signed head leaves a self-consistent chain; the witness still knows."""
    with sqlite3.connect(filled.path, isolation_level=None) as con:
        con.execute("DELETE FROM records WHERE seq = 3")
        con.execute("DELETE FROM head")
    report = _fresh(filled).verify()
    assert not report.ok and report.records == 2
    assert any("ends at seq 2" in p and "up to seq 3" in p for p in report.problems)


def test_appending_to_a_wiped_ledger_is_refused_so_the_wipe_stays_visible(filled):
    witness = filled.witness_path.read_bytes()
    filled.path.write_bytes(b"")
    book = _fresh(filled)
    with pytest.raises(InvalidInputError, match="wiped or replaced.*nothing was recorded"):
        book.append(_content(9), "9" * 64)
    assert filled.witness_path.read_bytes() == witness
    assert "wiped" in book.verify().chain
    # the documented way on: move both away (the old records can then no longer be verified here)
    filled.witness_path.rename(filled.witness_path.with_suffix(".old"))
    filled.path.unlink()
    assert _fresh(filled).append(_content(9), "9" * 64).seq == 1


def test_a_damaged_witness_is_reported_and_blocks_appends(filled):
    data = json.loads(filled.witness_path.read_text())
    data["seq"] = 99  # without the key its signature cannot be redone
    filled.witness_path.write_text(json.dumps(data))
    book = _fresh(filled)
    assert any("witness" in p and "damaged" in p for p in book.verify().problems)
    with pytest.raises(InvalidInputError, match="damaged"):
        book.append(_content(9), "9" * 64)


def test_a_brand_new_home_and_a_home_from_before_the_witness_do_not_alarm(home, filled, tmp_path):
    new = Ledger(tmp_path / "new" / "ledger.sqlite3", load_keys(tmp_path / "new"))
    report = new.verify()
    assert report.ok and report.records == 0 and report.file_state == FILE_MISSING and report.problems == []
    assert not new.path.exists()
    filled.witness_path.unlink()  # a home whose records were written before witnesses existed
    report = _fresh(filled).verify()
    assert report.ok and report.records == 3 and report.witnessed_seq is None
    assert _fresh(filled).append(_content(5), "5" * 64).seq == 4 and filled.witness_path.is_file()


def test_the_witness_lives_with_the_keys_and_is_private(filled):
    assert filled.witness_path.parent == filled.keys.folder
    assert json.loads(filled.witness_path.read_text())["seq"] == 3
    if os.name == "posix":
        assert oct(filled.witness_path.stat().st_mode & 0o777) == oct(0o600)
    load_keys(filled.path.parent)  # the key folder check still passes with the witness in it


# ---- reading never changes the ledger -----------------------------------------------------------------------------

def test_verify_and_lookups_leave_the_ledger_file_unchanged(filled):
    before = _fingerprint(filled.path)
    book = _fresh(filled)
    records = list(book.records())
    assert book.verify().ok and book.get(records[0].id) == records[0] and book.contains(records[1].id)
    assert [r for r, _ in book.check_id(records[2].id)] == [records[2]] and len(book) == 3
    assert _fingerprint(filled.path) == before


def test_verify_of_a_zero_byte_file_without_witness_reports_it_and_keeps_it_zero_bytes(tmp_path):
    book = Ledger(tmp_path / "ledger.sqlite3", load_keys(tmp_path))
    book.path.write_bytes(b"")
    report = book.verify()
    assert report.file_state == FILE_EMPTY and report.records == 0
    assert any("0 bytes" in w for w in report.warnings)
    assert book.path.stat().st_size == 0 and not book.path.with_name("ledger.sqlite3-wal").exists()


def test_a_file_that_is_not_a_ledger_is_a_clear_error_and_left_alone(tmp_path):
    book = Ledger(tmp_path / "ledger.sqlite3", load_keys(tmp_path))
    book.path.write_bytes(b"this is not sqlite" * 100)
    before = _fingerprint(book.path)
    with pytest.raises(InvalidInputError, match="not a usable provenance ledger"):
        book.verify()
    assert _fingerprint(book.path) == before
    book.path.unlink()
    other = sqlite3.connect(book.path)
    other.execute("CREATE TABLE records (seq INTEGER)")  # some other program's database
    other.close()
    with pytest.raises(InvalidInputError, match="not a usable provenance ledger"):
        book.verify()


def test_a_ledger_readable_by_others_is_warned_about(filled):
    if os.name != "posix":
        pytest.skip("file modes are POSIX")
    assert filled.verify().warnings == []
    filled.path.chmod(0o644)
    warnings = filled.verify().warnings
    assert len(warnings) == 1 and "readable by other users (mode 0644)" in warnings[0] and "chmod 600" in warnings[0]
    assert filled.file_warnings() == warnings


# ---- records follow delivery --------------------------------------------------------------------------------------

def test_appending_commits_only_when_the_delivering_block_succeeds(filled):
    witness = filled.witness_path.read_bytes()
    items = [PendingRecord(_content(7), "7" * 64, 7_000 + i) for i in range(2)]
    with pytest.raises(OSError), filled.appending(items) as records:
        assert [r.seq for r in records] == [4, 5]
        raise OSError("the save failed")
    assert len(filled) == 3 and filled.witness_path.read_bytes() == witness and filled.verify().ok
    with filled.appending(items) as records:
        pass
    assert [r.seq for r in records] == [4, 5] and len(filled) == 5
    report = filled.verify()
    assert report.ok and report.chain == INTACT and report.witnessed_seq == 5


def test_a_batch_with_one_bad_record_records_nothing(filled):
    first = next(filled.records())
    items = [PendingRecord(_content(7), "7" * 64, 7_001), PendingRecord(_content(8), "8" * 64, first.id)]
    with pytest.raises(InvalidInputError, match="already in the ledger"), filled.appending(items):
        pass
    assert len(filled) == 3 and not filled.contains(7_001)


# ---- nested metadata ----------------------------------------------------------------------------------------------

def _nested(depth: int):
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_deeply_nested_metadata_is_refused_with_a_message():
    with pytest.raises(InvalidInputError, match=f"nested 2000 levels deep; records take at most {MAX_METADATA_DEPTH}"):
        RecordContent(metadata=_nested(2000))
    RecordContent(metadata=_nested(MAX_METADATA_DEPTH))  # the limit itself is fine
    with pytest.raises(InvalidInputError, match="a JSON object"):
        RecordContent(metadata=[1, 2])


def test_a_row_edited_to_absurdly_nested_json_is_reported_not_crashed_on(filled):
    with sqlite3.connect(filled.path, isolation_level=None) as con:
        con.execute("UPDATE records SET metadata = ? WHERE seq = 2", ("[" * 5000 + "]" * 5000,))
    report = _fresh(filled).verify()
    assert not report.ok and report.per_record[2].signature == "invalid"
    assert report.file_state == FILE_OK


def test_a_witness_left_behind_by_a_crash_after_commit_is_no_alarm_and_never_moves_back(filled):
    behind = filled.witness_path.read_bytes()  # seq 3
    filled.append(_content(3), "3" * 64)
    filled.witness_path.write_bytes(behind)  # as if the process died between COMMIT and moving the witness
    book = _fresh(filled)
    assert book.verify().ok and book.integrity_problems() == []
    assert book.append(_content(4), "4" * 64).seq == 5 and book.witness().seq == 5
    book._advance_witness(4, "0" * 64)  # a slower writer that committed earlier
    assert book.witness().seq == 5 and book.verify().ok
