"""A server killed with SIGKILL mid-job and restarted: queued jobs run, the interrupted one is failed as retryable
with what it had delivered, and nothing accepted is lost (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import pytest

from tests.serve.server_process import ServerProcess, backdrop_command, create_account, png_bytes, wait_for, write_tiers


def submit(client, photo, **fields):
    answer = client.post("/v1/jobs", files={"photo": ("p.png", photo, "image/png")}, data=fields)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def images_today(data, database=None) -> int:
    from comfyui_backdrop.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["accounts", "list", "--data", str(data), "--json"]
                    + (["--database", database] if database else [])) == 0
    return json.loads(out.getvalue())[0]["images_today"]


def test_sigkill_mid_job_then_restart_loses_nothing(tmp_path):
    data = tmp_path / "data"
    write_tiers(data)
    key = create_account(data, "alice", "test")["api_key"]
    first = ServerProcess(data, workers=1).start()
    try:
        with first.client(key) as client:
            interrupted = submit(client, png_bytes(320, 384, seed=4), variations="8")
            queued = [submit(client, png_bytes(), seed=str(seed)) for seed in range(3)]
            wait_for(client, interrupted, statuses=("running",), predicate=lambda job: len(job["images"]) >= 1)
    finally:
        first.kill()
    second = ServerProcess(data, workers=1).start()
    try:
        with second.client(key) as client:
            job = client.get(f"/v1/jobs/{interrupted}").json()
            assert job["status"] == "failed" and job["retryable"] and "interrupted" in job["error"]
            assert 1 <= len(job["images"]) < 8
            on_disk = sorted((data / "jobs" / interrupted / "out").rglob("*.png"))
            assert len(on_disk) == len(job["images"]), "an image file is neither delivered nor removed"
            for image in job["images"]:
                content = client.get(image["url"]).content
                verified = client.post("/v1/verify", files={"image": ("x.png", content)}).json()
                assert verified["owner"] == "you" and verified["signature"] == "valid"
            for job_id in queued:
                assert wait_for(client, job_id)["status"] == "succeeded"
        assert images_today(data) == len(job["images"]) + 3, "the interrupted job's unused images were not returned"
        assert "1 interrupted job(s) failed as retryable" in second.log()
    finally:
        second.stop()


def test_queued_jobs_survive_sigkill_on_postgres(tmp_path, postgres_url):
    data = tmp_path / "data"
    write_tiers(data)
    key = create_account(data, "alice", "test", database=postgres_url)["api_key"]
    first = ServerProcess(data, workers=0, database=postgres_url).start()
    try:
        with first.client(key) as client:
            ids = [submit(client, png_bytes(), seed=str(seed)) for seed in range(2)]
    finally:
        first.kill()
    assert not (data / "ledger.sqlite3").exists(), "the PostgreSQL server also wrote a SQLite database"
    second = ServerProcess(data, workers=1, database=postgres_url).start()
    try:
        with second.client(key) as client:
            for job_id in ids:
                job = wait_for(client, job_id)
                assert job["status"] == "succeeded" and len(job["images"]) == 1
                image = client.get(job["images"][0]["url"])
                assert image.status_code == 200
                verified = client.post("/v1/verify", files={"image": ("a.png", image.content, "image/png")}).json()
                assert verified["owner"] == "you" and verified["chain"] == "intact", verified
        assert images_today(data, postgres_url) == 2
    finally:
        second.stop()
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.provenance.ledger_backends import open_ledger

    ledger = open_ledger(postgres_url, load_keys(data, create=False))  # the ledger is in the same database
    assert len(ledger) == 2 and ledger.verify().ok
    assert not (data / "ledger.sqlite3").exists(), "the PostgreSQL server also wrote a SQLite ledger"


def test_one_server_per_data_folder(queue_only_server):
    result = subprocess.run([*backdrop_command(), "serve", "--data", str(queue_only_server.data), "--port", "1"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "another backdrop serve is running" in result.stderr


def test_one_server_per_postgres_database(tmp_path, postgres_url):
    from comfyui_backdrop.cli.serve.database import open_store
    from comfyui_backdrop.runtime.errors import InvalidInputError

    first, second = open_store(postgres_url, tmp_path), open_store(postgres_url, tmp_path)
    try:
        refused = pytest.raises(InvalidInputError, match="another backdrop serve is using the PostgreSQL database")
        with first.server_lock(), refused, second.server_lock():
            pass
        with second.server_lock():  # released when the first server ends
            pass
    finally:
        first.close()
        second.close()
