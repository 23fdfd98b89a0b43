"""Benchmark harness: interleaved timing rounds, parity against a reference, peak memory, reports.

Shared machines are noisy, so candidates run interleaved: every round runs each candidate once (the
order rotates each round), warm-up rounds are excluded, and speed-ups are the median of per-round
ratios against the baseline measured in the same round, which cancels slow drifts in machine load.
Parity is ``max |out - ref|`` and ``max |out - ref| / max |ref|`` (relative to the reference's range,
so it stays meaningful where the reference crosses zero).

Memory is measured in the bench process, from the kernel's resident-set high-water mark (Linux
``VmHWM``, reset through ``/proc/self/clear_refs`` before each probe), not in a subprocess:

- ``setup_peak_bytes``: the process peak while the backend was set up (export, conversion, compile)
  and ran once; ``setup_extra_bytes`` is that peak minus the RSS just before its setup, i.e. what
  this backend needed on top of what was already loaded (its "own" peak);
- ``setup_anon_bytes``: the peak of the process's anonymous memory (``RssAnon``, sampled every 10 ms) over its
  value before the setup: the same need without file-backed pages, which the kernel can drop under pressure
  (OpenVINO maps the IR's weights file: opening the SD1.5 fp32 engine touched 3.9 GiB of it);
- ``peak_rss_bytes`` / ``step_extra_bytes``: the same during one timed call;
- on CUDA, the device memory in use.

Reports are JSON, a markdown table and a PNG bar chart drawn with PIL.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..runtime.files import write_bytes_exclusive
from .memory_need import proc_bytes


@dataclass
class Candidate:
    """One way to compute the same thing."""

    name: str
    run: Callable[[], Any]
    setup_s: float = 0.0
    notes: str = ""
    backend: str = ""
    precision: str = ""
    setup_peak_bytes: int | None = None
    setup_extra_bytes: int | None = None
    setup_anon_bytes: int | None = None


@dataclass
class Measurement:
    name: str
    times_s: list[float]
    p50_s: float
    p90_s: float
    speedup: float | None  # median of per-round baseline/candidate ratios
    max_abs_error: float | None
    max_rel_error: float | None
    peak_rss_bytes: int | None
    step_extra_bytes: int | None
    cuda_bytes: int | None
    setup_s: float
    notes: str = ""
    backend: str = ""
    precision: str = ""
    setup_peak_bytes: int | None = None
    setup_extra_bytes: int | None = None
    setup_anon_bytes: int | None = None
    stages: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage, one run


@dataclass
class Skipped:
    """A backend x precision row that was not run, and why (an unsupported unit, a missing package...)."""

    name: str
    reason: str


@dataclass
class BenchReport:
    title: str
    settings: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    sections: dict[str, list[Measurement]] = field(default_factory=dict)
    skipped: dict[str, list[Skipped]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "settings": self.settings,
                "measurements": [asdict(m) for m in self.measurements],
                "sections": {k: [asdict(m) for m in v] for k, v in self.sections.items()},
                "skipped": {k: [asdict(m) for m in v] for k, v in self.skipped.items()}, "notes": self.notes}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def to_numpy(value: Any) -> Any:
    import numpy as np

    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def parity(reference: Any, output: Any) -> tuple[float, float]:
    """(max absolute error, max absolute error / max |reference|)."""
    import numpy as np

    ref, out = to_numpy(reference), to_numpy(output)
    if ref.shape != out.shape:
        return math.inf, math.inf
    err = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
    scale = float(np.abs(ref).max())
    return err, err / scale if scale else err


class MemoryProbe:
    """Resident-set high-water mark around one call (Linux), plus CUDA memory in use."""

    def __init__(self) -> None:
        self.resettable = self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status(field_name: str) -> int | None:
        return proc_bytes("/proc/self/status", field_name)

    def rss(self) -> int | None:
        return self._status("VmRSS")

    def measure(self, fn: Callable[[], Any]) -> Probed:
        """``fn()`` and the memory it took (``Probed``)."""
        before = self._status("VmRSS")
        if self.resettable:
            self._reset()
        with AnonymousPeak() as anonymous:
            result = fn()
        peak = self._status("VmHWM") if self.resettable else None
        return Probed(result, peak, (peak - before) if peak is not None and before is not None else None,
                      _cuda_used(), anonymous.extra)


class Probed(NamedTuple):
    """What ``MemoryProbe.measure`` saw: the call's result, the peak RSS during it, that peak minus the RSS before,
    CUDA bytes in use after, and the peak of anonymous memory over its value before (None off Linux)."""

    result: Any
    peak: int | None
    extra: int | None
    cuda: int | None
    anonymous: int | None


class AnonymousPeak:
    """The peak of the process's anonymous resident memory (``RssAnon``) while the block runs, over its value
    before, sampled every 10 ms (``extra``; None off Linux). File-backed pages (an engine file a runtime maps,
    libraries) are left out: the kernel can drop them under pressure, so they are not what runs a machine out of
    memory."""

    def __init__(self) -> None:
        self.extra: int | None = None

    def __enter__(self) -> AnonymousPeak:
        self._before = self._peak = _anonymous()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._before is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self._peak = max(self._peak, _anonymous() or 0)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._before is not None:
            self._thread.join()
            self.extra = max(self._peak, _anonymous() or 0) - self._before


def _anonymous() -> int | None:
    return proc_bytes("/proc/self/status", "RssAnon")


def _cuda_used() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def interleaved(candidates: Sequence[Candidate], rounds: int, warmup: int = 1, sync: Callable[[], None] | None = None,
                on_round: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call for each candidate, ``rounds`` interleaved rounds after ``warmup`` untimed ones."""
    for _ in range(warmup):
        for candidate in candidates:
            candidate.run()
            if sync:
                sync()
    times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for r in range(rounds):
        order = list(candidates[r % len(candidates):]) + list(candidates[: r % len(candidates)])
        this_round = {}
        for candidate in order:
            if sync:
                sync()
            start = time.perf_counter()
            candidate.run()
            if sync:
                sync()
            this_round[candidate.name] = time.perf_counter() - start
            times[candidate.name].append(this_round[candidate.name])
        if on_round:
            on_round(r, this_round)
    return times


def speedups(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of baseline time / candidate time (paired within each round)."""
    base = times[baseline]
    return {name: statistics.median(b / t for b, t in zip(base, values, strict=True) if t > 0)
            for name, values in times.items()}


def measure(candidates: Sequence[Candidate], reference: Any, rounds: int, warmup: int = 1, baseline: str | None = None,
            sync: Callable[[], None] | None = None,
            on_round: Callable[[int, dict[str, float]], None] | None = None,
            probe_calls: bool = True) -> list[Measurement]:
    """Parity and memory from one extra call each (``probe_calls``; it also warms up), then interleaved timing.

    Without probe calls the caller has its own parity (say, from each backend's setup run) and fills it in.
    """
    probe = MemoryProbe()
    checks = {}
    for candidate in candidates:
        if not probe_calls:
            checks[candidate.name] = ((None, None), None, None, _cuda_used())
            continue
        probed = probe.measure(candidate.run)
        err = parity(reference, probed.result) if reference is not None else (None, None)
        checks[candidate.name] = (err, probed.peak, probed.extra, probed.cuda)
        del probed
    times = interleaved(candidates, rounds, warmup=max(0, warmup - 1), sync=sync, on_round=on_round)
    ratios = speedups(times, baseline or candidates[0].name)
    results = []
    for candidate in candidates:
        (abs_err, rel_err), peak, extra, cuda = checks[candidate.name]
        values = times[candidate.name]
        results.append(Measurement(name=candidate.name, times_s=values, p50_s=percentile(values, 50),
                                   p90_s=percentile(values, 90), speedup=ratios[candidate.name],
                                   max_abs_error=abs_err, max_rel_error=rel_err, peak_rss_bytes=peak,
                                   step_extra_bytes=extra, cuda_bytes=cuda, setup_s=candidate.setup_s,
                                   notes=candidate.notes, backend=candidate.backend, precision=candidate.precision,
                                   setup_peak_bytes=candidate.setup_peak_bytes,
                                   setup_extra_bytes=candidate.setup_extra_bytes,
                                   setup_anon_bytes=candidate.setup_anon_bytes))
    return results


# ------------------------------------------------------------------------------------------------ reports

def markdown_table(measurements: Sequence[Measurement], baseline: str, skipped: Sequence[Skipped] = ()) -> str:
    """One row per backend x precision; memory columns: process peak during setup + first run, the part of it
    this backend added (peak minus RSS before its setup), and that part without file-backed pages (anonymous)."""
    head = (f"| backend | p50 s | p90 s | speed-up vs {baseline} | max rel err | peak RSS GiB (setup+run) "
            "| own peak GiB | own anonymous GiB | step peak GiB | GPU mem GiB | setup s | notes |\n"
            + "|---" + "|---:" * 10 + "|---|")
    rows = [head]
    for m in measurements:
        rows.append(f"| {m.name} | {m.p50_s:.4g} | {m.p90_s:.4g} | {_fmt(m.speedup, '.2f')}x | "
                    f"{_fmt(m.max_rel_error, '.2e')} | {_fmt(_gib(m.setup_peak_bytes), '.2f')} | "
                    f"{_fmt(_gib(m.setup_extra_bytes), '.2f')} | {_fmt(_gib(m.setup_anon_bytes), '.2f')} | "
                    f"{_fmt(_gib(m.peak_rss_bytes), '.2f')} | "
                    f"{_fmt(_gib(m.cuda_bytes), '.2f')} | {m.setup_s:.1f} | {m.notes} |")
    for s in skipped:
        rows.append(f"| {s.name} | — | — | — | — | — | — | — | — | — | — | skipped: {s.reason} |")
    return "\n".join(rows) + "\n"


def stage_table(measurements: Sequence[Measurement]) -> str:
    """Seconds per pipeline stage (one run) for each row that recorded stages."""
    rows = [m for m in measurements if m.stages]
    if not rows:
        return ""
    stages = list(dict.fromkeys(k for m in rows for k in m.stages))
    head = "| pipeline | total s | " + " | ".join(stages) + " |\n|---|---:|" + "---:|" * len(stages)
    lines = [head]
    for m in rows:
        total = m.times_s[0] if m.times_s else math.nan
        cells = [f"{m.stages[s]:.2f} ({100 * m.stages[s] / total:.0f}%)" if s in m.stages and total else "—"
                 for s in stages]
        lines.append(f"| {m.name} | {total:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _gib(value: int | None) -> float | None:
    return None if value is None else value / (1 << 30)


def draw_plot(sections: dict[str, list[Measurement]], title: str, path: Path) -> Path:
    """Horizontal bars of p50 (with a p90 tick) per backend, one panel per section, drawn with PIL."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    bar_h, gap, left, right, top = 22, 8, 230, 140, 48
    rows = sum(len(v) + 2 for v in sections.values())
    width, height = 900, top + rows * (bar_h + gap) + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=font)
    draw.text((10, 24), "seconds per call: bar = p50, tick = p90; label = p50 and speed-up vs the baseline",
              fill=(90, 90, 90), font=font)
    colors = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193)]
    y = top
    for section, measurements in sections.items():
        draw.text((10, y), section, fill="black", font=font)
        y += bar_h + gap
        longest = max((m.p90_s for m in measurements if math.isfinite(m.p90_s)), default=1.0) or 1.0
        scale = (width - left - right) / longest
        for i, m in enumerate(measurements):
            draw.text((10, y + 5), m.name[:34], fill="black", font=font)
            length = max(1, int(m.p50_s * scale)) if math.isfinite(m.p50_s) else 1
            draw.rectangle([left, y, left + length, y + bar_h], fill=colors[i % len(colors)])
            end = left + length
            if math.isfinite(m.p90_s):
                x90 = left + int(m.p90_s * scale)
                draw.line([x90, y + 3, x90, y + bar_h - 3], fill="black", width=2)
                end = max(end, x90)
            label = f"{m.p50_s:.3g}s" + (f"  {m.speedup:.2f}x" if m.speedup else "")
            draw.text((end + 6, y + 5), label, fill="black", font=font)
            y += bar_h + gap
        y += gap
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes_exclusive(path, buffer.getvalue())


def write_report(report: BenchReport, out_dir: str | Path, stem: str = "bench") -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir`` (existing files are kept: ``-N`` added)."""
    out_dir = Path(out_dir)
    sections = report.sections or {"results": report.measurements}
    baseline = report.settings.get("baseline", "baseline")
    markdown = [f"# {report.title}\n", "```", json.dumps(report.settings, indent=1, default=str), "```\n"]
    for name, measurements in sections.items():
        markdown += [f"## {name}\n", markdown_table(measurements, baseline, report.skipped.get(name, ()))]
        stages = stage_table(measurements)
        if stages:
            markdown += [stages]
    markdown += [f"- {note}" for note in report.notes]
    paths = {
        "json": write_bytes_exclusive(out_dir / f"{stem}.json",
                                      json.dumps(report.to_dict(), indent=1, default=str).encode()),
        "markdown": write_bytes_exclusive(out_dir / f"{stem}.md", "\n".join(markdown).encode()),
    }
    paths["plot"] = draw_plot(sections, report.title, out_dir / f"{stem}.png")
    return paths
