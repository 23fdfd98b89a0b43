"""Weight-free product masking for studio shots: a border background model seeds OpenCV GrabCut.

The image border (or, with a box prompt, everything outside the box) is background. A robust quadratic fit
of it (studio sweeps, vignettes) plus a few colour clusters of the residuals (textured backdrops) model the
background in shadow-invariant Lab features: L* and chromaticity a*/(L*+16), b*/(L*+16). Pixels whose
chromaticity or brightening is far from the model, or which are much darker than it, seed GrabCut as probable
product; a soft floor shadow (milder darkening, same chromaticity) stays background. Work happens on a copy
of about ``work_side``² pixels and the mask is upsampled; ``refine.refine_mask`` snaps its edge back to the
full-resolution image. Measured figures: ``tests/bench_masking.py``.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InvalidInputError
from .types import Prompt

GRABCUT_MIN_SIDE = 24  # below this (work resolution) the seed map is the mask, without GrabCut
GRABCUT_ITERATIONS = 4
NOISE_FLOOR = 2.5  # Lab units added to every cluster spread, so a flat backdrop still has a tolerance
# A pixel seeds "product" when its hue/chroma or brightening differs from every background cluster by more
# than T spreads (T adapts to how well the model explains the border, within these bounds) ...
THRESHOLD_RANGE = (1.2, 3.0)
THRESHOLD_FROM_BORDER = 4.0  # T = this x the 99.5th percentile of the border's own distances
# ... or when it is darker by more than max(DARK_SIGMAS spreads, DARK_MIN_L): milder darkening of the same
# chromaticity is what a soft shadow does, so it stays background.
DARK_SIGMAS, DARK_MIN_L = 3.0, 25.0
COLLAPSE = 0.25  # a GrabCut result smaller than this fraction of its seeds has collapsed
MIN_SEED_FRACTION = 2e-4  # fewer seed pixels than this (after opening) means "nothing stands out"
CLUSTERS = 4


def estimate_foreground(rgb: np.ndarray, prompt: Prompt | None = None, work_side: int = 512) -> np.ndarray:
    """Raw product mask (bool HxW) of a float RGB image in 0..1 on a fairly plain backdrop.

    ``prompt.box`` marks everything outside it as background; ``prompt.points`` with label 1/0 force
    product/background around them. An image where nothing stands out from its border gives an all-False
    mask. ``rgb`` is not modified.
    """
    if work_side < 8:
        raise InvalidInputError(f"work_side must be at least 8, got {work_side}")
    small, scale = _work_image(rgb, work_side)
    height, width = np.asarray(rgb).shape[:2]
    prompt = prompt.clipped(width, height) if prompt is not None and not prompt.is_empty else None
    sh, sw = small.shape[:2]
    features = shadow_invariant_features(small)

    definite_bg = _definite_background(sh, sw, prompt, scale)
    if definite_bg.all():
        return np.zeros((height, width), dtype=bool)
    from_box = prompt is not None and prompt.box is not None
    score = background_score(features, _model_samples(definite_bg, from_box))
    fg_points, bg_points = _point_masks(sh, sw, prompt, scale)
    seeds = (score > 1.0) & ~definite_bg
    seeds = (seeds | fg_points) & ~bg_points

    if min(sh, sw) < GRABCUT_MIN_SIDE:
        small_mask = seeds
    else:
        if not _has_enough_seeds(seeds, fg_points):
            return np.zeros((height, width), dtype=bool)
        small_mask = _grabcut(small, seeds, definite_bg | bg_points, fg_points)
    return _upscale(small_mask, height, width)


def shadow_invariant_features(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel (L*, 100 a*/(L*+16), 100 b*/(L*+16)), lightly smoothed.

    Dimming a colour (a shadow) scales L*+16, a* and b* alike, so the last two stay nearly constant.
    """
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    if min(lab.shape[:2]) >= 16:
        lab = cv2.GaussianBlur(lab, (0, 0), 0.8)
    scale = 100.0 / np.maximum(lab[..., :1] + 16.0, 30.0)
    return np.concatenate([lab[..., :1], lab[..., 1:] * scale], axis=2)


def background_score(features: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Distance (float32 HxW) from a background model fitted on ``samples``; above 1 = not background.

    The model is a robust quadratic surface per channel (gradients, vignettes) plus colour clusters of the
    residuals (texture). Chroma and brightening differences are measured in cluster spreads against an
    adaptive threshold; darkening is measured separately with a tolerance for soft shadows.
    """
    surface = _fit_surface(features, samples)
    residual = features - surface
    if not samples.any():
        return np.zeros(features.shape[:2], dtype=np.float32)
    centers, spreads = _clusters(residual[samples])
    chroma_maps, dark_maps = [], []
    for center, spread in zip(centers, spreads, strict=True):
        diff = residual - center
        lighter = np.maximum(diff[..., 0], 0.0) / spread[0]
        chroma = (diff[..., 1] / spread[1]) ** 2 + (diff[..., 2] / spread[2]) ** 2
        chroma_maps.append(np.sqrt(lighter**2 + chroma))
        dark_maps.append(np.maximum(-diff[..., 0], 0.0) / max(DARK_SIGMAS * spread[0], DARK_MIN_L))
    border = np.min([m[samples] for m in chroma_maps], axis=0)
    threshold = float(np.clip(THRESHOLD_FROM_BORDER * np.percentile(border, 99.5), *THRESHOLD_RANGE))
    score = np.full(features.shape[:2], np.inf, dtype=np.float32)
    for chroma, dark in zip(chroma_maps, dark_maps, strict=True):
        np.minimum(score, np.maximum(chroma / threshold, dark), out=score)
    return score


def _work_image(rgb: np.ndarray, work_side: int) -> tuple[np.ndarray, float]:
    """A float32 copy in 0..1 of about ``work_side``² pixels (never larger than the input) and its scale.

    Only the small copy is converted and checked: NaN and infinity survive area averaging, so a bad
    value anywhere in the input still shows up in it.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    if min(arr.shape[:2]) < 1:
        raise InvalidInputError(f"the image {arr.shape[1]}x{arr.shape[0]} is empty")
    if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise InvalidInputError(f"expected a float RGB image in 0..1 (or uint8), got dtype {arr.dtype}")
    height, width = arr.shape[:2]
    scale = min(1.0, work_side / float(np.sqrt(height * width)))
    if arr.dtype not in (np.uint8, np.float32, np.float64):
        arr = arr.astype(np.float32)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        arr = cv2.resize(np.ascontiguousarray(arr), size, interpolation=cv2.INTER_AREA)
    small = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if not np.isfinite(small).all():
        raise InvalidInputError("the image holds NaN or infinite values")
    return np.clip(small, 0.0, 1.0), scale  # clip returns a new array: the input is never touched


def _border_width(height: int, width: int) -> int:
    return max(1, round(0.02 * min(height, width)))


def _definite_background(height: int, width: int, prompt: Prompt | None, scale: float) -> np.ndarray:
    """Everything outside the prompt box, or the border strip (also when the box leaves almost nothing out)."""
    border = np.zeros((height, width), dtype=bool)
    b = _border_width(height, width)
    border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
    if prompt is None or prompt.box is None:
        return border
    x0, y0, x1, y1 = (v * scale for v in prompt.box)
    outside = np.ones((height, width), dtype=bool)
    outside[int(np.floor(y0)):int(np.ceil(y1)) + 1, int(np.floor(x0)):int(np.ceil(x1)) + 1] = False
    return outside if outside.sum() * 4 >= border.sum() else outside | border


def _model_samples(definite_bg: np.ndarray, from_box: bool) -> np.ndarray:
    """Pixels the background model is fitted on: the border strip, or a ring just outside the box."""
    if not from_box:
        return definite_bg
    height, width = definite_bg.shape
    b = max(2, 2 * _border_width(height, width))
    kernel = np.ones((2 * b + 1, 2 * b + 1), np.uint8)
    ring = cv2.dilate((~definite_bg).astype(np.uint8), kernel).astype(bool) & definite_bg
    return ring if ring.sum() >= 16 else definite_bg


def _point_masks(height: int, width: int, prompt: Prompt | None,
                 scale: float) -> tuple[np.ndarray, np.ndarray]:
    fg = np.zeros((height, width), dtype=np.uint8)
    bg = np.zeros((height, width), dtype=np.uint8)
    if prompt is None:
        return fg.astype(bool), bg.astype(bool)
    radius = max(1, round(0.01 * min(height, width)))
    for x, y, label in prompt.points:
        center = (min(width - 1, round(x * scale)), min(height - 1, round(y * scale)))
        cv2.circle(fg if label == 1 else bg, center, radius, 1, thickness=-1)
    return fg.astype(bool), bg.astype(bool)


def _fit_surface(lab: np.ndarray, samples: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Robust least-squares quadratic surface per Lab channel through the sample pixels."""
    height, width = lab.shape[:2]
    ys, xs = np.nonzero(samples)
    values = lab[ys, xs].astype(np.float64)
    if len(values) < 24:
        level = np.median(values, axis=0) if len(values) else 0.0
        return np.broadcast_to(level, lab.shape).astype(np.float32)
    design = _quadratic_design(xs, ys, width, height)
    keep = np.ones(len(values), dtype=bool)
    coef = np.zeros((design.shape[1], 3))
    for _ in range(rounds):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        err = np.abs(values - design @ coef).sum(axis=1)
        mad = np.median(err[keep])
        new_keep = err <= max(3.0 * 1.4826 * mad, 2.0)
        if new_keep.sum() < 24 or (new_keep == keep).all():
            break
        keep = new_keep
    gy, gx = np.mgrid[0:height, 0:width]
    full = _quadratic_design(gx.ravel(), gy.ravel(), width, height) @ coef
    return full.reshape(height, width, 3).astype(np.float32)


def _quadratic_design(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    x = 2.0 * xs / max(width - 1, 1) - 1.0
    y = 2.0 * ys / max(height - 1, 1) - 1.0
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _clusters(points: np.ndarray, k: int = CLUSTERS, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic k-means of residual colours: centres and per-channel spreads (with a noise floor)."""
    points = points.astype(np.float32)
    if len(points) > 6000:
        points = points[np.linspace(0, len(points) - 1, 6000).astype(int)]
    order = np.argsort(points[:, 0] + 0.5 * np.abs(points[:, 1:]).sum(axis=1), kind="stable")
    k = max(1, min(k, len(points)))
    centers = points[order[((np.arange(k) + 0.5) * len(points) / k).astype(int)]].copy()
    labels = np.zeros(len(points), dtype=int)
    for _ in range(iterations):
        labels = ((points[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centers[j] = members.mean(axis=0)
    spreads = np.empty_like(centers)
    for j in range(k):
        members = points[labels == j]
        var = members.var(axis=0) if len(members) > 1 else np.zeros(3, np.float32)
        spreads[j] = np.sqrt(var + NOISE_FLOOR**2)
    used = np.bincount(labels, minlength=k) > 0
    return centers[used], spreads[used]


def _has_enough_seeds(seeds: np.ndarray, fg_points: np.ndarray) -> bool:
    if fg_points.any():
        return True
    opened = cv2.morphologyEx(seeds.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return int(opened.sum()) >= max(4, MIN_SEED_FRACTION * seeds.size)


def _grabcut(small: np.ndarray, seeds: np.ndarray, definite_bg: np.ndarray,
             definite_fg: np.ndarray) -> np.ndarray:
    """GrabCut seeded with probable product / background, or the cleaned seeds if it collapses.

    When the product's colours are also common in the background (grey on gravel), GrabCut can label
    (nearly) everything background; then the seeds are the better mask. A first iteration that shrinks
    the product to its surest core and later ones that regrow it are normal and kept.
    """
    mask = np.full(seeds.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    mask[seeds] = cv2.GC_PR_FGD
    mask[definite_bg] = cv2.GC_BGD
    mask[definite_fg] = cv2.GC_FGD
    image = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
    fallback = cv2.morphologyEx((seeds | definite_fg).astype(np.uint8), cv2.MORPH_CLOSE,
                                np.ones((3, 3), np.uint8)).astype(bool)
    cv2.setRNGSeed(0x5EED)  # GrabCut initialises its colour models with k-means++: keep it deterministic
    try:
        cv2.grabCut(image, mask, None, np.zeros((1, 65)), np.zeros((1, 65)), GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # e.g. a colour model without samples
        return fallback
    result = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    return fallback if result.sum() < COLLAPSE * fallback.sum() else result


def _upscale(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask.copy()
    soft = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR)
    return soft > 127
