"""Composites: a square of a marked photo pasted, in place, into another photo; is the mark found, and is the map right?

    .venv/bin/python benchmarks/probe_splices.py --side 1024 --fractions 0.25 0.1 0.05 [--jpeg 80]

Twelve scikit-image photos resized to ``side`` px; each is marked (v3, its own ID) and a square holding ``fraction``
of the picture, at a seeded position, is pasted into the photo five places further on the list. Each composite is
read by ``detect`` alone (the whole-image read) and with ``localise=True`` (whole image, then the region search);
for a found mark, the presence mask (> 0.5) is compared with the pasted square: IoU, and the share of the
unmarked rest marked. One thread; prints the CPU.
"""

from __future__ import annotations

import one_thread  # noqa: F401  (first: one thread for numpy and OpenCV; tests.* importable)

# isort: split

import argparse
import statistics
import sys
import time

import cv2
import numpy as np

from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.watermark import detect, embed
from tests.fixtures.watermark_images import jpeg, skimage_photo

KEY = b"probe-splices-key-00000000000000"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle", "retina",
          "hubble_deep_field", "camera", "brick", "grass", "coins")


def composites(side: int, fraction: float, quality: int, seed: int = 1):
    """(composite, pasted-square mask, payload) for every photo."""
    photos = [cv2.resize(skimage_photo(n), (side, side), interpolation=cv2.INTER_AREA) for n in PHOTOS]
    rng = np.random.default_rng(seed)
    for index, photo in enumerate(photos):
        payload = int(rng.integers(0, 2**40))
        marked = embed(photo, payload, KEY)
        square = int(side * fraction**0.5)
        top, left = (int(v) for v in rng.integers(0, side - square, size=2))
        out = photos[(index + 5) % len(photos)].copy()
        out[top:top + square, left:left + square] = marked[top:top + square, left:left + square]
        truth = np.zeros((side, side), bool)
        truth[top:top + square, left:left + square] = True
        yield (jpeg(out, quality) if quality else out), truth, payload


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.1, 0.05])
    parser.add_argument("--jpeg", type=int, default=0, help="recompress each composite at this quality (0: PNG)")
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_info().describe()}; one thread; {len(PHOTOS)} composites of {args.side} px per row"
          f"{f', JPEG {args.jpeg}' if args.jpeg else ''}")
    print("| marked square | whole-image read | with the region search | IoU median (min) | rest marked, max | "
          "localise ms, median |")
    print("|---|---|---|---|---|---|")
    for fraction in args.fractions:
        whole = regional = 0
        ious, stray, times = [], [], []
        for image, truth, payload in composites(args.side, fraction, args.jpeg):
            whole += detect(image, KEY).payload == payload
            start = time.perf_counter()
            result = detect(image, KEY, localise=True)
            times.append(1e3 * (time.perf_counter() - start))
            if result.payload != payload:
                continue
            regional += 1
            mask = result.presence.mask() > 0.5
            ious.append((mask & truth).sum() / max(1, (mask | truth).sum()))
            stray.append((mask & ~truth).sum() / (~truth).sum())
        iou = f"{statistics.median(ious):.2f} ({min(ious):.2f})" if ious else "-"
        print(f"| {fraction:.0%} | {whole}/{len(PHOTOS)} | {regional}/{len(PHOTOS)} | {iou} | "
              f"{max(stray) if stray else float('nan'):.3f} | {statistics.median(times):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
