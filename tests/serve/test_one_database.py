"""One SQLite database by default: accounts, key hashes, jobs, quota use and the provenance ledger all in the data
folder's ledger.sqlite3; data folders from before (server.sqlite3 + ledger.sqlite3) are merged and keep working."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from comfyui_backdrop.cli.serve.api_keys import hash_api_key, key_hint, new_api_key
from comfyui_backdrop.cli.serve.database import open_store
from comfyui_backdrop.cli.serve.params import Catalog, JobParams
from comfyui_backdrop.cli.serve.store import NewJob
from comfyui_backdrop.cli.serve.store_sqlite import SqliteStore
from comfyui_backdrop.cli.serve.tiers import Tier
from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.keys import load_keys
from comfyui_backdrop.runtime.provenance.ledger import Ledger
from comfyui_backdrop.runtime.provenance.records import RecordContent
from tests.serve.server_process import ServerProcess, png_bytes, wait_for, write_tiers

NOW = 1_800_000_000.0
TIER = Tier(name="test", requests_per_minute=1000, images_per_day=1000, max_resolution=4096, max_variations=8,
            concurrent_jobs=1000)


def tables(path) -> set[str]:
    with sqlite3.connect(path) as con:
        return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_the_server_keeps_everything_in_one_database(server):
    key = server.accounts["alice"]["api_key"]
    with server.client(key) as client:
        answer = client.post("/v1/jobs", files={"photo": ("p.png", png_bytes(), "image/png")}, data={"seed": "5"})
        assert answer.status_code == 202, answer.text
        job = wait_for(client, answer.json()["id"])
    assert job["status"] == "succeeded"
    data = server.data
    assert {"accounts", "jobs", "job_images", "usage", "records", "head"} <= tables(data / "ledger.sqlite3")
    assert not list(data.glob("server.sqlite3*")), "a second database was written"
    ledger = Ledger(data / "ledger.sqlite3", load_keys(data, create=False))
    with sqlite3.connect(data / "ledger.sqlite3") as con:
        delivered = con.execute("SELECT COUNT(*) FROM job_images").fetchone()[0]
    report = ledger.verify()
    assert report.ok and report.records == delivered >= 1, "not one ledger record per delivered image"


def make_legacy_folder(data):
    """A data folder as earlier versions left it: jobs and accounts in server.sqlite3, the ledger apart."""
    write_tiers(data)
    old = SqliteStore(data / "server.sqlite3")
    old.init_schema()
    key = new_api_key()
    account = old.create_account("olga", "test", hash_api_key(key), key_hint(key), NOW)
    params = JobParams.from_form({"seed": ["1"], "variations": ["2"]}, Catalog.load(None), 8).to_json()
    job = old.submit(NewJob(id="job_" + "a" * 24, account_id=account.id, idempotency_key="k1", fingerprint="f",
                            params=params, input_name="photo.png", images=2), TIER, NOW).job
    old.close()
    ledger = Ledger(data / "ledger.sqlite3", load_keys(data))
    record = ledger.append(RecordContent(account=account.id, prompt="p", seed=1), "1" * 64)
    return key, account, job, record


def test_a_legacy_data_folder_is_merged_into_the_ledger_database(tmp_path):
    data = tmp_path / "data"
    key, account, job, record = make_legacy_folder(data)
    witness = (data / "keys" / "ledger_witness.json").read_bytes()

    store = open_store(None, data)
    try:
        assert store.authenticate(hash_api_key(key)).id == account.id
        moved = store.job(job.id)
        assert moved == job and store.usage(account.id, job.usage_day) == 2
        again = store.submit(NewJob(id="job_" + "b" * 24, account_id=account.id, idempotency_key="k1",
                                    fingerprint="f", params=job.params, input_name="photo.png", images=2), TIER, NOW)
        assert again.replayed and again.job.id == job.id, "the Idempotency-Key was lost in the merge"
    finally:
        store.close()
    assert not (data / "server.sqlite3").exists() and (data / "server.sqlite3.merged").exists()
    ledger = Ledger(data / "ledger.sqlite3", load_keys(data, create=False))
    assert [r.record_hash for r in ledger.records()] == [record.record_hash] and ledger.verify().ok
    assert (data / "keys" / "ledger_witness.json").read_bytes() == witness, "the merge touched the ledger's witness"

    # stopped between the merge's commit and the rename: the next start only renames the file it merged
    shutil.copy2(data / "server.sqlite3.merged", data / "server.sqlite3")
    open_store(None, data).close()
    assert not (data / "server.sqlite3").exists()
    with sqlite3.connect(data / "ledger.sqlite3") as con:
        assert con.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 1

    # a changed server.sqlite3 after the merge (a restored backup) is refused, not merged twice or ignored
    shutil.copy2(data / "server.sqlite3.merged", data / "server.sqlite3")
    with sqlite3.connect(data / "server.sqlite3") as con:
        con.execute("UPDATE accounts SET tier = 'pro'")
    with pytest.raises(InvalidInputError, match="reappeared after its jobs and accounts were merged"):
        open_store(None, data)


def test_a_merge_into_a_database_with_its_own_accounts_is_refused(tmp_path):
    data = tmp_path / "data"
    make_legacy_folder(data)
    shutil.copy2(data / "server.sqlite3", tmp_path / "copy.sqlite3")
    open_store(None, data).close()
    shutil.copy2(tmp_path / "copy.sqlite3", data / "server.sqlite3")
    with sqlite3.connect(data / "ledger.sqlite3") as con:  # a merge never recorded, accounts present
        con.execute("DELETE FROM meta WHERE key = 'merged_legacy_database'")
    with pytest.raises(InvalidInputError, match="both .*server.sqlite3 and .*ledger.sqlite3 hold accounts"):
        open_store(None, data)
    assert (data / "server.sqlite3").exists(), "the refused file was moved"


def test_a_legacy_data_folder_keeps_working_under_the_server(tmp_path):
    data = tmp_path / "data"
    key, _account, job, record = make_legacy_folder(data)
    (data / "jobs" / job.id).mkdir(parents=True)
    (data / "jobs" / job.id / "photo.png").write_bytes(png_bytes())
    server = ServerProcess(data, workers=1).start()
    try:
        with server.client(key) as client:
            old_job = wait_for(client, job.id)  # queued before the upgrade: it runs now
            assert old_job["status"] == "succeeded" and len(old_job["images"]) == 2, old_job
            image = client.get(old_job["images"][0]["url"]).content
            verified = client.post("/v1/verify", files={"image": ("a.png", image, "image/png")}).json()
            assert verified["owner"] == "you" and verified["signature"] == "valid" and verified["chain"] == "intact"
        assert "merged server.sqlite3 into ledger.sqlite3 (1 accounts, 1 jobs, 0 job_images, 1 usage)" in server.log()
    finally:
        server.stop()
    ledger = Ledger(data / "ledger.sqlite3", load_keys(data, create=False))
    report = ledger.verify()
    assert report.ok and report.records == 3 and next(ledger.records()).record_hash == record.record_hash
    assert not (data / "server.sqlite3").exists()


def test_sqlite_url_keeps_the_ledger_in_that_file_and_refuses_a_split(tmp_path):
    from comfyui_backdrop.cli.serve.config import DataFolder, ServeConfig

    data = tmp_path / "data"
    url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    assert ServeConfig(data=DataFolder.at(data), database=url).ledger_location == str(tmp_path / "one.sqlite3")
    open_store(url, data).close()  # a fresh data folder: fine
    make_legacy_folder(data)  # now the data folder's ledger holds a record
    with pytest.raises(InvalidInputError, match="already holds ledger records"):
        open_store(url, data)
