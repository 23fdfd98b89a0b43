"""Issue 17: the PostgreSQL ledger (a real server from tests/fixtures/postgres.py, never a mock), idempotency keys on
both backends, concurrent writers in several processes, keys held in memory, ``backdrop verify --ledger LOCATION``."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.keys import KeyStore, load_keys
from comfyui_backdrop.runtime.provenance.ledger import (
    BROKEN,
    FILE_NO_TABLES,
    INVALID,
    DuplicateRecordError,
    Ledger,
    PendingRecord,
)
from comfyui_backdrop.runtime.provenance.ledger_backends import is_database_url, open_ledger
from comfyui_backdrop.runtime.provenance.ledger_chain import COLUMNS, to_row
from comfyui_backdrop.runtime.provenance.ledger_postgres import PostgresLedger
from comfyui_backdrop.runtime.provenance.records import RecordContent

WORKERS, EACH, SHARED_KEYS = 4, 8, 6


def _content(i: int, key: str | None = None) -> RecordContent:
    metadata = {"i": i, "note": "ünïcode"} | ({} if key is None else {"idempotency_key": key})
    return RecordContent(account="acme", prompt=f"bottle {i}", seed=2**64 - 1 - i, models={"m.safetensors": "ab" * 32},
                         metadata=metadata)


def _psql(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return load_keys(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def memory_keys(keys):
    """The same keys in memory: SQLite ledgers opened with them keep no witness in the shared key folder."""
    return KeyStore.from_secrets(keys.secrets())


@pytest.fixture(scope="module")
def pool():
    """Spawned writer processes (not fork: torch's thread pools may already run here), shared by the race tests."""
    with ProcessPoolExecutor(max_workers=WORKERS, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def _race(location: str, secrets: dict[str, bytes], worker: int) -> tuple[int, int]:
    """In a separate process: EACH records of its own, then the SHARED_KEYS every worker tries; (won, duplicates)."""
    book = open_ledger(location, KeyStore.from_secrets(secrets))
    for i in range(EACH):
        book.append(_content(worker * 100 + i, key=f"own-{worker}-{i}"), f"{worker:032x}{i:032x}")
    won = duplicates = 0
    for i in range(SHARED_KEYS):
        try:
            book.append(_content(1000 + i, key=f"shared-{i}"), f"{i:064x}")
            won += 1
        except DuplicateRecordError as exc:
            assert exc.existing.idempotency_key == f"shared-{i}"
            duplicates += 1
    return won, duplicates


# ---- both backends ----------------------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    return request.getfixturevalue("postgres_url")


def test_concurrent_writers_keep_the_chain_and_one_record_per_key(location, keys, pool):
    results = [f.result() for f in [pool.submit(_race, location, keys.secrets(), w) for w in range(WORKERS)]]
    assert sum(won for won, _ in results) == SHARED_KEYS, "each shared key: exactly one writer wins"
    assert sum(dup for _, dup in results) == SHARED_KEYS * (WORKERS - 1)
    book = open_ledger(location, keys)
    report = book.verify()
    assert report.ok, report.problems
    total = WORKERS * EACH + SHARED_KEYS
    assert report.records == total and [r.seq for r in book.records()] == list(range(1, total + 1))
    keys_seen = [r.idempotency_key for r in book.records()]
    assert len(set(keys_seen)) == total and all(book.find_idempotent(k).idempotency_key == k for k in keys_seen)


def test_a_known_key_rolls_the_whole_batch_back_before_delivery(location, memory_keys):
    book = open_ledger(location, memory_keys)
    first = book.append(_content(1, key="photo-1/v0"), "1" * 64)
    delivered = []
    batch = [PendingRecord(_content(2, key="photo-2/v0"), "2" * 64, 2), PendingRecord(_content(3, key="photo-1/v0"),
                                                                                      "3" * 64, 3)]
    with pytest.raises(DuplicateRecordError, match="photo-1/v0") as caught, book.appending(batch):
        delivered.append("saved")
    assert delivered == [], "the duplicate is refused before the delivery block runs"
    assert caught.value.existing == first and pickle.loads(pickle.dumps(caught.value)).existing == first
    assert len(book) == 1 and book.find_idempotent("photo-2/v0") is None and book.verify().ok
    assert book.find_idempotent("photo-1/v0") == first and first.metadata["idempotency_key"] == "photo-1/v0"
    with pytest.raises(InvalidInputError, match="non-empty string"):
        book.append(_content(4, key=""), "4" * 64)


# ---- PostgreSQL -------------------------------------------------------------------------------------------------

def test_records_copied_from_sqlite_verify_in_postgresql(postgres_url, memory_keys, tmp_path):
    keys = memory_keys
    sqlite_book = Ledger(tmp_path / "ledger.sqlite3", keys)
    originals = [sqlite_book.append(_content(i, key=f"k{i}"), f"{i:064x}") for i in range(3)]
    book = open_ledger(postgres_url, keys)
    assert isinstance(book, PostgresLedger) and book.backend == "postgresql"
    with book._transaction():  # creates the schema, as a first append does
        pass
    with _psql(postgres_url) as con, sqlite3.connect(sqlite_book.path) as source:
        for row in source.execute(f"SELECT {', '.join(COLUMNS)}, idempotency_key FROM records ORDER BY seq"):
            con.execute(f"INSERT INTO records ({', '.join(COLUMNS)}, idempotency_key) VALUES "
                        f"({', '.join(['%s'] * (len(COLUMNS) + 1))})", row)
        con.execute("INSERT INTO head (one, seq, record_hash, signer, signature) VALUES (%s, %s, %s, %s, %s)",
                    source.execute("SELECT one, seq, record_hash, signer, signature FROM head").fetchone())
    assert list(book.records()) == originals and book.verify().ok
    assert [to_row(r) for r in book.records()] == [to_row(r) for r in sqlite_book.records()]
    fourth = book.append(_content(3), "3" * 64)
    assert fourth.seq == 4 and fourth.prev_hash == originals[-1].record_hash and book.verify().ok
    [(record, check)] = book.check_id(originals[1].id)
    assert record == originals[1] and check.ok


def test_tampering_and_deletion_are_caught(postgres_url, keys):
    book = open_ledger(postgres_url, keys)
    records = [book.append(_content(i), f"{i:064x}") for i in range(6)]
    with _psql(postgres_url) as con:
        con.execute("UPDATE records SET prompt = 'a forged prompt' WHERE seq = 2")
    report = book.verify()
    assert not report.ok and report.per_record[2].signature == INVALID and report.per_record[2].chain == BROKEN
    [(_, check)] = book.check_id(records[1].id)
    assert not check.ok and "content altered" in check.problems[0]
    with _psql(postgres_url) as con:
        con.execute("DELETE FROM records WHERE seq = 4")
    assert any("records 4..4 are missing" in p for p in book.verify().problems)
    with _psql(postgres_url) as con:
        con.execute("DELETE FROM records WHERE seq = 6")
    report = book.verify()
    assert "signed head names seq 6" in report.chain or any("seq 6" in p for p in report.problems)
    assert any("head" in p for p in book.integrity_problems())


def test_readers_never_create_the_schema(postgres_url, keys):
    book = open_ledger(postgres_url, keys)
    report = book.verify()
    assert report.ok and report.records == 0 and report.file_state == FILE_NO_TABLES and report.witnessed_seq is None
    assert len(book) == 0 and book.get(1) is None and book.find_idempotent("x") is None and not book.contains(1)
    assert book.integrity_problems() == [] and book.check_id(1) == []
    with _psql(postgres_url) as con:
        assert con.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_errors_name_host_and_database_but_never_the_password(keys):
    from tests.fixtures.postgres import free_port

    port = free_port()  # nothing listens there
    book = open_ledger(f"postgresql://bob:hunter2@127.0.0.1:{port}/studio?connect_timeout=3", keys)
    assert "hunter2" not in book.location + repr(book) and book.location == f"postgresql://bob@127.0.0.1:{port}/studio"
    with pytest.raises(InvalidInputError) as caught:
        len(book)
    assert "hunter2" not in str(caught.value) and f"127.0.0.1:{port}/studio" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(InvalidInputError, match="not a usable PostgreSQL URL") as caught:
        open_ledger("postgres://bob@db.example/studio?password=s3cret&nonsense=s3cret", keys)
    assert "s3cret" not in str(caught.value) and "db.example" in str(caught.value)
    assert is_database_url("postgres://h/db") and is_database_url("postgresql://h/db")
    assert not is_database_url("ledger.sqlite3") and not is_database_url(Path("postgresql:/x"))


def test_in_memory_keys_sign_identically_and_write_nothing(postgres_url, keys, tmp_path, product_photo):
    from comfyui_backdrop.runtime.watermark.service import ProvenanceService

    before = sorted(tmp_path.rglob("*"))
    memory = KeyStore.from_secrets(keys.secrets())
    assert memory.folder is None and "ledger_ed25519" not in repr(memory)
    assert memory.sign(b"same") == keys.sign(b"same") and memory.watermark_key == keys.watermark_key
    assert memory.c2pa_chain_pem == keys.c2pa_chain_pem and memory.ledger_public_key_hex == keys.ledger_public_key_hex
    assert "c2pa_root_ca.key.pem" not in keys.secrets(), "workers never get the root CA's private key"
    service = ProvenanceService(tmp_path / "no-home", keys=memory, ledger=postgres_url)
    marked = service.mark(product_photo[0], RecordContent(account="acme", prompt="bottle"))
    assert sorted(tmp_path.rglob("*")) == before, "keys in memory and a database ledger: nothing on disk"
    checked = ProvenanceService(keys.folder.parent, ledger=postgres_url).verify_image(marked.image)
    assert checked.watermark_id == marked.watermark_id and checked.signature == "valid" and checked.chain == "intact"
    sqlite_book = Ledger(tmp_path / "l.sqlite3", memory)  # SQLite with in-memory keys: no witness, still checked
    sqlite_book.append(_content(1), "1" * 64)
    assert sqlite_book.witness_path is None and sqlite_book.witness() is None and sqlite_book.verify().ok
    with pytest.raises(InvalidInputError, match="lack"):
        KeyStore.from_secrets({"watermark.key": b"0" * 32})


def test_verify_cli_checks_a_postgresql_ledger(postgres_url, keys, tmp_path, capsys, product_photo):
    from comfyui_backdrop.cli.main import main
    from comfyui_backdrop.runtime.saving import SaveOptions, save_image
    from comfyui_backdrop.runtime.watermark.service import ProvenanceService

    url = postgres_url.replace("backdrop@", "backdrop:hunter2@")  # the test cluster trusts; the password is unused
    service = ProvenanceService(keys.folder.parent, ledger=url)
    marked = service.mark(product_photo[0], RecordContent(account="acme", prompt="bottle on slate", seed=5))
    png = save_image(marked.image, tmp_path / "out.png", SaveOptions(), keys=keys, binding=service.provenance_for).path
    home = str(keys.folder.parent)
    assert main(["verify", str(png), "--home", home, "--ledger", url, "--json"]) == 0
    out = capsys.readouterr().out
    document = json.loads(out)
    assert document["ledger"]["ok"] and document["ledger"]["records"] == 1
    assert document["ledger"]["backend"] == "postgresql" and document["ledger_source"]["backend"] == "postgresql"
    [entry] = document["files"]
    assert entry["watermark_id"] == marked.watermark_id and entry["signature"] == "valid"
    assert main(["verify", "--ledger", url, str(png), "--home", home]) == 0
    text = capsys.readouterr().out
    assert "(postgresql): 1 record(s)" in text and "hunter2" not in out + text
    with _psql(postgres_url) as con:
        con.execute("UPDATE records SET account = 'mallory'")
    assert main(["verify", str(png), "--home", home, "--ledger", url]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_verify_ledger_option_gives_an_image_back(tmp_path, capsys, keys):
    """``--ledger photo.png``: argparse takes the image as the option's value; verify puts it back."""
    from comfyui_backdrop.cli.main import main

    home, other = str(keys.folder.parent), tmp_path / "other.sqlite3"
    image = tmp_path / "photo.png"
    image.write_bytes(b"not an image")
    assert main(["verify", "--ledger", str(image), "--home", home, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [f["source"] for f in document["files"]] == [str(image)] and document["ledger"] is not None
    assert document["ledger_source"] == {"backend": "sqlite", "location": str(Path(home) / "ledger.sqlite3")}
    assert main(["verify", "--ledger", str(other), str(image), "--home", home, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ledger_source"]["location"] == str(other) and document["ledger"]["file_state"] == "missing"
    assert not other.exists(), "verify never creates a ledger"
    assert main(["verify", "--ledger", str(other), "--home", home]) == 2  # a ledger but no images: usage error


def test_run_ledger_option_is_checked_before_any_photo(tmp_path, capsys, product_photo):
    import argparse

    import cv2

    from comfyui_backdrop.cli.main import build_parser, main
    from comfyui_backdrop.cli.run_plan import RunPlan

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), product_photo[0])
    url = "postgresql://bob:hunter2@db.example/studio"
    args = build_parser().parse_args(["run", str(photo), "--watermark", "--ledger", url, "--out", str(tmp_path / "o")])
    assert isinstance(args, argparse.Namespace) and RunPlan.from_args(args).watermark.ledger == url
    assert main(["run", str(photo), "--ledger", url, "--out", str(tmp_path / "o")]) == 2
    assert "--ledger needs --watermark" in capsys.readouterr().err
    assert main(["run", str(photo), "--watermark", "--ledger", url + "?nonsense=hunter2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a usable PostgreSQL URL" in err and "db.example" in err and "hunter2" not in err
    assert not (tmp_path / "o").exists(), "nothing ran"
