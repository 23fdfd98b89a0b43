"""Benchmark of the watermark codec (issue 6): speed on one core, PSNR, robustness, false positives.

    .venv/bin/python benchmarks/bench_watermark.py [--quick] [--out results.json] [--fp-samples N] [--workers K]

* Speed: embed and detect, ms and ms per megapixel at 0.26, 1 and 4 MP, one thread everywhere
  (OpenCV, OpenMP/MKL/OpenBLAS pinned before numpy is imported); median of repeats.
* Quality: PSNR of the marked images, ours and imwatermark's (invisible-watermark, as used by SDXL).
* Robustness: bit accuracy and exact-ID rate per attack on 20+ real photos (scikit-image's, at their own
  size and resized to 512-2048 px) plus flat white-background product shots, with imwatermark's dwtDct
  and dwtDctSvd (64-bit payloads) side by side. "Bit accuracy" is over the 64 payload bits; for our codec
  those come from the best hypothesis even when the CRC rejects them (found=False, no ID reported).
* False positives: ``--fp-samples`` unmarked images (crops/resizes/JPEGs of real photos, noise, flat and
  gradient images, and photos marked under another key), spread over ``--workers`` processes of one
  thread each. Reports false decodes (must be 0) and the empirical rate of sync scores against the
  calibrated p-value.

Prints markdown tables; ``--out`` also writes every number as JSON. Not collected by pytest.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the shared test helpers (tests.*) importable
    sys.path.insert(0, str(ROOT))

from comfyui_backdrop.runtime.watermark import codec, detect, embed  # noqa: E402
from comfyui_backdrop.runtime.watermark.payload import int_to_bits  # noqa: E402
from comfyui_backdrop.runtime.watermark.scoring import log10_false_positive  # noqa: E402
from tests.fixtures.images import studio_product_photo  # noqa: E402
from tests.fixtures.watermark_images import (  # noqa: E402
    blur,
    crop_area,
    jpeg,
    noise_image,
    psnr,
    resize,
    rotate,
    skimage_photo,
    tone,
    webp,
)

KEY = b"bench-watermark-key-000000000000"
OTHER_KEY = b"another-installation-key-0000000"
Attack = Callable[[np.ndarray], np.ndarray]

ATTACKS: dict[str, Attack] = {
    "none": lambda x: x,
    "crop 50% area": lambda x: crop_area(x, 0.5, 0.7, 0.3),
    "crop 25% area": lambda x: crop_area(x, 0.25, 0.2, 0.8),
    "crop 25% (corner)": lambda x: crop_area(x, 0.25, 1.0, 0.0),
    "scale 0.5": lambda x: resize(x, 0.5),
    "scale 0.75": lambda x: resize(x, 0.75),
    "scale 1.5": lambda x: resize(x, 1.5),
    "scale 2.0": lambda x: resize(x, 2.0),
    "aspect 0.9x1.1": lambda x: resize(x, 0.9, 1.1),
    "aspect 1.2x0.8": lambda x: resize(x, 1.2, 0.8),
    "JPEG q50 4:2:0": lambda x: jpeg(x, 50),
    "JPEG q75 4:2:0": lambda x: jpeg(x, 75),
    "WebP q80": lambda x: webp(x, 80),
    "WebP q50": lambda x: webp(x, 50),
    "blur sigma 0.8": lambda x: blur(x, 0.8),
    "brightness/contrast/gamma": lambda x: tone(x, 12.0, 0.85, 1.25),
    "rotate +5 deg": lambda x: rotate(x, 5.0),
    "rotate -3 deg": lambda x: rotate(x, -3.0),
    "crop 25% + scale 1.5 + JPEG 70": lambda x: jpeg(resize(crop_area(x, 0.25, 0.4, 0.6), 1.5), 70),
    "crop 25% + scale 0.8 + JPEG 70": lambda x: jpeg(resize(crop_area(x, 0.25, 0.4, 0.6), 0.8), 70),
    "scale 0.5 + JPEG 75": lambda x: jpeg(resize(x, 0.5), 75),
    "scale 0.5 + JPEG 50": lambda x: jpeg(resize(x, 0.5), 50),
    "rotate 3 + aspect 0.8x0.9 + JPEG 60": lambda x: jpeg(resize(rotate(x, 3.0), 0.8, 0.9), 60),
    "crop 50% + scale 0.7 + WebP 80": lambda x: webp(resize(crop_area(x, 0.5, 0.1, 0.9), 0.7), 80),
}
QUICK_ATTACKS = ("none", "crop 25% area", "scale 0.5", "scale 2.0", "aspect 0.9x1.1", "JPEG q50 4:2:0",
                 "WebP q80", "blur sigma 0.8", "brightness/contrast/gamma", "rotate +5 deg",
                 "crop 25% + scale 1.5 + JPEG 70", "scale 0.5 + JPEG 75")


# ------------------------------------------------------------------------------------------------- images


def _fit(image: np.ndarray, long_side: int) -> np.ndarray:
    scale = long_side / max(image.shape[:2])
    return resize(image, scale) if abs(scale - 1) > 1e-3 else image


def bench_images(quick: bool) -> list[tuple[str, np.ndarray]]:
    """20+ real photos at 451-2048 px (their own size and resized), plus studio shots on white sweeps."""
    photos = {name: skimage_photo(name) for name in
              ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle", "retina",
               "hubble_deep_field", "camera")}
    plan = [("astronaut", 512), ("astronaut", 1024), ("coffee", 600), ("coffee", 1536), ("chelsea", 451),
            ("chelsea", 900), ("rocket", 640), ("rocket", 1280), ("immunohistochemistry", 512),
            ("immunohistochemistry", 1024), ("motorcycle", 741), ("motorcycle", 1482), ("retina", 1411),
            ("retina", 768), ("hubble_deep_field", 1000), ("hubble_deep_field", 2048), ("camera", 512),
            ("camera", 1024)]
    images = [(f"{name}@{side}", _fit(photos[name], side)) for name, side in plan]
    crop = photos["retina"][200:1224, 150:1174]
    images.append(("retina crop@1024", crop))
    images.append(("motorcycle crop@600", photos["motorcycle"][:, 100:700]))
    studio = [(512, 640, 1, "sweep"), (1024, 1280, 2, "sweep"), (768, 1024, 3, "plain"), (1536, 2048, 4, "sweep"),
              (600, 600, 5, "sweep")]
    images += [(f"studio {w}x{h}", studio_product_photo(h, w, seed=s, background=bg)[0]) for h, w, s, bg in studio]
    if quick:
        keep = ("astronaut@512", "coffee@1536", "rocket@640", "motorcycle@741", "retina@768",
                "hubble_deep_field@1000", "studio 640x512", "studio 1280x1024")
        images = [item for item in images if item[0] in keep]
    return images


def payload_for(index: int) -> int:
    return int(np.random.default_rng(1000 + index).integers(0, 2**63)) * 2 + index % 2


# ------------------------------------------------------------------------------------------------- speed


def _timed_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, best) wall time in ms; on a shared machine the best is the closer to the code's own cost."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def speed(quick: bool) -> list[dict]:
    base = skimage_photo("retina")[100:1311, 100:1311]
    rows = []
    for side in (512, 1024) if quick else (512, 1024, 2048):
        image = cv2.resize(base, (side, side), interpolation=cv2.INTER_AREA if side < 1211 else cv2.INTER_CUBIC)
        marked = embed(image, 7, KEY)
        mp = side * side / 1e6
        embed_ms = _timed_ms(lambda image=image: embed(image, 7, KEY), 5 if quick else 11)
        detect_ms = _timed_ms(lambda marked=marked: detect(marked, KEY), 3 if quick else 7)
        clean_ms = _timed_ms(lambda image=image: detect(image, KEY), 3 if quick else 5)
        rows.append({"size": f"{side}x{side}", "megapixels": mp,
                     "embed_ms": embed_ms[0], "embed_ms_per_mp": embed_ms[0] / mp,
                     "embed_best_ms_per_mp": embed_ms[1] / mp,
                     "detect_ms": detect_ms[0], "detect_ms_per_mp": detect_ms[0] / mp,
                     "detect_best_ms_per_mp": detect_ms[1] / mp, "detect_unmarked_ms_per_mp": clean_ms[0] / mp,
                     "detect_unmarked_best_ms_per_mp": clean_ms[1] / mp})
    return rows


# ------------------------------------------------------------------------------------------------- robustness


def _imwatermark(image: np.ndarray, bits: np.ndarray, method: str) -> np.ndarray | None:
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", [int(b) for b in bits])
    try:
        return encoder.encode(np.ascontiguousarray(image[:, :, ::-1]), method)[:, :, ::-1].copy()
    except Exception:  # imwatermark refuses some sizes; counted as "could not embed"
        return None


def _imwatermark_bits(image: np.ndarray, method: str) -> np.ndarray | None:
    from imwatermark import WatermarkDecoder

    try:
        return np.array(WatermarkDecoder("bits", 64).decode(np.ascontiguousarray(image[:, :, ::-1]), method),
                        dtype=np.uint8)
    except Exception:  # e.g. too small after a crop/downscale
        return None


def robustness(images: list[tuple[str, np.ndarray]], attacks: dict[str, Attack], baselines: bool) -> dict:
    methods = ["ours"] + (["dwtDct", "dwtDctSvd"] if baselines else [])
    marked: dict[str, list] = {m: [] for m in methods}
    quality: dict[str, list[float]] = {m: [] for m in methods}
    for index, (_, image) in enumerate(images):
        value = payload_for(index)
        bits = int_to_bits(value, 64)
        ours = embed(image, value, KEY)
        marked["ours"].append((ours, value, bits))
        quality["ours"].append(psnr(ours, image))
        for method in methods[1:]:
            out = _imwatermark(image, bits, method)
            marked[method].append((out, value, bits))
            if out is not None:
                quality[method].append(psnr(out, image))
    results: dict[str, dict] = {}
    for name, attack in attacks.items():
        row: dict[str, dict] = {}
        for method in methods:
            accuracy, exact, studio_exact = [], [], []
            for (label, _), (image, value, bits) in zip(images, marked[method], strict=True):
                if image is None:
                    accuracy.append(0.5)
                    exact.append(False)
                    continue
                attacked = attack(image)
                if method == "ours":
                    try:
                        analysis = codec.analyse(attacked, KEY)
                        found = analysis.payload is not None and analysis.log10_fpp <= -6.0  # = detect().found
                        got_bits, hit = analysis.bits, found and analysis.payload == value
                    except codec.ImageTooSmallError:
                        got_bits, hit = None, False
                else:
                    got_bits = _imwatermark_bits(attacked, method)
                    hit = got_bits is not None and bool(np.array_equal(got_bits, bits))
                accuracy.append(0.5 if got_bits is None else float(np.mean(got_bits == bits)))
                exact.append(hit)
                if label.startswith("studio"):
                    studio_exact.append(hit)
            row[method] = {"bit_accuracy": float(np.mean(accuracy)), "exact_rate": float(np.mean(exact)),
                           "studio_exact_rate": float(np.mean(studio_exact)) if studio_exact else None,
                           "n": len(exact)}
        results[name] = row
        print(f"  {name}: " + ", ".join(f"{m} {row[m]['exact_rate']:.2f}" for m in methods), file=sys.stderr,
              flush=True)
    psnrs = {m: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for m, v in quality.items() if v}
    return {"attacks": results, "psnr": psnrs, "methods": methods}


# ------------------------------------------------------------------------------------------------- false positives


_FP_SOURCES: list[np.ndarray] = []


def _fp_sources() -> list[np.ndarray]:
    if not _FP_SOURCES:
        names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle", "retina",
                 "hubble_deep_field", "camera", "brick", "grass", "gravel", "text", "moon", "page", "clock", "coins")
        _FP_SOURCES.extend(skimage_photo(n) for n in names)
        _FP_SOURCES.extend(studio_product_photo(h, w, seed=s)[0] for h, w, s in ((480, 640, 11), (900, 700, 12)))
    return _FP_SOURCES


def fp_sample(index: int) -> np.ndarray:
    """The ``index``-th unmarked image (deterministic)."""
    rng = np.random.default_rng(50_000 + index)
    kind = index % 10
    if kind <= 5:  # crops, some resized, some recompressed
        source = _fp_sources()[int(rng.integers(len(_fp_sources())))]
        image = crop_area(source, float(rng.uniform(0.05, 1.0)), float(rng.random()), float(rng.random()))
        if kind >= 3:
            image = resize(image, float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.5, 2.0)))
        if kind == 5:
            image = jpeg(image, int(rng.integers(40, 95)))
    elif kind == 6:  # noise, white or smoothed
        image = noise_image(int(rng.integers(64, 700)), int(rng.integers(64, 700)), seed=index,
                            sigma=float(rng.uniform(1, 80)), smooth=float(rng.choice([0.0, 0.7, 1.5, 3.0])))
    elif kind == 7:  # flat or gradient, with a little sensor noise
        h, w = int(rng.integers(64, 900)), int(rng.integers(64, 900))
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        level = rng.uniform(0, 255) + rng.uniform(-60, 60) * (xs / w) + rng.uniform(-60, 60) * (ys / h)
        image = np.dstack([level] * 3) + rng.normal(0, rng.uniform(0, 3), (h, w, 3))
        image = np.clip(image, 0, 255).astype(np.uint8)
    else:  # real photos marked under another installation's key
        source = _fp_sources()[int(rng.integers(len(_fp_sources())))]
        image = crop_area(source, float(rng.uniform(0.3, 1.0)), float(rng.random()), float(rng.random()))
        if min(image.shape[:2]) >= codec.MIN_SIDE:
            image = embed(image, int(rng.integers(0, 2**62)), OTHER_KEY)
    if min(image.shape[:2]) < codec.MIN_DETECT_SIDE:
        image = cv2.resize(image, (max(image.shape[1], 64), max(image.shape[0], 64)))
    return image


def _fp_worker(indices: list[int]) -> list[tuple[int, bool, float, float]]:
    cv2.setNumThreads(1)
    out = []
    for i in indices:
        image = fp_sample(i)
        analysis = codec.analyse(image, KEY)
        result = detect(image, KEY) if analysis.payload is not None else None
        sync_only = log10_false_positive(analysis.alignment.z, analysis.hypotheses, False)
        out.append((i, bool(result is not None and result.found), float(analysis.alignment.z), sync_only))
    return out


def false_positives(samples: int, workers: int) -> dict:
    chunks = [list(range(k, samples, workers * 4)) for k in range(workers * 4)]
    start = time.perf_counter()
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            parts = pool.map(_fp_worker, chunks)
    else:
        parts = [_fp_worker(c) for c in chunks]
    rows = [r for part in parts for r in part]
    z = np.array([r[2] for r in rows])
    log_p = np.array([r[3] for r in rows])
    return {
        "samples": len(rows),
        "false_decodes": int(sum(r[1] for r in rows)),
        "false_decode_indices": [r[0] for r in rows if r[1]],
        "max_sync_z": float(z.max()),
        "mean_sync_z": float(z.mean()),
        "rate_sync_p_le_1e-1": float(np.mean(log_p <= -1)),
        "rate_sync_p_le_1e-2": float(np.mean(log_p <= -2)),
        "rate_sync_p_le_1e-3": float(np.mean(log_p <= -3)),
        "seconds": time.perf_counter() - start,
        "workers": workers,
    }


# ------------------------------------------------------------------------------------------------- report


def report(results: dict) -> str:
    lines: list[str] = []
    if results["speed"]:
        lines += ["## Speed (one core; median / best of the repeats)", "",
                  "| size | embed ms | embed ms/MP | detect ms | detect ms/MP | detect unmarked ms/MP |",
                  "|---|---|---|---|---|---|"]
        for r in results["speed"]:
            lines.append(f"| {r['size']} | {r['embed_ms']:.1f} | {r['embed_ms_per_mp']:.1f} / "
                         f"{r['embed_best_ms_per_mp']:.1f} | {r['detect_ms']:.0f} | {r['detect_ms_per_mp']:.0f} / "
                         f"{r['detect_best_ms_per_mp']:.0f} | {r['detect_unmarked_ms_per_mp']:.0f} / "
                         f"{r['detect_unmarked_best_ms_per_mp']:.0f} |")
        lines.append("")
    rob = results["robustness"]
    methods = rob["methods"]
    if methods:
        lines += [f"## PSNR ({len(results['images'])} images)", "", "| method | mean dB | min dB |", "|---|---|---|"]
        for m in methods:
            if m in rob["psnr"]:
                lines.append(f"| {m} | {rob['psnr'][m]['mean']:.2f} | {rob['psnr'][m]['min']:.2f} |")
        header = " | ".join(f"{m} bit acc | {m} exact ID" for m in methods)
        lines += ["", "## Robustness (bit accuracy / exact-ID rate)", "",
                  f"| attack | {header} | ours exact ID, studio shots |",
                  "|---|" + "---|" * (2 * len(methods) + 1)]
        for name, row in rob["attacks"].items():
            cells = " | ".join(f"{row[m]['bit_accuracy']:.3f} | {row[m]['exact_rate']:.2f}" for m in methods)
            studio = row["ours"]["studio_exact_rate"]
            lines.append(f"| {name} | {cells} | {'' if studio is None else f'{studio:.2f}'} |")
        lines.append("")
    if "false_positives" in results:
        fp = results["false_positives"]
        lines += ["## False positives (unmarked images, our key)", "",
                  "| samples | false decodes | max sync z | P(sync p<=0.1) | P(sync p<=0.01) | P(sync p<=0.001) | s |",
                  "|---|---|---|---|---|---|---|",
                  f"| {fp['samples']} | {fp['false_decodes']} | {fp['max_sync_z']:.2f} | "
                  f"{fp['rate_sync_p_le_1e-1']:.4f} | {fp['rate_sync_p_le_1e-2']:.4f} | "
                  f"{fp['rate_sync_p_le_1e-3']:.4f} | {fp['seconds']:.0f} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 images, 12 attacks, 500 false-positive samples")
    parser.add_argument("--out", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument("--fp-samples", type=int, default=None, help="unmarked images to test (default 10000)")
    parser.add_argument("--workers", type=int, default=1, help="processes for the false-positive run")
    parser.add_argument("--no-baselines", action="store_true", help="skip imwatermark")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "robustness", "fp"])
    args = parser.parse_args(argv)
    samples = args.fp_samples if args.fp_samples is not None else (500 if args.quick else 10_000)

    images = bench_images(args.quick)
    results: dict = {"images": [{"name": n, "height": i.shape[0], "width": i.shape[1]} for n, i in images]}
    if "speed" not in args.skip:
        print("speed...", file=sys.stderr, flush=True)
        results["speed"] = speed(args.quick)
    else:
        results["speed"] = []
    if "robustness" not in args.skip:
        print(f"robustness on {len(images)} images...", file=sys.stderr, flush=True)
        attacks = {k: v for k, v in ATTACKS.items() if not args.quick or k in QUICK_ATTACKS}
        results["robustness"] = robustness(images, attacks, baselines=not args.no_baselines)
    else:
        results["robustness"] = {"attacks": {}, "psnr": {}, "methods": []}
    if "fp" not in args.skip and samples > 0:
        print(f"false positives on {samples} unmarked images...", file=sys.stderr, flush=True)
        results["false_positives"] = false_positives(samples, max(1, args.workers))
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if results.get("false_positives", {}).get("false_decodes", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
