"""``backdrop serve --ray-address``: jobs run in Ray actors (embedded Ray, and a `ray start --head` cluster with
PostgreSQL), a killed actor is restarted and loses nothing, and a bad cluster setting is a clear error at start."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.processes import descendants_titled
from tests.fixtures.ray_cluster import ray_head
from tests.serve.server_process import (
    ServerProcess,
    backdrop_command,
    create_account,
    free_port,
    png_bytes,
    wait_for,
    write_tiers,
)
from tests.serve.test_restart import submit

pytest.importorskip("ray", reason="the Ray runner needs ray: pip install 'comfyui-backdrop[cluster]'")

ACTOR_TITLE = "JobWorkerActor"


@pytest.fixture()
def ray_tmp():
    """A short temporary folder for Ray (its socket paths must stay under 108 bytes; pytest's tmp_path is long)."""
    folder = tempfile.mkdtemp(prefix="bdray-", dir="/tmp")
    yield folder
    subprocess.run(["rm", "-rf", folder], check=False)


def _assert_delivered_and_verified(client, job: dict, images: int) -> None:
    assert job["status"] == "succeeded" and len(job["images"]) == images, job
    for image in job["images"]:
        content = client.get(image["url"]).content
        verified = client.post("/v1/verify", files={"image": ("x.png", content)}).json()
        assert verified["owner"] == "you" and verified["signature"] == "valid", verified


def test_jobs_run_in_ray_actors_and_a_killed_actor_loses_nothing(tmp_path, ray_tmp):
    data = tmp_path / "data"
    write_tiers(data)
    key = create_account(data, "alice", "test")["api_key"]
    server = ServerProcess(data, workers=1, args=("--ray-address", "local"), env={"RAY_TMPDIR": ray_tmp}).start()
    try:
        server.wait_for_workers()
        health = httpx.get(f"{server.url}/healthz").json()
        assert health == {"status": "ok", "runner": "ray", "workers": 1, "workers_started": 1}
        actors = descendants_titled(server.process.pid, ACTOR_TITLE)
        assert len(actors) == 1, f"expected one job-worker actor, found {actors}"
        with server.client(key) as client:
            long = submit(client, png_bytes(320, 384, seed=4), variations="8")
            after = [submit(client, png_bytes(), seed=str(seed), variations=str(1 + seed)) for seed in range(2)]
            wait_for(client, long, statuses=("running",), predicate=lambda job: len(job["images"]) >= 1)
            os.kill(actors[0], signal.SIGKILL)
            lost = wait_for(client, long)
            assert lost["status"] == "failed" and lost["retryable"] and "Ray worker" in lost["error"], lost
            assert 1 <= len(lost["images"]) < 8
            on_disk = sorted((data / "jobs" / long / "out").rglob("*.png"))
            assert len(on_disk) == len(lost["images"]), "an image file is neither delivered nor removed"
            for images, job_id in enumerate(after, start=1):  # queued behind the lost job: the new actor runs them
                _assert_delivered_and_verified(client, wait_for(client, job_id), images)
        assert httpx.get(f"{server.url}/healthz").json()["workers_started"] == 2
        restarted = descendants_titled(server.process.pid, ACTOR_TITLE)
        assert restarted and restarted != actors, "the actor was not restarted in a new process"
    finally:
        server.stop()
    log = server.log()
    assert "was lost" in log and f"{ACTOR_TITLE} pid=" in log, log[-3000:]  # the actors' log lines reach the server's
    assert not descendants_titled(server.process.pid, ACTOR_TITLE), "embedded Ray outlived the server"


def _serve_fails(data: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([*backdrop_command(), "serve", "--data", str(data), "--port", str(free_port()), *args],
                            capture_output=True, text=True, timeout=120, check=False)
    return result, time.monotonic() - started


def test_a_joined_cluster_needs_postgresql(tmp_path):
    result, _ = _serve_fails(tmp_path / "data", "--ray-address", "127.0.0.1:9")
    assert result.returncode == 2 and "--database postgresql://" in result.stderr, result.stderr


def test_joining_no_cluster_is_a_clear_error_in_seconds(tmp_path, postgres_url):
    result, seconds = _serve_fails(tmp_path / "data", "--ray-address", "127.0.0.1:9", "--database", postgres_url)
    assert result.returncode == 2, result.stderr
    assert "cannot join the Ray cluster at --ray-address 127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr and seconds < 30


def test_a_ray_cluster_runs_jobs_with_keys_held_in_memory(tmp_path, postgres_url, ray_tmp):
    """`ray start --head` as another machine would (its own, empty provenance home): the actors sign with the
    server's keys, received in memory, into the PostgreSQL ledger, and write no key on the node."""
    data, node_home = tmp_path / "data", tmp_path / "node-home"
    node_home.mkdir()
    write_tiers(data)
    key = create_account(data, "alice", "test", database=postgres_url)["api_key"]
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_TMPDIR": ray_tmp}
    with ray_head({**os.environ, "BACKDROP_HOME": str(node_home), **auth}, num_cpus=1) as address:
        server = ServerProcess(data, workers=1, database=postgres_url, args=("--ray-address", address), env=auth)
        try:
            server.start()
            with server.client(key) as client:
                ids = [submit(client, png_bytes(), seed=str(seed)) for seed in range(2)]
                for job_id in ids:
                    _assert_delivered_and_verified(client, wait_for(client, job_id), 1)
            assert httpx.get(f"{server.url}/healthz").json()["runner"] == "ray"
        finally:
            server.stop()
    assert list(node_home.iterdir()) == [], "the node created or wrote keys"
    assert not (data / "ledger.sqlite3").exists() and not (data / "server.sqlite3").exists()
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.provenance.ledger_backends import open_ledger

    ledger = open_ledger(postgres_url, load_keys(data, create=False))
    assert len(ledger) == 2 and ledger.verify().ok
