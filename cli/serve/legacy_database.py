"""Data folders from before the one database: their ``server.sqlite3`` merged into ``ledger.sqlite3``.

Servers used to keep accounts, key hashes, jobs and quota use in ``DATA/server.sqlite3`` and the ledger in
``DATA/ledger.sqlite3``. Now both live in ``ledger.sqlite3`` (see ``config.py``). The first time such a folder is
opened (``backdrop serve`` or ``backdrop accounts``), :func:`merge_legacy_database` copies the server's tables into
``ledger.sqlite3``, rows and ids unchanged, in one transaction, then renames the old file ``server.sqlite3.merged``
(kept: delete it once you are content). The ledger itself is not touched: its records, head and witness stay as
they were, so it verifies exactly as before.

A crash between the copy and the rename is safe: the copy's commit records which file it merged (size and
modification time), and the next start only renames that file. A ``server.sqlite3`` that reappears after its
merge (a restored backup) is refused rather than merged twice or ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

from ...runtime.errors import InvalidInputError
from .store import SCHEMA_VERSION
from .store_sqlite import SQLITE_BUSY_TIMEOUT_S, SqliteStore

log = logging.getLogger("backdrop.serve")
TABLES = ("accounts", "jobs", "job_images", "usage")  # in foreign-key order
MERGED_KEY = "merged_legacy_database"
MERGED_SUFFIX = ".merged"


def merge_legacy_database(store: SqliteStore, legacy: Path) -> bool:
    """Merge ``legacy`` (a data folder's old ``server.sqlite3``) into ``store``; True when a merge happened now.

    Refused (InvalidInputError, nothing changed) when ``store`` already holds accounts or jobs of its own, or when
    ``legacy`` was merged before and has changed since."""
    if not legacy.exists():
        return False
    _make_self_contained(legacy)
    stamp = _stamp(legacy)
    marker = store.reading().one("SELECT value FROM meta WHERE key = ?", MERGED_KEY)
    if marker is not None:
        if json.loads(marker[0]).get("stamp") != stamp:
            raise InvalidInputError(
                f"{legacy} reappeared after its jobs and accounts were merged into {store.path}, and it has changed "
                f"since; the server uses {store.path} only. Move {legacy.name} away (if it holds accounts or jobs "
                "you need, they must be re-created)")
        _retire(legacy)  # merged, but the rename did not happen (the process stopped in between)
        return False
    con = store.reading().con
    con.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
    try:
        with store.transaction() as db:
            version = db.one("SELECT value FROM legacy.meta WHERE key = 'schema_version'")
            if version is not None and int(version[0]) > SCHEMA_VERSION:
                raise InvalidInputError(f"{legacy} holds schema version {version[0]}, newer than this backdrop "
                                        f"({SCHEMA_VERSION}); upgrade comfyui-backdrop")
            for table in ("accounts", "jobs"):
                if db.one(f"SELECT 1 FROM main.{table} LIMIT 1") is not None:
                    raise InvalidInputError(
                        f"both {legacy} and {store.path} hold {table}; one data folder has one database. Keep the "
                        f"data folder whose database you want and move {legacy.name} away")
            copied = {}
            for table in TABLES:
                columns = ", ".join(row[1] for row in db.all(f"PRAGMA legacy.table_info({table})"))
                copied[table] = db.run(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM legacy.{table}")
            db.run("INSERT INTO meta (key, value) VALUES (?, ?)", MERGED_KEY,
                   json.dumps({"file": legacy.name, "stamp": stamp, "at": time.time(), "rows": copied}))
    finally:
        con.execute("DETACH DATABASE legacy")
    _retire(legacy)
    log.info("merged %s into %s (%s); the old file is kept as %s%s", legacy.name, store.path.name,
             ", ".join(f"{n} {table}" for table, n in copied.items()), legacy.name, MERGED_SUFFIX)
    return True


def _make_self_contained(path: Path) -> None:
    """Fold the WAL into the file and leave WAL mode, so that the file alone holds every committed row."""
    con = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        con.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        mode = con.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise InvalidInputError(f"{path} (jobs and accounts from an earlier version) could not be read to merge it "
                                f"into the data folder's ledger.sqlite3 ({exc})") from None
    finally:
        con.close()
    if str(mode).lower() != "delete":
        raise InvalidInputError(f"{path} is still in use (by an earlier backdrop serve?); stop it, then start again")


def _stamp(path: Path) -> str:
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


def _retire(legacy: Path) -> None:
    os.replace(legacy, legacy.with_name(legacy.name + MERGED_SUFFIX))
    for leftover in (legacy.with_name(legacy.name + "-wal"), legacy.with_name(legacy.name + "-shm"),
                     legacy.with_name(legacy.name + ".server-lock")):
        with contextlib.suppress(OSError):
            leftover.unlink()
