"""How a ``backdrop`` process allocates the large buffers of diffusion models (Linux, glibc).

Why: torch's CPU tensors come from ``malloc``. glibc serves a block over its mmap threshold (128 KiB at start,
raised by each freed block up to 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` on free, and
trims the heap top whenever more than twice the threshold is free. A UNet step allocates and frees hundreds of
1-30 MB activations, so the kernel maps, zero-fills and unmaps them again on every call: 3.2 million page
faults and 5 s of system time in four SD1.5 fp32 steps at 512 px on a 2-core EPYC.

What :func:`tune_allocator` changes, before the first model loads (the ``backdrop`` command calls it first): glibc
keeps blocks up to 32 MiB (its largest mmap threshold) on the heap from the start and keeps up to 128 MiB free at
the heap top (``mallopt``; exported as ``GLIBC_TUNABLES`` for the processes this one starts, though glibc 2.36
passes only the first entry on to theirs, so ``cli/ray_start.init_ray`` makes this every Ray worker's
setup hook), so a step's activations are reused
instead of being faulted in again.

Nothing changes where glibc is not the allocator (macOS, Windows, musl, or tcmalloc/jemalloc preloaded), where
the user set these thresholds already (theirs are kept), or with ``BACKDROP_ALLOCATOR=stock``. The ComfyUI nodes
never call it when they load: a node pack does not retune the process it is loaded into (docs/performance.md shows
the launch line that does). The one exception is the watermark codec, which is allocation-bound: its first
``embed`` or ``detect`` calls ``tune_allocator(export=False)`` (this process only, nothing exported), because in
a fresh process stock glibc trims and re-faults its heap on every call (embedding at 512 px took up to 1.7x as long).
After a diffusion run glibc has raised its own thresholds to about these values, so in ComfyUI that call changes
little. What was measured, and the stronger settings that were not kept (no mmap at all, transparent huge pages,
tcmalloc), is in docs/performance.md; ``benchmarks/probe_allocator.py`` measures it in fresh processes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InvalidInputError

POLICY_VARIABLE = "BACKDROP_ALLOCATOR"  # "tuned" (default) or "stock"
POLICIES = ("tuned", "stock")
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 128 << 20
GLIBC_TUNABLES = "GLIBC_TUNABLES"
MMAP_NAME, TRIM_NAME = "glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"
THRESHOLDS = {MMAP_NAME: MMAP_THRESHOLD, TRIM_NAME: TRIM_THRESHOLD}
_MALLOPT = {MMAP_NAME: -3, TRIM_NAME: -1}  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD in <malloc.h>
OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


@dataclass(frozen=True)
class AllocatorState:
    """What this process's allocator does with large buffers, for reports (``backdrop bench``)."""

    policy: str  # "tuned", "stock", or why nothing was tuned
    malloc: str  # "glibc 2.36", "tcmalloc (preloaded)", "not glibc"
    mmap_threshold: int | None  # bytes, when tuned (None: the user's GLIBC_TUNABLES value could not be read)
    trim_threshold: int | None

    def describe(self) -> str:
        """One line: ``glibc 2.36, tuned (mmap threshold 32 MiB, trim 128 MiB)``."""
        if not self.policy.startswith("tuned"):
            return f"{self.malloc}, {self.policy}"
        return (f"{self.malloc}, {self.policy} (mmap threshold {_mib(self.mmap_threshold)}, "
                f"trim {_mib(self.trim_threshold)})")

    def to_dict(self) -> dict:
        return asdict(self)


def _mib(value: int | None) -> str:
    return "as set in GLIBC_TUNABLES" if value is None else f"{value / 2**20:g} MiB"


_applied: AllocatorState | None = None
_unexported: dict[str, int] = {}  # thresholds set here but not yet in GLIBC_TUNABLES (an ``export=False`` call)


def tune_allocator(policy: str | None = None, *, export: bool = True) -> AllocatorState:
    """Apply the allocator settings above to this process and, with ``export``, to the ones it starts
    (idempotent); returns what holds now. ``policy`` defaults to ``$BACKDROP_ALLOCATOR`` or ``tuned``; another
    value is InvalidInputError. ``export=False`` (a library call) leaves ``os.environ`` alone."""
    global _applied
    policy = policy or os.environ.get(POLICY_VARIABLE) or "tuned"
    if policy not in POLICIES:
        raise InvalidInputError(f"{POLICY_VARIABLE}={policy!r}: use one of {', '.join(POLICIES)}")
    if _applied is not None:
        if export and _unexported:
            _export_tunables(_unexported)
            _unexported.clear()
        return _applied
    libc = _glibc()
    other = _preloaded_allocator()
    reason = ("stock" if policy == "stock" else f"not tuned: {other} is preloaded" if other
              else "not tuned: malloc is not glibc's" if libc is None else "")
    if reason:
        _applied = AllocatorState(reason, _malloc_name(libc, other), None, None)
        return _applied
    user = _user_tunables()  # glibc applied these when the process started: they stay
    ours = {name: value for name, value in THRESHOLDS.items() if name not in user}
    if any(libc.mallopt(_MALLOPT[name], value) != 1 for name, value in ours.items()):
        _applied = AllocatorState("not tuned: mallopt refused the thresholds", _malloc_name(libc, None), None, None)
        return _applied
    if export:
        _export_tunables(ours)
    else:
        _unexported.update(ours)
    chosen = {name: _as_int(user[name]) if name in user else value for name, value in THRESHOLDS.items()}
    _applied = AllocatorState("tuned", _malloc_name(libc, None), chosen[MMAP_NAME], chosen[TRIM_NAME])
    return _applied


def allocator_state() -> AllocatorState:
    """What :func:`tune_allocator` did in this process, or the stock state when it was not called."""
    if _applied is not None:
        return _applied
    libc, other = _glibc(), _preloaded_allocator()
    return AllocatorState("stock (not tuned in this process)", _malloc_name(libc, other), None, None)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError):  # musl has no gnu_get_libc_version
        return None


def _malloc_name(libc: ctypes.CDLL | None, other: str | None) -> str:
    if other:
        return f"{other} (preloaded)"
    return f"glibc {libc.gnu_get_libc_version().decode()}" if libc is not None else "not glibc"


def _preloaded_allocator() -> str | None:
    """tcmalloc, jemalloc or mimalloc mapped into this process (LD_PRELOAD or linked), if any."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = os.environ.get("LD_PRELOAD", "")
    return next((name for name in OTHER_ALLOCATORS if f"lib{name}" in maps), None)


def _user_tunables() -> dict[str, str]:
    """The user's own glibc malloc thresholds in GLIBC_TUNABLES (name -> value as written)."""
    parts = (part.split("=", 1) for part in os.environ.get(GLIBC_TUNABLES, "").split(":") if "=" in part)
    return {name: value for name, value in parts if name in THRESHOLDS}


def _as_int(value: str) -> int | None:
    try:
        return int(value, 0)
    except ValueError:
        return None


def _export_tunables(ours: dict[str, int]) -> None:
    """Processes started from this one (Ray workers, subprocesses) get the same glibc thresholds at start."""
    parts = [p for p in os.environ.get(GLIBC_TUNABLES, "").split(":") if p]
    parts += [f"{name}={value}" for name, value in ours.items()]
    if parts:
        os.environ[GLIBC_TUNABLES] = ":".join(parts)
