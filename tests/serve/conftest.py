"""Fixtures for ``backdrop serve``: servers with their accounts. The PostgreSQL fixtures (``postgres_cluster``,
``postgres_url``) live in tests/fixtures/postgres.py, registered for the whole suite by tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.serve.server_process import ServerProcess, create_account, write_tiers

# ---- the shared server (one worker) ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One server with one worker for the tests that need jobs to run, and its accounts (name -> JSON)."""
    data = tmp_path_factory.mktemp("serve") / "data"
    write_tiers(data)
    accounts = {name: create_account(data, name, tier) for name, tier in
                (("alice", "test"), ("bob", "test"), ("carol", "small"), ("dave", "slow"), ("mallory", "test"))}
    process = ServerProcess(data, workers=1).start()
    process.accounts = accounts
    yield process
    process.stop()


@pytest.fixture(scope="session")
def queue_only_server(tmp_path_factory):
    """A server with no workers: accepted jobs stay queued (cancel, limits and races are seen in that state)."""
    data = tmp_path_factory.mktemp("serve-queue") / "data"
    write_tiers(data)
    accounts = {name: create_account(data, name, tier) for name, tier in
                (("erin", "test"), ("frank", "small"), ("race", "race"), ("grace", "test"),
                                   ("henry", "edited"))}
    process = ServerProcess(data, workers=0).start()
    process.accounts = accounts
    yield process
    process.stop()
