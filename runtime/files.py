"""Writing files safely: atomic (temp file, fsync, link or replace) and never overwriting a user's file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def unique_path(path: str | os.PathLike) -> Path:
    """``path`` if free, else ``stem-1.ext``, ``stem-2.ext``... (an existing file is never reused)."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def write_bytes_exclusive(path: str | os.PathLike, payload: bytes, rename: bool = True) -> Path:
    """Write to a temp file in the same folder, then hard-link it to a free name (atomic, no overwrite).

    Returns the path written: ``path`` itself, or ``stem-N.ext`` if ``path`` already exists. With
    ``rename=False`` an existing ``path`` raises ``FileExistsError`` instead.
    """
    path = Path(path)
    tmp = _temp_copy(path, payload)
    try:
        while True:
            target = unique_path(path) if rename else path
            try:
                os.link(tmp, target)  # fails if target appeared meanwhile: never overwrites
                return target
            except FileExistsError:
                if not rename:
                    raise
    finally:
        os.unlink(tmp)


def replace_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """Replace ``path`` atomically (for generated files such as caches, never for a user's outputs)."""
    path = Path(path)
    os.replace(_temp_copy(path, payload), path)
    return path


def _temp_copy(path: Path, payload: bytes) -> str:
    """``payload`` written and synced to a hidden temp file beside ``path``; returns its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp
