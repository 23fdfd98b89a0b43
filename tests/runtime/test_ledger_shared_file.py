"""The SQLite ledger shares its file with other tables (``backdrop serve`` keeps jobs and accounts in it): an
append holds the database's write lock only for its insert, never while the image is delivered, and the chain
stays serialised by the ledger's append lock."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.keys import load_keys
from comfyui_backdrop.runtime.provenance.ledger import Ledger, PendingRecord
from comfyui_backdrop.runtime.provenance.records import RecordContent


def content(n: int) -> RecordContent:
    return RecordContent(account="acct", prompt=f"p{n}", negative_prompt="", seed=n, models={}, loras={},
                         metadata={})


def pending(n: int) -> PendingRecord:
    return PendingRecord(content(n), f"{n:064x}", 1000 + n)


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite3", load_keys(tmp_path))
    ledger.append(content(0), "0" * 64, watermark_id=999)  # the file, its schema and a first record
    with sqlite3.connect(ledger.path) as con:
        con.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, note TEXT)")
    return ledger


def other_writer_commits(path, timeout_s: float) -> float:
    """Seconds another connection needs to write a row of another table (BEGIN IMMEDIATE ... COMMIT)."""
    con = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    try:
        started = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO jobs (note) VALUES ('submitted while an image was being saved')")
        con.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        con.close()


def test_other_writers_do_not_wait_for_a_delivery(ledger):
    with ledger.appending([pending(1)]) as (record,):
        time.sleep(0.3)  # the image being saved
        assert other_writer_commits(ledger.path, timeout_s=0.05) < 0.05
        assert record.seq == 2 and len(ledger) == 1, "the record is visible before its delivery ended"
    assert len(ledger) == 2 and ledger.verify().ok
    with sqlite3.connect(ledger.path) as con:
        assert con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1


def test_a_failed_delivery_records_nothing(ledger):
    with pytest.raises(OSError, match="disk full"), ledger.appending([pending(1)]):
        raise OSError("disk full")
    assert len(ledger) == 1 and ledger.verify().ok
    assert ledger.append(content(2), "2" * 64, watermark_id=1002).seq == 2  # the chain goes on from the head


def test_appenders_in_threads_stay_one_chain(ledger):
    errors = []

    def deliver(n: int) -> None:
        try:
            with ledger.appending([pending(n)]):
                time.sleep(0.01)  # the next appender waits for this delivery, not for the database
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = ledger.verify()
    assert report.ok and report.records == 9
    assert sorted(r.id for r in ledger.records()) == [999, *range(1001, 1009)]


def test_a_writer_that_skips_the_append_lock_makes_the_append_fail_whole(ledger):
    intruder = Ledger(ledger.path, ledger.keys)
    refused = pytest.raises(InvalidInputError, match="without taking its append lock")
    with refused, ledger.appending([pending(1), pending(2)]), intruder._transaction() as con:
        # an older writer appends in its own transaction, ignoring the append lock
        tip = intruder._chain_tip(con)
        intruder._write_batch(con, intruder._sign_batch(con, [pending(3)], *tip))
    assert [r.id for r in ledger.records()] == [999, 1003], "a record of the refused batch was written"
    assert ledger.verify().ok
