"""Probe for issue 19: what the square-lattice hypothesis (``lattice.square_lattice``, stop 31) costs a detection.

    .venv/bin/python benchmarks/probe_square_lattice.py [--side 512] [--rounds 5]

``detect`` on every other benchmark and held-out image (25 pictures resized to ``--side`` px, none marked, so
every call runs every hypothesis), with the square lattice and with it dropped from the hypotheses, interleaved
over ``--rounds`` rounds in one process on one thread; prints the median per megapixel of each and the square
lattice's own scan. (Dropped, its scan still runs: the difference is the fold and alignment of one more
hypothesis; the scan is timed on its own.) Not collected by pytest.
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

from comfyui_backdrop.runtime.watermark import codec, lattice  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    images = bench_watermark.unmarked_pictures(args.side)
    estimate, scan = lattice.estimate_lattices, [0.0]

    def without_square(*a, **k):
        return [h for h in estimate(*a, **k) if not (h.v1[1] == 0.0 and h.v2[0] == 0.0 and h != lattice.IDENTITY)]

    lattice.square_lattice = bench_watermark.accumulating(lattice.square_lattice, scan)
    variants = {"with": estimate, "without": without_square}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(args.rounds):
        for name in list(variants)[index % 2:] + list(variants)[:index % 2]:
            codec.estimate_lattices = variants[name]
            start = time.perf_counter()
            for image in images:
                codec.detect(image, bench_watermark.KEY)
            times[name].append(time.perf_counter() - start)
    megapixels = len(images) * args.side**2 / 1e6
    calls = 2 * args.rounds * len(images)
    print(f"{len(images)} unmarked {args.side} px pictures, {args.rounds} rounds: " + ", ".join(
        f"{name} {1e3 * statistics.median(t) / megapixels:.1f} ms/MP" for name, t in times.items())
        + f"; the square lattice's scan {1e3 * scan[0] / calls:.2f} ms a picture")
    return 0


if __name__ == "__main__":
    sys.exit(main())
