"""Writing files safely: atomic (temp file, fsync, link or replace) and never overwriting a user's file.

The rules every writer here keeps:

- **Never overwrite.** ``write_bytes_exclusive`` claims a name with a hard link, which fails if anything
  at all is there. Any existing entry at the target name, whatever it is (a file, a folder, a FIFO, a
  symbolic link, a *dangling* symbolic link), is left alone: the next free ``stem-N.ext`` is used, or
  with ``rename=False`` a ``FileExistsError`` says what is there. Names are tested with ``lstat``
  (``os.path.lexists``), never with ``Path.exists()``, which is False for a dangling link: the link
  then refused ``os.link`` forever and the run hung at 100% CPU.
- **Never hang.** The search for a free name and the retries after a race are bounded
  (``MAX_NAME_ATTEMPTS``); past that a ``FileExistsError`` names the folder.
- **Never leave partial files.** Data goes to a hidden temp file beside the target, is fsynced, then
  linked (or, where the file system has no hard links, moved onto a name claimed with ``O_EXCL``). The
  temp file is removed on every path out, ``KeyboardInterrupt`` included.
- **Modes follow the umask**, as ComfyUI's SaveImage (plain ``open``) does: ``mkstemp`` creates 0600 and
  a hard link keeps it, so the temp file is set to ``0o666 & ~umask`` (0644 under the usual 022) before
  it is linked. Pass ``mode`` for files that must stay private.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import threading
from pathlib import Path

MAX_NAME_ATTEMPTS = 10_000
# os.link fails with these where the file system has no hard links (FAT/exFAT, some network mounts)
NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS,
                 getattr(errno, "ENOTSUP", errno.EPERM), getattr(errno, "EOPNOTSUPP", errno.EPERM)}
_umask_lock = threading.Lock()


def unique_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there, else ``stem-1.ext``, ``stem-2.ext``... (an existing entry of any kind,
    a dangling symbolic link included, is never reused). Gives up with ``FileExistsError`` after
    ``MAX_NAME_ATTEMPTS`` names."""
    path = Path(path)
    for n in range(MAX_NAME_ATTEMPTS):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(
        f"no free name for {path.name} in {path.parent}: {path.name} and {path.stem}-1{path.suffix} to "
        f"{path.stem}-{MAX_NAME_ATTEMPTS - 1}{path.suffix} are all taken; write into another folder")


def write_bytes_exclusive(path: str | os.PathLike, payload: bytes, rename: bool = True,
                          mode: int | None = None) -> Path:
    """Write to a temp file in the same folder, then hard-link it to a free name (atomic, no overwrite).

    Returns the path written: ``path`` itself, or ``stem-N.ext`` if anything is at ``path`` already. With
    ``rename=False`` an existing entry at ``path`` raises ``FileExistsError`` instead. ``mode`` defaults
    to ``0o666 & ~umask``.
    """
    path = Path(path)
    tmp = _temp_copy(path, payload, mode)
    try:
        for _ in range(MAX_NAME_ATTEMPTS):
            target = unique_path(path) if rename else path
            if not rename and os.path.lexists(target):
                raise FileExistsError(_taken(target))
            try:
                _claim(tmp, target)
                return target
            except FileExistsError:  # the name appeared since it was tested: try the next one
                if not rename:
                    raise FileExistsError(_taken(target)) from None
        raise FileExistsError(f"could not claim a free name for {path.name} in {path.parent}: every name tried "
                              "was taken by the time it was written (another process is writing the same names)")
    finally:
        _discard(tmp)


def replace_bytes_atomic(path: str | os.PathLike, payload: bytes, mode: int | None = None) -> Path:
    """Replace ``path`` atomically (for generated files such as caches, never for a user's outputs)."""
    path = Path(path)
    tmp = _temp_copy(path, payload, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """What ``open(path, "w")`` would create: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _temp_copy(path: Path, payload: bytes, mode: int | None = None) -> str:
    """``payload`` written and synced to a hidden temp file beside ``path``; returns its name."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"cannot write {path.name} into {parent}: {parent} exists and is not a folder"
                                 ) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            wanted = default_file_mode() if mode is None else mode
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), wanted)
            else:  # Windows: only the read-only bit exists
                os.chmod(tmp, wanted)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _claim(tmp: str, target: Path) -> None:
    """Give ``tmp``'s content the name ``target`` if nothing is there (``FileExistsError`` otherwise)."""
    try:
        os.link(tmp, target)  # atomic, and fails if target exists in any form: never overwrites
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS or isinstance(exc, FileNotFoundError):
            raise
    # No hard links here: claim the name with O_EXCL (fails if anything is there), then move the complete
    # temp file onto our own empty placeholder. Readers may see the empty file for that instant, never a
    # partial one, and nothing of the user's is replaced.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        _discard(str(target))
        raise


def _discard(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _taken(target: Path) -> str:
    try:
        info = os.lstat(target)
    except OSError:
        return f"{target} already exists; it is never overwritten"
    if stat.S_ISLNK(info.st_mode):
        kind = "a symbolic link" if os.path.exists(target) else "a symbolic link to nothing (dangling)"
    elif stat.S_ISDIR(info.st_mode):
        kind = "a folder"
    elif stat.S_ISREG(info.st_mode):
        kind = "a file"
    else:
        kind = "a special file (pipe, socket or device)"
    return f"{target} already exists ({kind}); it is never overwritten"
