"""What detection pays for a picture size it has not seen yet, against the same picture read again.

A battery of unseen images has as many sizes as images, and the detector keeps per-size geometry (the lag map's
remap coordinates, the overlap normalisation, FFT plans). Each picture below has a size new to the process; it is
read twice, and the first read's extra time is the per-size set-up:
    .venv/bin/python benchmarks/probe_watermark_sizes.py --side 512 --count 24

One thread (as bench_watermark.py), unmarked pictures (the detector's longest path), six scikit-image photos
resized to ``side + 2i + 1`` x ``side + 6i + 3`` px.
"""

from __future__ import annotations

import one_thread  # noqa: F401  (first: one thread for numpy and OpenCV; tests.* importable)

# isort: split

import argparse
import statistics
import sys
import time

import cv2

from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.watermark import detect
from tests.fixtures.watermark_images import SPEED_PHOTOS, skimage_photo, unseen_sizes

KEY = b"probe-watermark-sizes-key-000000"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=512, help="pictures are about this many px a side")
    parser.add_argument("--count", type=int, default=24, help="pictures, each of a size new to the process")
    args = parser.parse_args(argv)
    photos = [skimage_photo(name) for name in SPEED_PHOTOS]
    detect(cv2.resize(photos[0], (args.side, args.side)), KEY)  # imports and per-key set-up, not per size
    first, again, per_mp = [], [], []
    for i, (w, h) in enumerate(unseen_sizes(args.side, args.count), start=1):
        picture = cv2.resize(photos[i % len(photos)], (w, h), interpolation=cv2.INTER_AREA)
        start = time.perf_counter()
        detect(picture, KEY)
        first.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        detect(picture, KEY)
        again.append((time.perf_counter() - start) * 1000)
        per_mp.append(first[-1] / (w * h / 1e6))
    extra = [a - b for a, b in zip(first, again, strict=True)]
    print(f"CPU: {cpu_info().describe()}; one thread; {args.count} unmarked pictures near {args.side} px")
    print(f"first read of a new size: median {statistics.median(first):.1f} ms "
          f"({statistics.median(per_mp):.0f} ms/MP); read again: {statistics.median(again):.1f} ms; "
          f"per-size set-up: median {statistics.median(extra):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
