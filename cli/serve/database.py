"""Opening the server's store from the ``--database`` setting."""

from __future__ import annotations

from pathlib import Path

from ...runtime.errors import InvalidInputError
from .store import Store


def open_store(database: str | None, data_root: Path) -> Store:
    """The store named by ``database``: None for SQLite in the data folder, ``sqlite:///FILE``, or
    ``postgresql://...`` (psycopg 3, the ``db`` extra). The schema is created when missing."""
    from .config import SQLITE_FILENAME
    from .store_sqlite import SqliteStore

    if not database:
        store: Store = SqliteStore(data_root / SQLITE_FILENAME)
    elif database.startswith("sqlite:///"):
        store = SqliteStore(Path(database.removeprefix("sqlite:///")).expanduser())
    elif database.startswith(("postgresql://", "postgres://")):
        from .store_postgres import PostgresStore

        store = PostgresStore(database)
    else:
        raise InvalidInputError("--database takes postgresql://USER@HOST:PORT/DB or sqlite:///FILE (default: "
                                f"SQLite in the data folder), got {database.split(':')[0]!r}:...")
    store.init_schema()
    return store
