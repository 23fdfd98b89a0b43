"""The memory guard of ``backdrop bench``: a row whose setup would not fit is skipped, saying why, before the
kernel's out-of-memory killer ends the whole run without a report.

Setting a row up (export, conversion, compilation and one run) needs memory on top of what the earlier rows
hold, and the interleaved timing keeps every row loaded. The default CPU run of the SD1.5 UNet (every backend x
fp32, bf16, int8) would need about 40 GiB; on a 24 GiB machine it used to die in its last setups. Each row's need
is estimated from setup peaks measured at stop 29 and, for w8a8, stop 31 (docs/performance.md: SD1.5 UNet at
512 px, batch 2, the backend's own peak over what was loaded, as a multiple of the UNet's fp32 weight bytes) plus
a margin for activations (export/memory_need.py, which ``export_engine``'s own check shares), and compared with what
is left: the machine's available memory, or less under ``--memory``.
"""

from __future__ import annotations

from .memory_need import GIB, available_bytes, setup_need


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
