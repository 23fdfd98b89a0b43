"""Small busy pictures (one 64 px layer): what crop 25% + 0.5x + JPEG 60 leaves, and two levers that were measured
and not taken (stop 37).

    .venv/bin/python benchmarks/probe_small_crops.py [--emphasis flat power:0.5:6 power:1:6 step:0.4:7] [--headroom]
        [--workers 2]

The pictures: every benchmark and held-out image (bench_watermark.py) whose carrier is one 64 px layer
(``carrier.layers_for``): 18 busy photos of 0.14-0.8 MP.

* ``--emphasis``: the embedder's tile reweighted in frequency before it is placed (the detector unchanged, so a
  mark made this way is still a v3 mark): ``power:A:R`` multiplies a bin r cycles per tile from the centre by
  (r / R)^-A, ``step:B:R`` multiplies the bins beyond R by B. More of the energy in the lower band, which a halved,
  recompressed crop keeps. Prints, per setting, the PSNR and the exact-ID rate and median sync z of 17 attacks.
* ``--headroom``: for crop 25% + 0.5x + JPEG 60, the sync z of the blind read and of a read forced onto the true
  lattice (32 px), and the z of the *whole* expected tile (sync and payload chips, re-encoded from the true ID) at
  that read: what a detector that knew the candidate IDs (a ledger) could use. Such a read would need z >= ~8 to
  keep a false-positive bound of 1e-6 over 10^4-10^6 IDs.

One thread per worker; prints the CPU. Not collected by pytest.
"""

from __future__ import annotations

import one_thread  # noqa: F401  (first: one thread for numpy and OpenCV; tests.* importable)

# isort: split

import argparse
import statistics
import sys
from multiprocessing import get_context

import bench_watermark as bench
import numpy as np

from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.watermark import carrier, codec, embed
from comfyui_backdrop.runtime.watermark.lattice import Lattice
from comfyui_backdrop.runtime.watermark.payload import CODES
from comfyui_backdrop.runtime.watermark.perceptual import luma
from tests.fixtures.watermark_images import psnr

TARGET = "crop 25% + scale 0.5 + JPEG 60"
ATTACKS = {name: bench.ATTACKS[name] for name in (
    "none", "crop 10% area", TARGET, "crop 25% area", "JPEG q20 4:2:0", "WebP q40", "scale 0.33", "scale 0.25",
    "scale 0.5 + JPEG 50", "crop 25% + scale 0.8 + JPEG 70", "crop 25% + scale 1.5 + JPEG 70",
    "rotate 3 + aspect 0.8x0.9 + JPEG 60")}
ATTACKS.update({name: bench.HELD_OUT_ATTACKS[name] for name in (
    "crop 12% (corner 0.8, 0.15)", "crop 15% + JPEG 60", "crop 30% + scale 0.6 + JPEG 55", "WebP q30",
    "JPEG q25 4:2:0")})
_PLAIN_TILE = carrier.tile
_EMPHASIS: list[str] = ["flat"]


def small_busy_pictures() -> list[tuple[int, str, np.ndarray]]:
    """(payload index, label, RGB) of the benchmark and held-out images carried by one 64 px layer."""
    out = []
    for offset, name in ((0, "bench"), (100, "held-out")):
        for index, (label, image) in enumerate(bench.IMAGE_SETS[name](False)):
            if carrier.layers_for(luma(image)) == ((carrier.PERIOD, 1.0),):
                out.append((offset + index, f"{name}:{label}", image))
    return out


def emphasis_weights(setting: str, size: int) -> np.ndarray:
    """[size, size] gains per tile frequency (numpy FFT layout) for ``setting`` (see the module docstring)."""
    f = np.fft.fftfreq(size, 1.0 / size)
    r = np.maximum(np.hypot(*np.meshgrid(f, f, indexing="ij")), 1.0)
    kind, *values = setting.split(":")
    if kind == "flat":
        return np.ones_like(r)
    a, radius = (float(v) for v in values)
    if kind == "power":
        return (r / radius) ** -a
    if kind == "step":
        return np.where(r <= radius, 1.0, a)
    raise SystemExit(f"unknown emphasis {setting!r}")


def _emphasised_tile(key, payload_coded, mark, period, version=2):
    plain = _PLAIN_TILE(key, payload_coded, mark, period, version)
    if _EMPHASIS[0] == "flat":
        return plain
    out = np.fft.ifft2(np.fft.fft2(plain) * emphasis_weights(_EMPHASIS[0], period)).real
    return (out / np.sqrt(np.mean(out**2))).astype(np.float32)


def _read_all(job: tuple[int, str, np.ndarray, str]) -> dict:
    """PSNR and (found, sync z) per attack for one picture marked under one emphasis setting."""
    index, label, image, setting = job
    _EMPHASIS[0] = setting
    carrier.tile = _emphasised_tile
    value = bench.payload_for(index, 40)
    marked = embed(image, value, bench.KEY, version=3)
    reads = {}
    for name, attack in ATTACKS.items():
        try:
            analysis = codec.analyse(attack(marked), bench.KEY)
        except codec.ImageTooSmallError:
            reads[name] = (False, 0.0)
            continue
        reads[name] = (bench.reads_id(analysis, value), analysis.alignment.z)
    return {"label": label, "psnr": psnr(marked, image), "reads": reads}


def emphasis(settings: list[str], workers: int) -> None:
    pictures = small_busy_pictures()
    jobs = [(index, label, image, setting) for setting in settings for index, label, image in pictures]
    with get_context("fork").Pool(workers) as pool:
        results = pool.map(_read_all, jobs, chunksize=1)
    n = len(pictures)
    for k, setting in enumerate(settings):
        rows = results[k * n:(k + 1) * n]
        values = [r["psnr"] for r in rows]
        print(f"\n### emphasis {setting}: PSNR min {min(values):.2f}, mean {statistics.fmean(values):.2f} dB\n")
        print("| attack | exact ID | median sync z |\n|---|---|---|")
        for name in ATTACKS:
            hits = sum(r["reads"][name][0] for r in rows)
            print(f"| {name} | {hits}/{n} | {statistics.median(r['reads'][name][1] for r in rows):.2f} |")


def _z(chips: np.ndarray, expected: np.ndarray, index: np.ndarray | None = None) -> float:
    """Correlation of the read chips (all, or those at ``index``) with ``expected`` values, in units of its spread
    (from the chips' own mean square: a read's chips are mostly noise)."""
    power = float(np.mean(chips**2))
    chips = chips.reshape(-1) if index is None else chips.reshape(-1)[index]
    return float(chips @ expected.reshape(-1)) / np.sqrt(expected.size * power)


def headroom() -> None:
    print(f"\n### {TARGET}: blind read, read on the true lattice, and the whole tile's z there\n")
    print("| picture | blind sync z | true-lattice sync z | right variant | whole-tile z | ID read |\n"
          "|---|---|---|---|---|---|")
    for index, label, image in small_busy_pictures():
        value = bench.payload_for(index, 40)
        attacked = ATTACKS[TARGET](embed(image, value, bench.KEY, version=3))
        mark = carrier.nonce(bench.KEY, value, 3)
        layout = carrier.layout(bench.KEY, mark.variant, 3)
        expected = layout.chips(CODES[3].encode(value))
        blind = codec.analyse(attacked, bench.KEY, versions=(3,))
        true = codec.analyse(attacked, bench.KEY, lattices=[Lattice((32.0, 0.0), (0.0, 32.0))], versions=(3,))
        chips = true.alignment.chips
        print(f"| {label} | {blind.alignment.z:.2f} | {_z(chips, layout.sync_signs, layout.sync_index):.2f} | "
              f"{'yes' if true.variant == mark.variant else 'no'} | {_z(chips, expected):.2f} | "
              f"{'yes' if blind.payload == value else 'no'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emphasis", nargs="*", default=None, metavar="SETTING")
    parser.add_argument("--headroom", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_info().describe()}; one thread per worker")
    if args.emphasis is None and not args.headroom:
        args.emphasis = ["flat", "power:0.5:6", "power:1:6", "step:0.4:7"]
    if args.emphasis:
        emphasis(args.emphasis, args.workers)
    if args.headroom:
        headroom()
    return 0


if __name__ == "__main__":
    sys.exit(main())
