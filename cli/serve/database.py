"""Opening the server's store from the ``--database`` setting."""

from __future__ import annotations

from pathlib import Path

from ...runtime.errors import InvalidInputError
from .store import Store


def open_store(database: str | None, data_root: Path) -> Store:
    """The store named by ``database``: None for the data folder's ``ledger.sqlite3`` (the one SQLite database:
    accounts, jobs and the provenance ledger), ``sqlite:///FILE`` (the same in FILE), or ``postgresql://...``
    (psycopg 3, the ``db`` extra). The schema is created when missing; a data folder from before the one database
    has its ``server.sqlite3`` merged in first (``legacy_database``)."""
    from .config import LEGACY_SQLITE_FILENAME, SQLITE_FILENAME, SQLITE_URL, sqlite_url_path
    from .store_sqlite import SqliteStore

    if not database:
        store: Store = SqliteStore(data_root / SQLITE_FILENAME)
    elif database.startswith(SQLITE_URL):
        path = sqlite_url_path(database)
        _refuse_split_ledger(path, Path(data_root) / SQLITE_FILENAME)
        store = SqliteStore(path)
    elif database.startswith(("postgresql://", "postgres://")):
        from .store_postgres import PostgresStore

        store = PostgresStore(database)
    else:
        raise InvalidInputError("--database takes postgresql://USER@HOST:PORT/DB or sqlite:///FILE (default: "
                                f"SQLite in the data folder), got {database.split(':')[0]!r}:...")
    try:
        store.init_schema()
        if not database:
            from .legacy_database import merge_legacy_database

            merge_legacy_database(store, Path(data_root) / LEGACY_SQLITE_FILENAME)
    except BaseException:
        store.close()
        raise
    return store


def _refuse_split_ledger(path: Path, folder_ledger: Path) -> None:
    """``sqlite:///FILE`` keeps the ledger in FILE too: refuse when the data folder's own ledger already holds
    records, which the server would no longer see (verification would find no record of earlier images)."""
    import sqlite3

    if path == folder_ledger.resolve() or not folder_ledger.exists():
        return
    con = sqlite3.connect(folder_ledger.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        has_records = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone()
        if has_records and con.execute("SELECT 1 FROM records LIMIT 1").fetchone():
            raise InvalidInputError(
                f"--database sqlite:///{path} keeps jobs, accounts and the provenance ledger in that file, but the "
                f"data folder's {folder_ledger} already holds ledger records, which the server would no longer "
                f"see; leave out --database to use {folder_ledger.name} (the data folder's database)")
    except sqlite3.DatabaseError:
        return
    finally:
        con.close()
