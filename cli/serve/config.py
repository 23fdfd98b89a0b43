"""What one ``backdrop serve`` runs with: the data folder's layout and the server's settings.

The data folder holds everything the server keeps, and the server writes nowhere else::

    DATA/                  0700
      ledger.sqlite3       the one database (SQLite, WAL): accounts, API-key hashes, jobs, quota use, and the signed
                           provenance ledger (one record per delivered image); absent with --database postgresql://
      tiers.toml           the tiers: written from the shipped defaults on first use, then yours to edit
      keys/                watermark, ledger and C2PA keys (runtime.provenance.keys); DATA is the provenance home
      jobs/<job id>/       the uploaded photo and out/, the delivered images
      tmp/                 uploads being received (moved into jobs/ when accepted, removed otherwise)
      server.lock          held while a server runs on this folder: one server per folder

The database is the provenance home's own ``ledger.sqlite3``, so ``backdrop verify --home DATA`` and the ledger's
witness (``keys/ledger_witness.json``) find it as for any home; the server's tables sit beside ``records`` and
``head``. Job submission does not queue behind image saves: a ledger append holds the database's write lock only
for its short insert (the chain is serialised by the ledger's own append lock, ``ledger.sqlite3-append.lock``,
while the image is saved; see ``runtime.provenance.ledger.Ledger.appending``).

Data folders made before (jobs and accounts in ``server.sqlite3``, the ledger in ``ledger.sqlite3``) are merged
into ``ledger.sqlite3`` the first time a server or ``backdrop accounts`` opens them (``legacy_database.py``);
the old file is kept as ``server.sqlite3.merged``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...runtime.errors import InvalidInputError
from ...runtime.provenance.ledger import LEDGER_FILENAME

DATABASE_ENV = "BACKDROP_DATABASE_URL"
SQLITE_FILENAME = LEDGER_FILENAME  # the one SQLite database: the server's tables and the ledger
LEGACY_SQLITE_FILENAME = "server.sqlite3"  # jobs and accounts before they moved into the ledger's database
TIERS_FILENAME = "tiers.toml"
JOB_ID = re.compile(r"job_[0-9a-f]{24}")
DEFAULT_MAX_UPLOAD_MB = 40
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: any phone or DSLR product shot; decoding costs ~12 bytes a pixel


@dataclass(frozen=True)
class DataFolder:
    """Paths inside the server's data folder. ``prepare`` creates it (0700)."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike) -> DataFolder:
        return cls(Path(path).expanduser().resolve())

    @property
    def sqlite_path(self) -> Path:
        return self.root / SQLITE_FILENAME

    @property
    def tiers_path(self) -> Path:
        return self.root / TIERS_FILENAME

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def lock_path(self) -> Path:
        return self.root / "server.lock"

    def prepare(self) -> DataFolder:
        if self.root.exists() and not self.root.is_dir():
            raise InvalidInputError(f"--data {self.root} is a file; give a folder (it is created when missing)")
        for folder in (self.root, self.jobs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.name == "posix":
            os.chmod(self.root, 0o700)  # prompts, accounts and keys live here
        return self

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise InvalidInputError(f"{job_id!r} is not a job id")
        return self.jobs / job_id

    def relative(self, path: Path) -> str:
        """``path`` as stored in the database: relative to the data folder, with forward slashes."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def inside(self, relative: str) -> Path:
        """The stored ``relative`` path, refused if it would lead outside the data folder."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidInputError(f"{relative!r} is outside the data folder")
        return path


@dataclass(frozen=True)
class ServeConfig:
    """Every setting of one server; picklable, so worker processes get the same one."""

    data: DataFolder
    database: str | None = None  # None: SQLite in the data folder; else sqlite:///FILE or postgresql://...
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # job worker processes (0: accept and queue jobs, run none)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    models_dir: Path | None = None
    device: str = "auto"
    sam: str | None = None
    captioner: str | None = None
    tokenizer_dir: str | None = None
    dtype: str = "auto"
    access_log: bool = True
    shutdown_grace_s: float = 10.0
    run_defaults: dict[str, Any] | None = None  # `backdrop run`'s parsed defaults: the base of every job's plan
    ray_address: str | None = None  # run jobs on Ray: "local" (embedded) or a cluster's HOST:PORT; None: processes
    ray_gpus_per_worker: float = 0.0

    @property
    def ledger_location(self) -> str | None:
        """Where delivered images are recorded: the database of ``--database`` (one database for jobs, accounts
        and provenance: a PostgreSQL URL, or the file of ``sqlite:///FILE``), else None: the data folder's
        ``ledger.sqlite3``, which is also the server's database."""
        from ...runtime.provenance.ledger_backends import is_database_url

        if self.database and is_database_url(self.database):
            return self.database
        if self.database and self.database.startswith(SQLITE_URL):
            return str(sqlite_url_path(self.database))
        return None

    @property
    def database_label(self) -> str:
        """The database for messages and logs: never a password."""
        return database_label(self.database, self.data)


SQLITE_URL = "sqlite:///"


def sqlite_url_path(database: str) -> Path:
    """The file of a ``sqlite:///FILE`` setting."""
    return Path(database.removeprefix(SQLITE_URL)).expanduser().resolve()


def database_label(database: str | None, data: DataFolder | None = None) -> str:
    if not database:
        return f"SQLite {data.sqlite_path}" if data is not None else "SQLite"
    if database.startswith("sqlite:"):
        return f"SQLite {database.removeprefix('sqlite:///')}"
    return re.sub(r"//[^@/]*@", "//***@", database.split("?")[0])  # postgresql://user:pw@host/db -> //***@host/db
