"""The run manifest of a catalog run: which photo (input hash x settings) goes to which files, and which finished.

It lives in the output folder (``.backdrop-catalog.sqlite3``, hidden, so image listings skip it) and only the driver
writes it. Running the same command again reads it and skips every photo that finished.

* A photo's **key** is the SHA-256 of its content hash, its file name and the settings digest
  (:func:`settings_digest`: everything that changes what is written, the output folder included). The same photo
  under other settings is other work.
* Before a photo is dispatched its **names are claimed**: the files it will write, chosen free of what is on disk
  and of every name claimed before, and kept for every later attempt. Workers write exactly these names, never a
  ``-N`` variant, so a retried photo can never leave a second copy, and a rerun finds what an earlier attempt wrote.
* Input hashes are cached by (path, size, mtime): a rerun of a large catalog re-reads only the files that changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...runtime.errors import InvalidInputError
from ..photo_steps import OutputNames, planned_names
from ..run_plan import RunPlan

MANIFEST_FILENAME = ".backdrop-catalog.sqlite3"
LOCK_FILENAME = ".backdrop-catalog.lock"
CLAIMED, DONE, FAILED = "claimed", "done", "failed"
_HASH_CHUNK = 1 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    key TEXT PRIMARY KEY,
    input TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    settings TEXT NOT NULL,
    names TEXT NOT NULL,
    status TEXT NOT NULL,
    written TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS input_hashes (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    digest TEXT PRIMARY KEY,
    description TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class PhotoJob:
    """One photo to process: its key, source, the names claimed for it and one ledger idempotency key a picture."""

    key: str
    source: Path
    names: OutputNames

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "source": str(self.source), "names": _names_dict(self.names)})

    @classmethod
    def from_json(cls, text: str) -> PhotoJob:
        data = json.loads(text)
        return cls(data["key"], Path(data["source"]), _names_from_dict(data["names"]))

    @property
    def idempotency_keys(self) -> tuple[str, ...]:
        """input x settings x variation: what the ledger records each picture under (at most one record each)."""
        return tuple(f"backdrop-run/{self.key}/{k}" for k in range(len(self.names.images)))


@dataclass(frozen=True)
class CatalogWork:
    """What a run has to do: the photos still to process, and how many finished in earlier runs."""

    jobs: tuple[PhotoJob, ...]
    already_done: tuple[PhotoJob, ...]


def settings_digest(plan: RunPlan) -> tuple[str, str]:
    """(SHA-256, description) of everything in ``plan`` that changes the files written (not the inputs, the device,
    the progress bar or the models folder's location)."""
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)
              if f.name not in ("inputs", "device", "quiet", "models_dir", "read_limits")}
    fields["out"] = str(Path(plan.out).resolve())
    description = json.dumps(fields, sort_keys=True, default=_jsonable)
    return hashlib.sha256(description.encode("utf-8")).hexdigest(), description


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


class RunManifest:
    """The manifest in ``out`` (created on first use). One writer: the process that drives the run."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / MANIFEST_FILENAME
        self._lock = _lock_folder(out)  # one catalog run at a time writes into a folder
        try:
            self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._lock.close()
            raise InvalidInputError(f"the run manifest {self.path} cannot be used ({exc}); move it away to start "
                                    "this catalog afresh (finished photos are then processed again, into new "
                                    "names)") from None
        self._claimed: set[str] | None = None  # every name any job claimed (loaded on first claim)

    def close(self) -> None:
        self._con.close()
        self._lock.close()

    def plan_work(self, plan: RunPlan, progress=None) -> CatalogWork:
        """Hash every input (cached by size and mtime), skip the finished photos, claim names for the others."""
        digest, description = settings_digest(plan)
        self.record_settings(digest, description)
        jobs, done, seen = [], [], set()
        for index, source in enumerate(plan.inputs):
            content = self.input_sha256(source)
            key = hashlib.sha256(f"{content}\n{source.name}\n{digest}".encode()).hexdigest()
            if key in seen:  # the same file twice in one command (a file and its folder): one job
                continue
            seen.add(key)
            names, status = self.claim(key, str(source), content, digest,
                                       lambda claimed, stem=source.stem: _names_dict(_free_names(stem, plan, claimed)))
            job = PhotoJob(key, source, _names_from_dict(names))
            (done if status == DONE else jobs).append(job)
            if progress is not None:
                progress(index + 1, len(plan.inputs))
        return CatalogWork(tuple(jobs), tuple(done))

    def record_settings(self, digest: str, description: str) -> None:
        with self._transaction():
            self._con.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (digest, description))

    def claim(self, key: str, source: str, input_sha256: str, settings: str,
              choose_names: Callable[[set[str]], dict]) -> tuple[dict, str]:
        """The names claimed for ``key`` and its status; a new key gets ``choose_names(names claimed so far)``
        (a dict whose ``"all"`` lists every path it claims), recorded before any worker sees the job."""
        row = self._con.execute("SELECT names, status FROM photos WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return json.loads(row[0]), row[1]
        if self._claimed is None:
            self._claimed = {name for (names,) in self._con.execute("SELECT names FROM photos")
                             for name in json.loads(names)["all"]}
        names = choose_names(self._claimed)
        self._claimed.update(names["all"])
        with self._transaction():
            self._con.execute("INSERT INTO photos (key, input, input_sha256, settings, names, status, updated) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (key, source, input_sha256, settings, json.dumps(names), CLAIMED, time.time()))
        return names, CLAIMED

    def input_sha256(self, source: Path) -> str:
        """SHA-256 of the file's bytes, from the cache when its size and mtime have not changed."""
        info = os.stat(source)
        path = str(Path(source).resolve())
        row = self._con.execute("SELECT size, mtime_ns, sha256 FROM input_hashes WHERE path = ?", (path,)).fetchone()
        if row is not None and row[0] == info.st_size and row[1] == info.st_mtime_ns:
            return row[2]
        digest = hashlib.sha256()
        with open(source, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
        with self._transaction():
            self._con.execute("INSERT OR REPLACE INTO input_hashes VALUES (?, ?, ?, ?)",
                              (path, info.st_size, info.st_mtime_ns, digest.hexdigest()))
        return digest.hexdigest()

    def finish(self, key: str, written: Iterable[Path], error: str | None) -> None:
        """Record a photo's outcome (committed at once: a run killed after this line keeps it)."""
        with self._transaction():
            self._con.execute("UPDATE photos SET status = ?, written = ?, error = ?, attempts = attempts + 1, "
                              "updated = ? WHERE key = ?",
                              (FAILED if error else DONE, json.dumps([str(p) for p in written]), error, time.time(),
                               key))

    def status(self, key: str) -> str | None:
        row = self._con.execute("SELECT status FROM photos WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _transaction(self):
        return _Transaction(self._con)


def finished_count(out: Path) -> int:
    """How many photos of the catalog in ``out`` have finished, read without the run's lock (to watch a run from
    another process); 0 when no run has written its manifest yet."""
    path = out / MANIFEST_FILENAME
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as con:
            return con.execute("SELECT count(*) FROM photos WHERE status = ?", (DONE,)).fetchone()[0]
    except sqlite3.OperationalError:  # created, its tables not yet
        return 0


def _lock_folder(out: Path):
    """An exclusive lock on ``out``'s catalog lock file, held until closed; a second run into the same folder is
    refused at once (two drivers would claim names from stale views of each other's claims)."""
    import fcntl

    handle = open(out / LOCK_FILENAME, "a+b")  # noqa: SIM115  (kept open: the lock lives as long as the file)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InvalidInputError(f"another catalog run is writing into {out}: wait for it, or give another --out"
                                ) from None
    return handle


class _Transaction:
    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def __enter__(self) -> sqlite3.Connection:
        self._con.execute("BEGIN IMMEDIATE")
        return self._con

    def __exit__(self, kind, *_) -> None:
        self._con.execute("COMMIT" if kind is None else "ROLLBACK")


def _free_names(stem: str, plan: RunPlan, claimed: set[str]) -> OutputNames:
    """The first of ``stem``, ``stem-1``, ``stem-2``... whose every file is neither on disk nor claimed."""
    for candidate in _stems(stem):
        names = planned_names(candidate, plan)
        if not any(str(p) in claimed or os.path.lexists(p) for p in names.all):
            return names
    raise FileExistsError(f"no free names for {stem} in {plan.out}")


def _stems(stem: str) -> Iterator[str]:
    yield stem
    for n in range(1, 10_000):
        yield f"{stem}-{n}"


def _names_dict(names: OutputNames) -> dict:
    return {"images": [str(p) for p in names.images], "mask": _str(names.mask),
            "prompt_json": _str(names.prompt_json), "all": [str(p) for p in names.all]}


def _names_from_dict(data: dict) -> OutputNames:
    return OutputNames(images=tuple(Path(p) for p in data["images"]),
                       mask=Path(data["mask"]) if data["mask"] else None,
                       prompt_json=Path(data["prompt_json"]) if data["prompt_json"] else None)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
