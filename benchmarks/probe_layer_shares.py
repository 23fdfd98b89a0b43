"""Busy pictures of 0.6-1 MP: the share of the mark their 64 px layer takes, read over several IDs (stop 37).

    .venv/bin/python benchmarks/probe_layer_shares.py [--shares 0.2 0.3 1.0] [--ids 10] [--workers 2]

The pictures: every benchmark and held-out image (bench_watermark.py) that is busy and from ``carrier.LARGE_SIDE``
up to 1 MP (``carrier.MEGAPIXEL_SIDE``), i.e. those whose carrier the share decides; nine photos. Each is marked
with ``--ids`` random IDs under each share (``((128, 1 - share), (64, share))``; 1.0: the 64 px layer alone) and
read after crops and resize-and-recompress attacks. Reads depend on the ID (its carrier's variant, transform and
shift), which is why one ID per picture, as in the benchmark, moves by a read or two; this counts them over many.
Prints, per attack, the exact-ID reads under each share. One thread per worker; prints the CPU.
"""

from __future__ import annotations

import one_thread  # noqa: F401  (first: one thread for numpy and OpenCV; tests.* importable)

# isort: split

import argparse
import sys
from multiprocessing import get_context

import bench_watermark as bench
import numpy as np

from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.watermark import carrier, codec, embed
from comfyui_backdrop.runtime.watermark.perceptual import luma
from tests.fixtures.watermark_images import jpeg, resize, webp

ATTACKS = {name: bench.ATTACKS[name] for name in (
    "crop 10% area", "crop 25% + scale 0.5 + JPEG 60", "crop 25% + scale 0.8 + JPEG 70", "scale 0.33", "scale 0.25",
    "rotate 90", "JPEG q20 4:2:0", "WebP q40", "scale 0.5 + JPEG 50", "mirror + scale 0.33 + JPEG 75",
    "scale 0.25 + JPEG 50")}
ATTACKS.update({name: bench.HELD_OUT_ATTACKS[name] for name in (
    "crop 12% (corner 0.8, 0.15)", "crop 15% + JPEG 60", "crop 30% + scale 0.6 + JPEG 55",
    "rotate 90 + scale 0.6 + WebP 60")})
ATTACKS.update({
    "scale 0.45 + JPEG 80": lambda x: jpeg(resize(x, 0.45), 80),
    "scale 0.6 + WebP 60": lambda x: webp(resize(x, 0.6), 60),
    "scale 0.7 + WebP 60": lambda x: webp(resize(x, 0.7), 60),
})
_RULE = carrier.layers_for


def _mid_size_busy(y: np.ndarray) -> bool:
    """Busy, and from LARGE_SIDE up to 1 MP: the pictures whose carrier the share decides."""
    side = (y.shape[0] * y.shape[1]) ** 0.5
    return carrier.LARGE_SIDE <= side < carrier.MEGAPIXEL_SIDE and carrier.flat_fraction(y) < carrier.FLAT_SHARE


def mid_size_busy_pictures() -> list[tuple[str, np.ndarray]]:
    """(label, RGB) of the benchmark and held-out pictures that are busy and from LARGE_SIDE up to 1 MP."""
    return [(label, image) for label, image in bench.labelled_images() if _mid_size_busy(luma(image))]


def _layers_with(share: float):
    """``carrier.layers_for`` with the 64 px layer taking ``share`` on the pictures of ``_mid_size_busy``."""
    def layers(y: np.ndarray) -> tuple[tuple[int, float], ...]:
        if not _mid_size_busy(y):
            return _RULE(y)
        return ((carrier.PERIOD, 1.0),) if share >= 1.0 else (
            (2 * carrier.PERIOD, 1.0 - share), (carrier.PERIOD, share))
    return layers


def _reads(job: tuple[int, np.ndarray, float, int]) -> tuple[float, dict[str, bool]]:
    """(share, found per attack) for picture ``index`` marked with its ID number ``seed`` under ``share``."""
    index, image, share, seed = job
    carrier.layers_for = _layers_with(share)
    value = int(np.random.default_rng([index, seed]).integers(0, 2**40))
    marked = embed(image, value, bench.KEY, version=3)
    out = {}
    for name, attack in ATTACKS.items():
        analysis = codec.analyse(attack(marked), bench.KEY)
        out[name] = bench.reads_id(analysis, value)
    return share, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.2, 0.3, 1.0])
    parser.add_argument("--ids", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    pictures = mid_size_busy_pictures()
    print(f"CPU: {cpu_info().describe()}; one thread per worker; {len(pictures)} pictures x {args.ids} IDs: "
          + ", ".join(label for label, _ in pictures))
    jobs = [(index, image, share, seed) for share in args.shares for index, (_, image) in enumerate(pictures)
            for seed in range(args.ids)]
    with get_context("fork").Pool(args.workers) as pool:
        results = pool.map(_reads, jobs, chunksize=1)
    total = len(pictures) * args.ids
    print("\n| attack | " + " | ".join(f"64 px share {s:g}" for s in args.shares) + " |")
    print("|---|" + "---|" * len(args.shares))
    for name in ATTACKS:
        counts = [sum(out[name] for share, out in results if share == s) for s in args.shares]
        print(f"| {name} | " + " | ".join(f"{c}/{total}" for c in counts) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
