"""Probe for issue 19: what the detector's second look (``codec._second_look``) costs, and what it reads.

    .venv/bin/python benchmarks/probe_second_look.py speed [--side 512] [--rounds 5]
    .venv/bin/python benchmarks/probe_second_look.py off --versions 3 --no-baselines --workers 2 \
        --skip speed averaging fp [--attack-set held-out] [--image-set held-out] [--out FILE]

``speed``: ``detect`` on every other benchmark and held-out image (25 pictures, resized to ``--side`` px, none
marked, so every call reaches the second look), with and without the second look, interleaved over ``--rounds``
rounds in one process on one thread; prints the median per picture and per megapixel of each, and the second
look's own time. ``off``: ``bench_watermark.py`` (the same arguments) with the second look switched off (no
neighbours read; the false-positive bound still counts them, so this is the reads the neighbours add, not the
codec before stop 30). Measured at stop 30 (docs/watermark.md): 154 -> 168 ms/MP at 512 px on the AVX-512 EPYC.
Not collected by pytest.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_watermark  # noqa: E402

from comfyui_backdrop.runtime.watermark import codec  # noqa: E402
from comfyui_backdrop.runtime.watermark.lattice import neighbour_stretches  # noqa: E402


def _no_neighbours() -> list[tuple[float, float]]:
    return []


def speed(side: int, rounds: int) -> None:
    """Interleaved timing of ``detect`` on unmarked pictures, with and without the second look."""
    cv2.setNumThreads(1)
    images = bench_watermark.unmarked_pictures(side)
    spent = [0.0]
    second_look = codec._second_look
    codec._second_look = bench_watermark.accumulating(second_look, spent)
    variants = {"without": _no_neighbours, "with": neighbour_stretches}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for image in images:  # warm-up
        codec.detect(image, bench_watermark.KEY)
    spent[0] = 0.0
    for _ in range(rounds):
        for name, stretches in variants.items():
            codec.neighbour_stretches = stretches
            start = time.perf_counter()
            for image in images:
                codec.detect(image, bench_watermark.KEY)
            times[name].append((time.perf_counter() - start) / len(images))
    codec.neighbour_stretches, codec._second_look = neighbour_stretches, second_look
    megapixels = side * side / 1e6
    print(f"{len(images)} unmarked pictures at {side} x {side} px, {rounds} interleaved rounds, one thread")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name} the second look: {median * 1e3:.1f} ms a picture, {median * 1e3 / megapixels:.0f} ms/MP")
    print(f"  the second look itself: {spent[0] / (rounds * len(images)) * 1e3:.2f} ms a picture")


def main(argv: list[str]) -> int:
    if argv[:1] == ["speed"]:
        parser = argparse.ArgumentParser(description="the second look's cost on unmarked pictures")
        parser.add_argument("--side", type=int, default=512)
        parser.add_argument("--rounds", type=int, default=5)
        args = parser.parse_args(argv[1:])
        speed(args.side, args.rounds)
        return 0
    if argv[:1] == ["off"]:
        codec.neighbour_stretches = _no_neighbours
        return bench_watermark.main(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
