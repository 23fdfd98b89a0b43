"""Tier limits over HTTP: 429 with Retry-After for rates and quotas (exact with 50 clients racing), immediate
413/422 for requests larger than the tier allows; every refusal names its limit."""

from __future__ import annotations

import json
import threading
import time

from tests.serve.server_process import png_bytes

PHOTO = png_bytes(140, 150, seed=2)


def submit(client, photo=PHOTO, headers=None, **fields):
    return client.post("/v1/jobs", files={"photo": ("p.png", photo, "image/png")}, data=fields, headers=headers or {})


def accounts_json(data) -> dict:
    import contextlib
    import io

    from comfyui_backdrop.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["accounts", "list", "--data", str(data), "--json"]) == 0
    return {row["name"]: row for row in json.loads(out.getvalue())}


def test_images_per_day_is_exact_with_50_clients_racing(queue_only_server):
    """The race tier allows 100 images a day: 50 clients x 3 jobs of 1 image -> exactly 100 accepted."""
    key = queue_only_server.accounts["race"]["api_key"]
    barrier, statuses, lock = threading.Barrier(50), [], threading.Lock()

    def client_loop():
        with queue_only_server.client(key) as client:
            barrier.wait()
            for _ in range(3):
                answer = submit(client)
                with lock:
                    statuses.append((answer.status_code, answer.headers.get("backdrop-limit"),
                                     answer.headers.get("retry-after")))

    threads = [threading.Thread(target=client_loop) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [s for s in statuses if s[0] == 202]
    refused = [s for s in statuses if s[0] != 202]
    assert len(accepted) == 100, sorted({s[0] for s in statuses})
    assert refused and all(s[0] == 429 and s[1] == "images_per_day" and int(s[2]) > 0 for s in refused)
    assert accounts_json(queue_only_server.data)["race"]["images_today"] == 100


def test_requests_per_minute(server):
    with server.client(server.accounts["dave"]["api_key"]) as dave:  # 3 a minute
        assert [dave.get("/v1/models").status_code for _ in range(3)] == [200, 200, 200]
        refused = dave.get("/v1/models")
    assert refused.status_code == 429
    assert refused.headers["backdrop-limit"] == "requests_per_minute"
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    body = refused.json()
    assert body["limit"] == "requests_per_minute" and body["limit_value"] == 3 and body["retry_after"] >= 1


def test_concurrent_jobs_and_cancel_of_a_queued_job(queue_only_server):
    with queue_only_server.client(queue_only_server.accounts["frank"]["api_key"]) as frank:  # 1 at once
        first = submit(frank)
        assert first.status_code == 202
        second = submit(frank)
        assert second.status_code == 429 and second.json()["limit"] == "concurrent_jobs"
        assert int(second.headers["retry-after"]) > 0
        canceled = frank.delete(f"/v1/jobs/{first.json()['id']}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        assert frank.get(f"/v1/jobs/{first.json()['id']}").json()["status"] == "canceled"
        assert accounts_json(queue_only_server.data)["frank"]["images_today"] == 0, "the reservation was not returned"
        third = submit(frank)
        assert third.status_code == 202
        frank.delete(f"/v1/jobs/{third.json()['id']}")


def test_requests_larger_than_the_tier_are_refused_at_once(queue_only_server):
    with queue_only_server.client(queue_only_server.accounts["frank"]["api_key"]) as frank:  # 150 px, 1 variation
        many = submit(frank, variations="2")
        assert many.status_code == 422 and many.json()["limit"] == "max_variations"
        assert many.headers["backdrop-limit"] == "max_variations" and "retry-after" not in many.headers
        large = submit(frank, photo=png_bytes(160, 192))
        assert large.status_code == 413 and large.json()["limit"] == "max_resolution"
        assert "at most 150 px" in large.json()["detail"] and "retry-after" not in large.headers


def test_idempotency_key_with_clients_racing(queue_only_server):
    key = queue_only_server.accounts["grace"]["api_key"]
    barrier, answers = threading.Barrier(12), []

    def send():
        with queue_only_server.client(key) as client:
            barrier.wait()
            answers.append(submit(client, headers={"Idempotency-Key": "po-991"}))

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") != "true" for a in answers) == 1
    assert accounts_json(queue_only_server.data)["grace"]["images_today"] == 1


def test_tier_changes_take_effect_without_a_restart(queue_only_server):
    from comfyui_backdrop.cli.main import main

    tiers = queue_only_server.data / "tiers.toml"
    with queue_only_server.client(queue_only_server.accounts["henry"]["api_key"]) as henry:
        assert submit(henry, variations="3").status_code == 422
        tiers.write_text(tiers.read_text().replace("[tiers.edited]\nrequests_per_minute = 100000\nimages_per_day = "
                                                   "100000\nmax_resolution = 4096\nmax_variations = 1",
                                                   "[tiers.edited]\nrequests_per_minute = 100000\nimages_per_day = "
                                                   "100000\nmax_resolution = 4096\nmax_variations = 3"))
        deadline = time.monotonic() + 10
        while (answer := submit(henry, variations="3")).status_code != 202 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer.status_code == 202
        assert main(["accounts", "set-tier", "henry", "small", "--data", str(queue_only_server.data)]) == 0
        assert henry.get("/v1/styles").json()["tier"]["name"] == "small"


def test_an_account_whose_tier_was_removed_is_told_so(queue_only_server):
    import sqlite3

    from tests.serve.server_process import create_account

    ivan = create_account(queue_only_server.data, "ivan", "test")
    with sqlite3.connect(queue_only_server.data / "ledger.sqlite3") as con:
        con.execute("UPDATE accounts SET tier = 'retired' WHERE id = ?", (ivan["id"],))
    with queue_only_server.client(ivan["api_key"]) as client:
        answer = client.get("/v1/models")
    assert answer.status_code == 403 and "tier 'retired' is not defined" in answer.json()["detail"]
