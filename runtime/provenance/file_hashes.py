"""SHA-256 of model files (checkpoints, LoRAs...) for provenance records, cached per process.

The full-file SHA-256 is the hash model hubs such as Civitai and Hugging Face publish, so a record's
model hash can be looked up. Hashing a multi-GB checkpoint takes seconds; the result is cached by
(path, size, modification time) for the life of the process.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

CHUNK = 4 << 20
_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (cached while the file's size and mtime stay the same)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _lock:
        _cache[key] = value
    return value


def hash_named_files(paths: dict[str, str | os.PathLike | None]) -> dict[str, str]:
    """{name: path or None} -> {name: sha256, or "" when the file is unknown or unreadable}."""
    hashes = {}
    for name, path in paths.items():
        try:
            hashes[name] = file_sha256(path) if path else ""
        except OSError:
            hashes[name] = ""
    return hashes


def hash_model_files(resolve: Callable[[str, str], str | os.PathLike | None],
                     models: Mapping[str, tuple[str, str]],
                     loras: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The (models, loras) hashes of a provenance record: ``models`` maps each record name to (folder kind, model
    name), ``loras`` are names in the loras folder, and ``resolve(kind, name)`` gives a file's path (None if
    unknown). One function for the CLI and the nodes, so both record the same hashes."""
    return (hash_named_files({key: resolve(kind, name) for key, (kind, name) in models.items()}),
            hash_named_files({name: resolve("loras", name) for name in loras}))
