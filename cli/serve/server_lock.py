"""One ``backdrop serve`` per resource: an exclusive, non-blocking lock file held for the server's lifetime."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ...runtime.errors import InvalidInputError


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str, write_pid: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs; another holder makes it raise
    InvalidInputError(``busy``) at once. ``write_pid``: the file then names this process. No-op lock off POSIX."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.name == "posix":
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InvalidInputError(busy) from None
        if write_pid:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
