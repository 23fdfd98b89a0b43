"""Open a ledger by location: a ``postgresql://`` (or ``postgres://``) URL is a PostgreSQL ledger, anything else
the path of an SQLite ledger file (the embedded default, ``<home>/ledger.sqlite3``)."""

from __future__ import annotations

import os
from pathlib import Path

from .keys import KeyStore
from .ledger import Ledger
from .ledger_postgres import PostgresLedger, parse_url

DATABASE_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SUFFIXES = (".sqlite3", ".sqlite", ".db")


def is_database_url(text: str | os.PathLike) -> bool:
    """True for a PostgreSQL URL (``postgresql://…`` or ``postgres://…``)."""
    return isinstance(text, str) and text.strip().lower().startswith(DATABASE_SCHEMES)


def looks_like_ledger(text: str) -> bool:
    """A database URL or a file name with an SQLite ledger suffix (how ``backdrop verify --ledger X`` tells a
    ledger from an image)."""
    return is_database_url(text) or Path(text).suffix.lower() in SQLITE_SUFFIXES


def open_ledger(location: str | os.PathLike, keys: KeyStore) -> Ledger | PostgresLedger:
    """The ledger at ``location``; nothing is connected to or created until it is used.

    A bad URL, or psycopg missing for a URL, raises InvalidInputError (naming host and database, never a password).
    """
    if is_database_url(location):
        return PostgresLedger(str(location).strip(), keys)
    return Ledger(Path(location).expanduser(), keys)


def check_location(location: str | os.PathLike) -> str:
    """``location`` as text, after checking that a URL parses (InvalidInputError otherwise); connects to nothing."""
    if is_database_url(location):
        parse_url(str(location).strip())
    return str(location)


def ledger_cache_key(location: str | os.PathLike) -> str:
    """A stable key for one ledger location (a URL as given, a path resolved)."""
    if is_database_url(location):
        return str(location).strip()
    return str(Path(location).expanduser().resolve())
