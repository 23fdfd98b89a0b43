"""Benchmark of the classical (weight-free) masker on real photographed objects with known masks.

    .venv/bin/python benchmarks/bench_masking.py [--json PATH] [--quick]

Each object of ``tests/data/masking`` (cut from scikit-image's photos with a by-eye-checked mask) is
composited onto plain backgrounds (white, white with a floor shadow, a grey sweep with vignette, pastel)
and textured ones (skimage's grass, gravel and brick, a procedural wood), at three positions/scales.
``estimate_foreground`` + ``refine_mask`` run on each composite; IoU against the known mask is reported
per object and per background (mean, min), with the raw mask's IoU beside it. Then the classical path's
speed in ms per megapixel at about 0.25, 1 and 4 MP (median over repeats). Prints markdown tables.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from comfyui_backdrop.runtime.masking.classical import estimate_foreground
from comfyui_backdrop.runtime.masking.refine import refine_mask
from comfyui_backdrop.runtime.masking.types import RefineOptions

DATA = Path(__file__).resolve().parent / "data" / "masking"
CANVAS = (480, 640)  # height, width of the IoU composites (0.31 MP)
PLACEMENTS = (  # (centre x, centre y, object height) as fractions of the canvas
    (0.50, 0.52, 0.70),
    (0.30, 0.62, 0.45),
    (0.68, 0.45, 0.55),
)
PLAIN = ("white", "white_shadow", "grey_sweep", "pastel")
TEXTURED = ("grass", "gravel", "brick", "wood")
SPEED_SIZES = ((433, 577), (866, 1155), (1732, 2309))


def load_objects() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, float RGB crop, bool mask) per object, re-cut from skimage.data with the stored boxes."""
    objects = []
    for entry in json.loads((DATA / "manifest.json").read_text()):
        source = entry["source"].removeprefix("skimage.data.")
        photo = data.stereo_motorcycle()[0] if source == "stereo_motorcycle" else getattr(data, source)()
        if photo.ndim == 2:
            photo = np.dstack([photo] * 3)
        x0, y0, x1, y1 = entry["box"]
        mask = cv2.imread(str(DATA / entry["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        crop = photo[y0:y1, x0:x1, :3].astype(np.float32) / 255.0
        assert crop.shape[:2] == mask.shape, entry["name"]
        objects.append((entry["name"], crop, mask))
    return objects


def _texture(image: np.ndarray, h: int, w: int, scale: float) -> np.ndarray:
    """A grayscale skimage texture in 0..1 covering h x w (mirrored tiles), ``scale`` x its size."""
    tex = image.astype(np.float32) / 255.0
    tex = cv2.resize(tex, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    tile = np.block([[tex, tex[:, ::-1]], [tex[::-1], tex[::-1, ::-1]]])
    reps = (h // tile.shape[0] + 1, w // tile.shape[1] + 1)
    return np.tile(tile, reps)[:h, :w]


def _wood(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coarse = rng.normal(0, 1, (h // 64 + 2, 4)).astype(np.float32)
    warp = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    rings = 0.5 + 0.5 * np.sin((yy + 18.0 * warp) / 7.0 + 0.002 * xx)
    grain = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.6)
    v = 0.6 * rings + 0.4 * (grain - grain.min()) / (np.ptp(grain) + 1e-6)
    dark, light = np.array([0.38, 0.22, 0.12]), np.array([0.72, 0.50, 0.32])
    return dark + v[..., None] * (light - dark)


def make_background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 RGB background of a given kind."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind in ("white", "white_shadow"):
        bg = np.full((h, w, 3), 0.96, np.float32)
    elif kind == "grey_sweep":
        level = 0.62 + 0.25 * np.clip((yy / h - 0.35) / 0.5, 0, 1)
        vignette = 1.0 - 0.3 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2
        bg = np.repeat((level * vignette)[..., None], 3, axis=2)
    elif kind == "pastel":
        t = (xx / w)[..., None]
        bg = np.array([0.97, 0.86, 0.84]) * (1 - t) + np.array([0.93, 0.88, 0.95]) * t
    elif kind == "grass":
        bg = _texture(data.grass(), h, w, 1.0)[..., None] * np.array([0.55, 0.85, 0.35]) + (0.05, 0.1, 0.02)
    elif kind == "gravel":
        bg = _texture(data.gravel(), h, w, 1.0)[..., None] * np.array([0.9, 0.88, 0.85]) + 0.05
    elif kind == "brick":
        bg = _texture(data.brick(), h, w, 1.0)[..., None] * np.array([0.95, 0.55, 0.42]) + (0.1, 0.05, 0.04)
    elif kind == "wood":
        bg = _wood(h, w, rng)
    else:
        raise ValueError(kind)
    bg = bg + rng.normal(0, 0.006, (h, w, 3))
    return np.clip(bg, 0, 1).astype(np.float32)


def composite(obj: np.ndarray, mask: np.ndarray, kind: str, placement: tuple[float, float, float],
              canvas: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite ``obj`` with its (softened) mask onto a background; returns (image, ground truth)."""
    rng = np.random.default_rng(seed)
    h, w = canvas
    cx, cy, frac = placement
    scale = frac * h / obj.shape[0]
    if obj.shape[1] * scale > 0.9 * w:
        scale = 0.9 * w / obj.shape[1]
    oh, ow = max(1, round(obj.shape[0] * scale)), max(1, round(obj.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    obj_s = np.clip(cv2.resize(obj, (ow, oh), interpolation=interp), 0, 1)
    soft = cv2.resize(mask.astype(np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)
    truth_s = soft > 0.5
    alpha_s = cv2.GaussianBlur(truth_s.astype(np.float32), (0, 0), 0.6)
    x0 = int(np.clip(round(cx * w - ow / 2), 0, w - ow))
    y0 = int(np.clip(round(cy * h - oh / 2), 0, h - oh))
    bg = make_background(kind, h, w, rng)
    if kind == "white_shadow":
        shadow = np.zeros((h, w), np.float32)
        base = y0 + int(np.nonzero(truth_s.any(axis=1))[0].max())
        centre, axes = (x0 + ow // 2 + ow // 12, base), (int(ow * 0.55), max(2, int(oh * 0.08)))
        cv2.ellipse(shadow, centre, axes, 0, 0, 360, 1.0, -1)
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(2.0, oh * 0.04))
        bg = bg * (1 - 0.45 * shadow[..., None])
    alpha = np.zeros((h, w), np.float32)
    truth = np.zeros((h, w), bool)
    alpha[y0:y0 + oh, x0:x0 + ow] = alpha_s
    truth[y0:y0 + oh, x0:x0 + ow] = truth_s
    fg = np.zeros_like(bg)
    fg[y0:y0 + oh, x0:x0 + ow] = obj_s
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    return np.clip(image, 0, 1).astype(np.float32), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def run_accuracy(objects, kinds, placements, options: RefineOptions) -> list[dict]:
    rows = []
    for oi, (name, obj, mask) in enumerate(objects):
        for ki, kind in enumerate(kinds):
            for pi, placement in enumerate(placements):
                image, truth = composite(obj, mask, kind, placement, CANVAS, seed=100 * oi + 10 * ki + pi)
                raw = estimate_foreground(image)
                alpha = refine_mask(raw, image, options)
                open_holes = refine_mask(raw, image, replace(options, fill_holes=False))
                rows.append({"object": name, "background": kind, "placement": pi, "iou_raw": iou(raw, truth),
                             "iou": iou(alpha >= 0.5, truth), "iou_no_fill": iou(open_holes >= 0.5, truth)})
    return rows


def run_speed(objects, repeats: int) -> list[dict]:
    _, obj, mask = objects[0]
    rows = []
    for h, w in SPEED_SIZES:
        image, _ = composite(obj, mask, "grey_sweep", PLACEMENTS[0], (h, w), seed=7)
        times = {"estimate": [], "refine": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            raw = estimate_foreground(image)
            t1 = time.perf_counter()
            refine_mask(raw, image, RefineOptions())
            t2 = time.perf_counter()
            times["estimate"].append(t1 - t0)
            times["refine"].append(t2 - t1)
        mp = h * w / 1e6
        est, ref = statistics.median(times["estimate"]), statistics.median(times["refine"])
        rows.append({"size": f"{w}x{h}", "megapixels": round(mp, 2), "estimate_ms": 1000 * est,
                     "refine_ms": 1000 * ref, "total_ms": 1000 * (est + ref),
                     "ms_per_mp": 1000 * (est + ref) / mp})
    return rows


def summarise(rows: list[dict], key: str, values) -> list[tuple]:
    out = []
    for value in values:
        sel = [r for r in rows if r[key] == value]
        out.append(_stats(value, sel))
    return out


def _stats(label: str, sel: list[dict]) -> tuple:
    return (label, np.mean([r["iou"] for r in sel]), min(r["iou"] for r in sel),
            np.mean([r["iou_raw"] for r in sel]), np.mean([r["iou_no_fill"] for r in sel]), len(sel))


def markdown(rows: list[dict], speed: list[dict], objects) -> str:
    head = "mean IoU | min IoU | raw mask mean IoU | mean IoU, fill_holes=False | cases |"
    lines = [f"| object | {head}", "|---|---|---|---|---|---|"]
    for name, mean, low, raw, no_fill, n in summarise(rows, "object", [o[0] for o in objects]):
        lines.append(f"| {name} | {mean:.3f} | {low:.3f} | {raw:.3f} | {no_fill:.3f} | {n} |")
    lines += ["", f"| background | kind | {head}", "|---|---|---|---|---|---|---|"]
    kinds = [k for k in PLAIN + TEXTURED if any(r["background"] == k for r in rows)]
    groups = [("**all plain**", "", PLAIN), ("**all textured**", "", TEXTURED), ("**all**", "", PLAIN + TEXTURED)]
    for label, group, members in [(k, "plain" if k in PLAIN else "textured", (k,)) for k in kinds] + groups:
        sel = [r for r in rows if r["background"] in members]
        if sel:
            _, mean, low, raw, no_fill, n = _stats(label, sel)
            lines.append(f"| {label} | {group} | {mean:.3f} | {low:.3f} | {raw:.3f} | {no_fill:.3f} | {n} |")
    lines += ["", "| size | MP | estimate_foreground ms | refine_mask ms | total ms | ms per MP |",
              "|---|---|---|---|---|---|"]
    for s in speed:
        lines.append(f"| {s['size']} | {s['megapixels']} | {s['estimate_ms']:.0f} | {s['refine_ms']:.0f} | "
                     f"{s['total_ms']:.0f} | {s['ms_per_mp']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write all per-case results here")
    parser.add_argument("--quick", action="store_true", help="one placement, one speed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats per size (median)")
    args = parser.parse_args(argv)
    objects = load_objects()
    placements = PLACEMENTS[:1] if args.quick else PLACEMENTS
    rows = run_accuracy(objects, PLAIN + TEXTURED, placements, RefineOptions())
    speed = run_speed(objects, 1 if args.quick else args.repeats)
    print(markdown(rows, speed, objects))
    if args.json:
        args.json.write_text(json.dumps({"cases": rows, "speed": speed, "canvas": CANVAS}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
