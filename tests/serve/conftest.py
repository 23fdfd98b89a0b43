"""Fixtures for ``backdrop serve``: servers with their accounts, and a throwaway PostgreSQL cluster when the
PostgreSQL binaries are installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.serve.server_process import ServerProcess, create_account, free_port, write_tiers

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


# ---- PostgreSQL ------------------------------------------------------------------------------------------

def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory):
    """A throwaway PostgreSQL cluster on a free loopback port; yields an admin URL. Skips when PostgreSQL or psycopg
    is missing (CI installs both: apt-get install postgresql; pip install 'comfyui-backdrop[db]')."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'comfyui-backdrop[db]'")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install -y postgresql")
    run_as: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user for initdb (apt-get install postgresql "
                        "creates it)")
        run_as = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="backdrop-pg-"))
    cluster, sockets = root / "cluster", root / "sockets"
    sockets.mkdir()
    if run_as:
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    result = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(cluster), "-U", "backdrop", "-A", "trust",
                             "--no-sync", "-E", "UTF8"], **quiet, check=False)
    if result.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {result.stderr.decode(errors='replace')}")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    result = subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(cluster), "-o", options, "-l",
                             str(root / "postgres.log"), "-w", "-t", "60", "start"], **quiet, check=False)
    if result.returncode:
        log = (root / "postgres.log").read_text(errors="replace") if (root / "postgres.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {result.stderr.decode(errors='replace')}\n{log}")
    try:
        yield f"postgresql://backdrop@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(cluster), "-m", "immediate", "-w", "stop"],
                       **quiet, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_cluster, request):
    """A fresh, empty database in the test cluster."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50] + f"_{os.getpid()}"
    with psycopg.connect(f"{postgres_cluster}/postgres", autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_cluster}/{name}"
