"""Mask refinement shared by the SAM and classical paths, and edge colour decontamination.

``refine_mask`` turns a raw bool mask into a float alpha (1 = product): fill holes, keep components,
grow/shrink, snap the edge to the image with a guided filter inside a thin band, feather outward.
The eroded core always stays exactly 1.0 and background far from the edge exactly 0.0.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InvalidInputError
from .types import KEEP_MODES, RefineOptions

GUIDED_EPS = 1e-3  # guided filter regulariser for a 0..1 colour guide
GUIDED_MAX_PIXELS = 1_500_000  # larger crops run the guided filter on a subsampled copy (He & Sun 2015)
# The box-averaged coefficients leave a faint tail a few px into the background (a halo on dark
# backdrops); a linear contrast stretch of the filtered alpha removes it: EDGE_LOW -> 0, EDGE_HIGH -> 1.
EDGE_LOW, EDGE_HIGH = 0.15, 0.85
EDGE_PASSES = 3


def refine_mask(raw: np.ndarray, rgb: np.ndarray, options: RefineOptions | None = None) -> np.ndarray:
    """Float32 alpha HxW in 0..1 from a raw HxW mask and its float RGB image (neither is modified)."""
    options = options or RefineOptions()
    mask = _as_bool_mask(raw)
    image = _as_image(rgb, mask.shape)
    if options.fill_holes:
        mask = fill_holes(mask)
    mask = keep_components(mask, options.keep, options.min_component_ratio)
    mask = grow(mask, options.grow_px)
    if options.edge_refine:
        radius = options.edge_radius_px or auto_edge_radius(*mask.shape)
        alpha = refine_edges(mask, image, radius)
    else:
        alpha = mask.astype(np.float32)
    return feather(alpha, options.feather_px)


def auto_edge_radius(height: int, width: int) -> int:
    """Edge band half-width for an image size: about 0.5% of the long side, 3..64 px.

    That is about twice the edge error of a mask computed at ~512 px and upsampled (classical path, SAM).
    """
    return int(np.clip(round(max(height, width) / 200.0), 3, 64))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not reach the image border (4-connected background)."""
    mask = _as_bool_mask(mask)
    out = mask.copy()
    box = _content_box(mask, 1)
    if box is None:
        return out
    sub = mask[box]
    background = (~sub).astype(np.uint8)
    if not background.any():
        return out
    count, labels = cv2.connectedComponents(background, connectivity=4)
    outside = np.zeros(count, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):  # the box has a background frame
        outside[edge] = True                                           # unless it is the image border
    outside[0] = True  # label 0 is the product itself
    out[box] = ~outside[labels] | sub
    return out


def keep_components(mask: np.ndarray, keep: str = "main", min_component_ratio: float = 0.15) -> np.ndarray:
    """Keep 8-connected components: "largest", "all", or "main" (largest + those >= ratio x largest)."""
    mask = _as_bool_mask(mask)
    if keep not in KEEP_MODES:
        raise InvalidInputError(f"keep must be one of {KEEP_MODES}, got {keep!r}")
    box = _content_box(mask, 0)
    if keep == "all" or box is None:
        return mask.copy()
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask[box].astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if keep == "largest":
        chosen = np.zeros(count, dtype=bool)
        chosen[1 + int(areas.argmax())] = True
    else:
        chosen = np.concatenate([[False], areas >= min_component_ratio * int(areas.max())])
    out = np.zeros_like(mask)
    out[box] = chosen[labels]
    return out


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate (px > 0) or erode (px < 0) by exactly |px| pixels with an elliptical kernel.

    The image border does not erode the mask (a product cut by the frame stays cut by the frame).
    """
    mask = _as_bool_mask(mask)
    px = int(px)
    box = _content_box(mask, max(px, 1))
    if px == 0 or box is None:
        return mask.copy()
    op = cv2.dilate if px > 0 else cv2.erode
    out = np.zeros_like(mask)
    out[box] = op(mask[box].astype(np.uint8), _disk(abs(px))).astype(bool)
    return out


def edge_band(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` px of the other class: dilate(mask, r) minus erode(mask, r), Euclidean."""
    mask = _as_bool_mask(mask)
    band = np.zeros_like(mask)
    box = _content_box(mask, radius + 1)
    if box is None:
        return band
    sub = mask[box].astype(np.uint8)
    to_background = cv2.distanceTransform(sub, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_product = cv2.distanceTransform(1 - sub, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    band[box] = (to_background <= radius) & (to_product <= radius)
    return band


def refine_edges(mask: np.ndarray, rgb: np.ndarray, radius: int) -> np.ndarray:
    """Alpha whose transition follows the image inside a band of ``radius`` px around the mask edge.

    Outside the band the result is exactly the binary mask (1.0 core, 0.0 background). Inside it, the
    guided filter runs EDGE_PASSES times, each pass re-thresholding the band at 0.5: a raw edge that is off by
    about half the radius moves onto the image edge instead of only blurring.
    """
    mask = _as_bool_mask(mask)
    radius = max(1, int(radius))
    alpha = mask.astype(np.float32)
    box = _content_box(mask, 3 * radius + 1)  # the band plus the filter's context
    if box is None or mask.all():
        return alpha
    band = edge_band(mask[box], radius)
    guide = np.asarray(rgb, dtype=np.float32)[box]
    src = alpha[box].copy()
    for _ in range(EDGE_PASSES):
        filtered = _guided_alpha(guide, src, radius, band)
        soft = np.clip((filtered - EDGE_LOW) / (EDGE_HIGH - EDGE_LOW), 0.0, 1.0)
        src[band] = soft >= 0.5
    alpha[box][band] = soft
    return alpha


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float = GUIDED_EPS) -> np.ndarray:
    """He et al. (2010) colour guided filter of ``src`` (HxW) by ``guide`` (HxWx3), box filters only."""
    a, b = _guided_coefficients(guide.astype(np.float32), src.astype(np.float32), radius, eps)
    return (a * guide).sum(axis=2) + b


def feather(alpha: np.ndarray, px: float) -> np.ndarray:
    """Soften the edge outward only: a Gaussian fall-off over ``px`` pixels outside alpha >= 0.5.

    Pixels that are already product keep their alpha; nothing beyond ``px`` of the edge changes.
    """
    alpha = np.asarray(alpha, dtype=np.float32)
    solid = alpha >= 0.5
    box = _content_box(solid, int(np.ceil(px)) + 1)
    out = alpha.copy()
    if px <= 0 or box is None or solid.all():
        return out
    dist = cv2.distanceTransform((~solid[box]).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ramp = np.exp(-0.5 * (dist * (3.0 / px)) ** 2).astype(np.float32)
    ramp[dist > px] = 0.0
    out[box] = np.maximum(alpha[box], ramp)
    return out


def decontaminate(rgb: np.ndarray, alpha: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Foreground colours for edge pixels (0 < alpha < 1), so ``alpha*F + (1-alpha)*new_bg`` has no fringe.

    Each edge pixel takes a local average of nearby pure product pixels (alpha == 1), found by push-pull
    normalised convolution; none of the old background's colour is kept. All other pixels are returned
    bit-identical. ``out`` (an array the caller owns, ``rgb`` itself allowed) receives the result instead
    of a new copy: on a large photo that saves a full-size copy.
    """
    image = np.asarray(rgb)
    alpha = np.asarray(alpha, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != alpha.shape:
        raise InvalidInputError(f"rgb {image.shape} and alpha {alpha.shape} do not match")
    if out is None:
        out = image.copy()
    elif out is not image:
        if out.shape != image.shape:
            raise InvalidInputError(f"out {out.shape} must match rgb {image.shape}")
        out[...] = image
    edge = (alpha > 0) & (alpha < 1)
    core = alpha >= 1
    if not edge.any() or not core.any():
        return out
    y0, y1, x0, x1 = _bbox(edge, margin=16, shape=alpha.shape)
    if not core[y0:y1, x0:x1].any():
        y0, y1, x0, x1 = 0, alpha.shape[0], 0, alpha.shape[1]
    estimate = _push_pull(np.asarray(image[y0:y1, x0:x1], dtype=np.float32), core[y0:y1, x0:x1])  # no copy
    crop_edge = edge[y0:y1, x0:x1]
    out[y0:y1, x0:x1][crop_edge] = estimate[crop_edge].astype(out.dtype)
    return out


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InvalidInputError(f"expected an HxW mask, got shape {arr.shape}")
    return arr.astype(bool) if arr.dtype == bool else arr > 0.5


def _as_image(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[:2] != shape:
        raise InvalidInputError(f"the image {arr.shape} does not match the mask {shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32, copy=False)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _bbox(region: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(region.any(axis=1))
    xs = np.flatnonzero(region.any(axis=0))
    return (max(0, ys[0] - margin), min(shape[0], ys[-1] + 1 + margin),
            max(0, xs[0] - margin), min(shape[1], xs[-1] + 1 + margin))


def _content_box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """Slices of the mask's bounding box grown by ``margin`` (clipped to the image); None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = _bbox(mask, margin, mask.shape)
    return slice(y0, y1), slice(x0, x1)


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)


def _guided_coefficients(guide: np.ndarray, src: np.ndarray, radius: int,
                         eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean-filtered linear coefficients (a: HxWx3, b: HxW) of the colour guided filter."""
    mean_i = _box(guide, radius)
    mean_p = _box(src, radius)
    cov_ip = _box(guide * src[..., None], radius) - mean_i * mean_p[..., None]
    var = {}
    for i in range(3):
        for j in range(i, 3):
            var[i, j] = _box(guide[..., i] * guide[..., j], radius) - mean_i[..., i] * mean_i[..., j]
    s00, s01, s02 = var[0, 0] + eps, var[0, 1], var[0, 2]
    s11, s12, s22 = var[1, 1] + eps, var[1, 2], var[2, 2] + eps
    inv = np.stack([
        s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11,
        s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01,
    ], axis=-1)
    det = s00 * inv[..., 0] + s01 * inv[..., 1] + s02 * inv[..., 2]
    c0, c1, c2 = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
    a = np.stack([
        c0 * inv[..., 0] + c1 * inv[..., 1] + c2 * inv[..., 2],
        c0 * inv[..., 1] + c1 * inv[..., 3] + c2 * inv[..., 4],
        c0 * inv[..., 2] + c1 * inv[..., 4] + c2 * inv[..., 5],
    ], axis=-1) / det[..., None]
    b = mean_p - (a * mean_i).sum(axis=2)
    return _box(a, radius), _box(b, radius)


def _guided_alpha(guide: np.ndarray, src: np.ndarray, radius: int, band: np.ndarray) -> np.ndarray:
    """Guided-filter output at the band pixels only; large crops use the fast subsampled variant."""
    height, width = src.shape
    step = max(1, int(np.ceil(np.sqrt(height * width / GUIDED_MAX_PIXELS))))
    if step == 1:
        a, b = _guided_coefficients(guide, src, radius, GUIDED_EPS)
        return _finite_alpha((a[band] * guide[band]).sum(axis=1) + b[band])
    small = (max(1, width // step), max(1, height // step))
    a, b = _guided_coefficients(cv2.resize(guide, small, interpolation=cv2.INTER_AREA),
                                cv2.resize(src, small, interpolation=cv2.INTER_AREA),
                                max(1, round(radius / step)), GUIDED_EPS)
    ys, xs = np.nonzero(band)
    fy = (ys + 0.5) * small[1] / height - 0.5
    fx = (xs + 0.5) * small[0] / width - 0.5
    coef = np.concatenate([a, b[..., None]], axis=2)
    sampled = _bilinear(coef, fy, fx)
    return _finite_alpha((sampled[:, :3] * guide[ys, xs]).sum(axis=1) + sampled[:, 3])


def _finite_alpha(values: np.ndarray) -> np.ndarray:
    """Clip to 0..1; a NaN from a NaN pixel in the guide becomes background rather than spreading."""
    return np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _bilinear(grid: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Bilinear samples (N x C) of an H x W x C float32 grid at fractional (fy, fx), edges clamped."""
    count = len(fy)
    cols = 4096
    rows = max(1, -(-count // cols))  # remap wants both map sides below 32767
    map_x = np.zeros(rows * cols, np.float32)
    map_y = np.zeros(rows * cols, np.float32)
    map_x[:count], map_y[:count] = fx, fy
    sampled = cv2.remap(np.ascontiguousarray(grid, dtype=np.float32), map_x.reshape(rows, cols),
                        map_y.reshape(rows, cols), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return sampled.reshape(rows * cols, -1)[:count]


def _push_pull(rgb: np.ndarray, weight: np.ndarray, levels: int = 32) -> np.ndarray:
    """Estimates, at the unweighted pixels, of a local average of the weighted pixels (normalised
    convolution, coarse to fine). At weighted pixels the result is only the smooth estimate."""
    colour = rgb * weight[..., None].astype(np.float32)
    w = weight.astype(np.float32)
    full_size = (w.shape[1], w.shape[0])
    pyramid = []
    while len(pyramid) < levels and min(w.shape) > 1:
        colour, w = cv2.pyrDown(colour), cv2.pyrDown(w)
        pyramid.append((colour.reshape(*w.shape, 3), w))
    if not pyramid:
        return rgb.astype(np.float32)
    colour, w = pyramid[-1]
    estimate = colour / np.maximum(w, 1e-6)[..., None]
    for colour, w in reversed(pyramid[:-1]):
        up = cv2.pyrUp(estimate, dstsize=(w.shape[1], w.shape[0])).reshape(*w.shape, 3)
        confidence = np.clip(w * 4.0, 0.0, 1.0)[..., None]
        estimate = confidence * colour / np.maximum(w, 1e-6)[..., None] + (1.0 - confidence) * up
    # At full resolution the pixels we fill have no weight of their own: the upsampled estimate is the answer.
    return cv2.pyrUp(estimate, dstsize=full_size).reshape(*weight.shape, 3)
