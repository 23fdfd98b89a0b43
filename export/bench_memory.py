"""The memory guard of ``backdrop bench``: a row whose setup would not fit is skipped, saying why, before the
kernel's out-of-memory killer ends the whole run without a report.

Setting a row up (export, conversion, compilation and one run) needs memory on top of what the earlier rows
hold, and the interleaved timing keeps every row loaded. The default CPU run of the SD1.5 UNet (every backend x
fp32, bf16, int8) would need about 40 GiB; on a 24 GiB machine it used to die in its last setups. Each row's need
is estimated from setup peaks measured at stop 29 and, for w8a8, stop 31 (docs/performance.md: SD1.5 UNet at
512 px, batch 2, the backend's own peak over what was loaded, as a multiple of the UNet's fp32 weight bytes) plus
a margin for activations, and compared with what is left: the machine's available memory, or less under ``--memory``.
"""

from __future__ import annotations

from pathlib import Path

GIB = 2**30
# own setup peak / fp32 weight bytes (SD1.5: 3.44 GB), rounded up; "*": every other precision of the backend
SETUP_PER_WEIGHT = {
    ("eager", "fp32"): 0.15, ("eager", "*"): 1.0,
    ("compile", "*"): 0.3,
    ("compile-frozen", "fp32"): 1.8, ("compile-frozen", "*"): 0.8,
    ("ort-plain", "*"): 1.7,
    ("ort", "fp32"): 2.1, ("ort", "*"): 1.1,
    ("openvino", "fp32"): 2.9, ("openvino", "int8"): 0.7, ("openvino", "w8a8"): 2.4, ("openvino", "*"): 1.3,
    ("trt", "*"): 1.0,
}
MARGIN = GIB // 4  # activations and allocator slack beyond the weight-proportional part


def setup_need(backend: str, precision: str, weight_bytes: int) -> int:
    """Bytes a row is expected to add while it is set up, for a UNet of ``weight_bytes`` fp32 weights."""
    factor = SETUP_PER_WEIGHT.get((backend, precision), SETUP_PER_WEIGHT.get((backend, "*"), 3.0))
    return int(factor * weight_bytes) + MARGIN


def proc_bytes(path: str, name: str) -> int | None:
    """A ``name: N kB`` field of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes, or None (off
    Linux, or no such field)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes() -> int | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable``), or None off Linux."""
    return proc_bytes("/proc/meminfo", "MemAvailable")


class MemoryGuard:
    """What a bench run may still use: the machine's available memory, capped by ``budget`` bytes counted from
    the process's resident set when the guard was made (``--memory``)."""

    def __init__(self, budget: int | None, rss: int | None) -> None:
        self.budget, self.start = budget, rss

    def left(self, rss: int | None) -> int | None:
        """Bytes left now, given the process's resident set ``rss`` (None: no limit is known)."""
        limits = [available_bytes()]
        if self.budget is not None and self.start is not None and rss is not None:
            limits.append(self.budget - (rss - self.start))
        known = [limit for limit in limits if limit is not None]
        return min(known) if known else None

    def skip_reason(self, backend: str, precision: str, weight_bytes: int, rss: int | None) -> str | None:
        """Why this row is not set up (it would not fit), or None."""
        need, left = setup_need(backend, precision, weight_bytes), self.left(rss)
        if left is None or need <= left:
            return None
        return (f"not set up: it would need about {need / GIB:.1f} GiB (setup peaks measured on SD1.5, "
                f"docs/performance.md) and {max(left, 0) / GIB:.1f} GiB is left with the earlier rows loaded; "
                f"bench it in a run of its own (--backends {backend} --precisions {precision})")
