"""Pictures downscaled to 0.4-0.8x and recompressed (what a feed or a chat app does): exact-ID reads over several IDs,
and how many a read on the true lattice would add (stop 37).

    .venv/bin/python benchmarks/probe_resized_recompressed.py [--ids 3] [--workers 2] [--image-set bench held-out]
        [--true-lattice]

Every benchmark and held-out image (bench_watermark.py) is marked with ``--ids`` random IDs (v3) and read after
eight resize-and-recompress attacks (JPEG 80-85, WebP 60) at scales none of the benchmark's attacks use.
``--true-lattice`` also reads every miss on the lattice the resize made (the tile's period times the scale per
axis): a miss that reads there is the lattice search's, not the mark's. Prints exact-ID reads per attack and the
pictures missed. One thread per worker; prints the CPU. Compare two commits by running the script of each.
"""

from __future__ import annotations

import one_thread  # noqa: F401  (first: one thread for numpy and OpenCV; tests.* importable)

# isort: split

import argparse
import sys
from collections.abc import Callable
from multiprocessing import get_context

import bench_watermark as bench
import numpy as np

from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.watermark import codec, embed
from comfyui_backdrop.runtime.watermark.lattice import Lattice
from comfyui_backdrop.runtime.watermark.pattern import PERIOD
from tests.fixtures.watermark_images import jpeg, resize, webp

Recompress = Callable[[np.ndarray], np.ndarray]
ATTACKS: dict[str, tuple[float, Recompress]] = {
    "scale 0.4 + JPEG 85": (0.4, lambda x: jpeg(x, 85)),
    "scale 0.45 + JPEG 80": (0.45, lambda x: jpeg(x, 80)),
    "scale 0.55 + JPEG 85": (0.55, lambda x: jpeg(x, 85)),
    "scale 0.6 + WebP 60": (0.6, lambda x: webp(x, 60)),
    "scale 0.65 + JPEG 80": (0.65, lambda x: jpeg(x, 80)),
    "scale 0.7 + WebP 60": (0.7, lambda x: webp(x, 60)),
    "scale 0.8 + JPEG 80": (0.8, lambda x: jpeg(x, 80)),
    "scale 0.45": (0.45, lambda x: x),
}
_TRUE_LATTICE = [False]


def _reads(job: tuple[int, str, np.ndarray, int]) -> tuple[str, dict[str, tuple[bool, bool]]]:
    """(label, per attack: (read blind, read on the true lattice)) for one picture and one ID."""
    index, label, image, seed = job
    value = int(np.random.default_rng([index, seed]).integers(0, 2**40))
    marked = embed(image, value, bench.KEY, version=3)
    out = {}
    for name, (scale, recompress) in ATTACKS.items():
        small = resize(marked, scale)
        attacked = recompress(small)
        hit = bench.reads_id(codec.analyse(attacked, bench.KEY), value)
        forced = hit
        if not hit and _TRUE_LATTICE[0]:
            sy, sx = small.shape[0] / marked.shape[0], small.shape[1] / marked.shape[1]
            true_lattices = [Lattice((p * sx, 0.0), (0.0, p * sy)) for p in (PERIOD, 2 * PERIOD)]  # either layer
            forced = any(bench.reads_id(codec.analyse(attacked, bench.KEY, lattices=[lattice]), value)
                         for lattice in true_lattices)
        out[name] = (hit, forced)
    return label, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-set", nargs="+", default=["bench", "held-out"], choices=list(bench.IMAGE_SETS))
    parser.add_argument("--true-lattice", action="store_true")
    args = parser.parse_args(argv)
    _TRUE_LATTICE[0] = args.true_lattice
    pictures = bench.labelled_images(tuple(args.image_set))
    print(f"CPU: {cpu_info().describe()}; one thread per worker; {len(pictures)} pictures x {args.ids} IDs")
    jobs = [(index, label, image, seed) for index, (label, image) in enumerate(pictures) for seed in range(args.ids)]
    with get_context("fork").Pool(args.workers) as pool:
        results = pool.map(_reads, jobs, chunksize=1)
    total = len(results)
    print("\n| attack | exact ID | on the true lattice | pictures missed |\n|---|---|---|---|")
    for name in ATTACKS:
        hits = sum(out[name][0] for _, out in results)
        forced = sum(out[name][1] for _, out in results)
        missed = sorted({label for label, out in results if not out[name][0]})
        print(f"| {name} | {hits}/{total} | {f'{forced}/{total}' if args.true_lattice else '-'} | "
              f"{', '.join(missed) or '-'} |")
    print(f"| all | {sum(o[0] for _, r in results for o in r.values())}/{total * len(ATTACKS)} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
