"""Issue 17 on SQLite: a ledger file made before idempotency keys is read as it is and gains the column on the
first append; ``marked_for_delivery(idempotency_key=...)`` records one image per key; ``get_service`` per ledger."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from comfyui_backdrop.runtime.provenance.keys import load_keys
from comfyui_backdrop.runtime.provenance.ledger import DuplicateRecordError, Ledger
from comfyui_backdrop.runtime.provenance.records import RecordContent


def _old_format(book: Ledger) -> None:
    """Turn the file into what the ledger wrote before idempotency keys (no column, no index)."""
    with sqlite3.connect(book.path, isolation_level=None) as con:
        con.execute("DROP INDEX records_by_idempotency_key")
        con.execute("ALTER TABLE records DROP COLUMN idempotency_key")


def test_an_older_ledger_is_read_as_it_is_and_migrated_by_the_first_append(tmp_path):
    book = Ledger(tmp_path / "ledger.sqlite3", load_keys(tmp_path))
    first = book.append(RecordContent(prompt="old"), "0" * 64)
    _old_format(book)
    before = hashlib.sha256(book.path.read_bytes()).digest()
    fresh = Ledger(book.path, book.keys)
    assert fresh.find_idempotent("k") is None and fresh.verify().ok and fresh.get(first.id) == first
    assert hashlib.sha256(book.path.read_bytes()).digest() == before, "reading never migrates the file"
    added = fresh.append(RecordContent(prompt="new", metadata={"idempotency_key": "k"}), "1" * 64)
    assert fresh.find_idempotent("k") == added and fresh.verify().ok
    with pytest.raises(DuplicateRecordError):
        Ledger(book.path, book.keys).append(RecordContent(prompt="again", metadata={"idempotency_key": "k"}), "2" * 64)
    assert len(fresh) == 2


def test_marked_for_delivery_records_one_image_per_key(tmp_path, product_photo):
    from comfyui_backdrop.runtime.provenance.keys import KeyStore
    from comfyui_backdrop.runtime.watermark.service import ProvenanceService, get_service, marked_for_delivery

    home, other = tmp_path / "home", tmp_path / "elsewhere" / "catalog.sqlite3"
    content = RecordContent(account="acme", prompt="bottle", metadata={"style": "Glam"})
    with marked_for_delivery(product_photo[0], content, home=home, ledger=other,
                             idempotency_key="photo.png/glam/0") as (_, record, service):
        pass
    assert service is get_service(home, other) and service is not get_service(home)
    assert record.metadata == {"style": "Glam", "idempotency_key": "photo.png/glam/0", "watermark_version": 3}
    assert service.ledger.find_idempotent("photo.png/glam/0") == record and len(get_service(home).ledger) == 0
    delivered = []
    worker = ProvenanceService(home, keys=KeyStore.from_secrets(service.keys.secrets()), ledger=other)  # a Ray actor
    again = marked_for_delivery(product_photo[0], content, idempotency_key="photo.png/glam/0", service=worker)
    with pytest.raises(DuplicateRecordError) as caught, again:
        delivered.append("saved")
    assert delivered == [] and caught.value.existing == record and len(service.ledger) == 1


def test_write_marked_records_into_the_run_ledger(tmp_path, monkeypatch, product_photo):
    """``backdrop run --watermark --ledger X``: the plan's ledger is where write_marked records."""
    from types import SimpleNamespace

    from comfyui_backdrop.cli.run_plan import WatermarkPlan
    from comfyui_backdrop.cli.watermark_options import write_marked
    from comfyui_backdrop.runtime.provenance.ledger_backends import open_ledger

    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    ledger = tmp_path / "run.sqlite3"
    plan = SimpleNamespace(format="png", seed=3, style=SimpleNamespace(name="Glam"),
                           watermark=WatermarkPlan(account="acme", c2pa=False, ledger=str(ledger)))
    photo, product = product_photo
    path = write_marked(tmp_path / "out.png", photo / 255.0, product, plan, "bottle", "", ({}, {}),
                        idempotency_key="out.png/glam/0")
    book = open_ledger(ledger, load_keys(tmp_path / "home"))
    assert path.exists() and book.find_idempotent("out.png/glam/0").account == "acme" and len(book) == 1
    assert not (tmp_path / "home" / "ledger.sqlite3").exists()
