"""The measurable defects of a generated background, each a plain number (0 = none; larger = worse).

* ``seam``: a contour running along the product edge, a little way out (the paste-back or the inpainting border).
  The colour gradient across the contour (Lab, ΔE per pixel, projected on the direction away from the product)
  is averaged over each 1-pixel-wide ring from just clear of the edge (1.5 px; 2.5 px when the picture was
  reduced for analysis) to SEAM_BAND units out; the strongest ring minus the same
  average over a reference ring further out (REFERENCE_RING) is the score. Averaging along the whole contour
  keeps texture and props (gradients in every direction) from reading as a seam.
* ``leakage``: product colour bleeding into the background beside the edge. Each pixel of the near ring is placed
  on the line from its nearest background colour (k-means of the reference ring) to a product colour (k-means of
  the product's inner pixels): how far along it sits (0 = pure background, 1 = product colour), counted when the
  pixel lies close to that line. The mean over the near ring minus the same over the reference ring.
* ``cast``: the background's mean chroma (a*, b* of the pixels beyond CAST_FROM units) against the style's
  palette: its distance in ΔE to the palette's chroma region: the convex hull of the wall and floor colours, at full
  and at SHADE_CHROMA of their chroma (light and shadow change chroma more than hue), stretched ACCENT_REACH of the
  way toward the accent (props cover a small part of a background, so the accent moves its mean only a little).
  Without a palette the reference is given by the caller (``rank_candidates`` uses the candidates' median chroma).
* ``clutter``: edges next to the product that are not seam-like: pixels whose colour gradient is strong (above
  CLUTTER_MIN_EDGE ΔE/px and above 1.5x the far background's 98th percentile, so texture sets the bar) and not
  pointing away from the product; their share of the near ring minus their share of the far background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from .regions import Regions, to_lab

SEAM_BAND = 3.0  # units out from the product
REFERENCE_RING = (6.0, 14.0)
NEAR_RING = 3.0
CLUTTER_RING = 5.0
CLUTTER_FAR = 8.0
CAST_FROM = 2.0
SHADE_CHROMA = 0.6
ACCENT_REACH = 0.25
ALONG_CONTOUR = 0.9  # |cos| between an edge's gradient and the direction away from the product: seam-like above
CLUTTER_MIN_EDGE = 2.0  # ΔE per pixel: weaker changes are never an object's edge
CLUTTER_PERCENTILE = 98.0
CLUTTER_TEXTURE_FACTOR = 1.5
MIN_PIXELS = 32
KMEANS_K = 6
KMEANS_SAMPLES = 4000
KMEANS_ITERATIONS = 20
MIN_COLOUR_GAP = 12.0  # ΔE between a background and a product colour for the pair to tell leakage apart


def lab_gradients(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel x and y derivatives of a Lab picture (ΔE units per pixel), each [h,w,3]."""
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    return gx, gy


def seam_visibility(gradients: tuple[np.ndarray, np.ndarray], regions: Regions) -> float:
    """Strongest across-contour colour step in the band beside the edge, over the reference (ΔE per pixel)."""
    if regions.empty:
        return 0.0
    across = _across_contour(gradients, regions)
    band = regions.beside_edge(SEAM_BAND)
    reference = _ring_or_rest(regions, *REFERENCE_RING)
    if band.sum() < MIN_PIXELS or reference.sum() < MIN_PIXELS:
        return 0.0
    bins = np.rint(regions.outside[band]).astype(np.int64)
    sums = np.bincount(bins, weights=across[band])
    counts = np.bincount(bins)
    filled = counts >= max(8, 0.25 * counts.max())
    profile = sums[filled] / counts[filled]
    return max(0.0, float(profile.max() - across[reference].mean()))


def colour_leakage(lab: np.ndarray, regions: Regions) -> float:
    """Mean product-colour share of the near ring's pixels, over the same in the reference ring (0..1)."""
    if regions.empty:
        return 0.0
    inner = regions.inside >= 2.0
    if inner.sum() < MIN_PIXELS:
        inner = regions.product
    reference = _ring_or_rest(regions, *REFERENCE_RING)
    near = regions.beside_edge(NEAR_RING)
    if near.sum() < MIN_PIXELS or reference.sum() < MIN_PIXELS:
        return 0.0
    product_colours = _centres(lab[inner])
    background_colours = _centres(lab[reference])
    share_near = _product_share(lab[near], background_colours, product_colours)
    share_far = _product_share(_sample(lab[reference]), background_colours, product_colours)
    return max(0.0, float(share_near.mean() - share_far.mean()))


def background_chroma(lab: np.ndarray, regions: Regions) -> np.ndarray:
    """Mean (a*, b*) of the background beyond CAST_FROM units (the whole picture when there is no product)."""
    background = regions.outside > CAST_FROM * regions.unit
    if regions.empty or background.sum() < MIN_PIXELS:
        background = ~regions.product if (~regions.product).sum() >= MIN_PIXELS else np.ones_like(regions.product)
    return lab[background][:, 1:].mean(0).astype(np.float64)


def palette_chroma(palette: Mapping[str, Sequence[float]] | Sequence[Sequence[float]]) -> np.ndarray:
    """The palette's chroma region as (a*, b*) points (its convex hull is the region).

    A style palette ({"wall", "floor", "accent"}): wall and floor at full and SHADE_CHROMA chroma, and a point
    ACCENT_REACH of the way from their middle to the accent. A plain list of colours: each at full and
    SHADE_CHROMA chroma.
    """
    accent = None
    if isinstance(palette, Mapping):
        colours = [palette[k] for k in palette if k != "accent"] or list(palette.values())
        accent = palette.get("accent") if len(colours) < len(palette) else None
    else:
        colours = list(palette)
    ab = _chroma_of(colours)
    points = [ab, ab * SHADE_CHROMA]
    if accent is not None:
        middle = ab.mean(0)
        points.append((middle + ACCENT_REACH * (_chroma_of([accent])[0] - middle))[None])
    return np.concatenate(points)


def _chroma_of(colours: Sequence[Sequence[float]]) -> np.ndarray:
    rgb = np.asarray(colours, np.float32).reshape(1, -1, 3)
    return to_lab(np.clip(rgb, 0.0, 1.0))[0, :, 1:].astype(np.float64)


def cast_distance(chroma: np.ndarray, reference: np.ndarray) -> float:
    """ΔE (in a*, b*) from ``chroma`` to the convex hull of the ``reference`` points (0 inside it)."""
    points = np.asarray(reference, np.float64).reshape(-1, 2)
    if len(points) == 1:
        return float(np.hypot(*(chroma - points[0])))
    hull = cv2.convexHull(points.astype(np.float32))
    if len(hull) >= 3:
        inside = cv2.pointPolygonTest(hull, (float(chroma[0]), float(chroma[1])), True)
        return max(0.0, -float(inside))
    ends = hull.reshape(-1, 2).astype(np.float64)  # a segment (or one point): distance to it
    a, b = ends[0], ends[-1]
    span = b - a
    t = 0.0 if not span.any() else float(np.clip(np.dot(chroma - a, span) / np.dot(span, span), 0.0, 1.0))
    return float(np.hypot(*(chroma - (a + t * span))))


def clutter(gradients: tuple[np.ndarray, np.ndarray], regions: Regions) -> float:
    """Share of the ring beside the product holding strong non-seam edges, over the same share far out."""
    if regions.empty:
        return 0.0
    near = regions.beside_edge(CLUTTER_RING)
    far = regions.outside > CLUTTER_FAR * regions.unit
    if near.sum() < MIN_PIXELS:
        return 0.0
    gx, gy = gradients
    strength = np.sqrt((gx ** 2 + gy ** 2).sum(-1))
    threshold = CLUTTER_MIN_EDGE
    if far.sum() >= MIN_PIXELS:  # texture sets the bar: an edge must stand out from the far background's
        threshold = max(threshold, CLUTTER_TEXTURE_FACTOR * float(np.percentile(strength[far], CLUTTER_PERCENTILE)))
    edges = (strength > threshold) & (_across_contour(gradients, regions) < ALONG_CONTOUR * strength)
    far_share = float(edges[far].mean()) if far.sum() >= MIN_PIXELS else 0.0
    return max(0.0, float(edges[near].mean()) - far_share)


def _across_contour(gradients: tuple[np.ndarray, np.ndarray], regions: Regions) -> np.ndarray:
    """Colour change per pixel in the direction away from the product (ΔE, all three Lab channels)."""
    gx, gy = gradients
    nx, ny = regions.normal
    projected = gx * nx[..., None] + gy * ny[..., None]
    return np.sqrt((projected ** 2).sum(-1))


def _ring_or_rest(regions: Regions, inner: float, outer: float) -> np.ndarray:
    """The ring, or everything beyond ``inner`` / 2 units when the ring is too small (a product filling the frame)."""
    ring = regions.ring(inner, outer)
    if ring.sum() >= MIN_PIXELS:
        return ring
    return regions.outside > 0.5 * inner * regions.unit


def _sample(pixels: np.ndarray) -> np.ndarray:
    """At most KMEANS_SAMPLES pixels, evenly strided (deterministic)."""
    step = max(1, len(pixels) // KMEANS_SAMPLES)
    return pixels[::step]


def _centres(pixels: np.ndarray) -> np.ndarray:
    """Up to KMEANS_K main colours of ``pixels``: k-means from farthest-point starts (deterministic, no global RNG);
    clusters holding under 2 % of the pixels are dropped."""
    data = _sample(pixels).astype(np.float64)
    if len(data) <= 1:
        return data[:1]
    centres = [data.mean(0)]
    for _ in range(min(KMEANS_K, len(data)) - 1):
        gap = ((data[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(1)
        if gap.max() <= 1e-6:
            break
        centres.append(data[int(np.argmax(gap))])
    centres = np.asarray(centres)
    for _ in range(KMEANS_ITERATIONS):
        labels = ((data[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        moved = np.asarray([data[labels == k].mean(0) if (labels == k).any() else centres[k]
                            for k in range(len(centres))])
        if np.abs(moved - centres).max() < 0.5:
            centres = moved
            break
        centres = moved
    counts = np.bincount(((data[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1), minlength=len(centres))
    used = counts >= max(2, 0.02 * len(data))
    return centres[used] if used.any() else centres


def _product_share(pixels: np.ndarray, background: np.ndarray, product: np.ndarray) -> np.ndarray:
    """Per pixel: how far along the line from its nearest background colour to a product colour it sits (0..1),
    for the product colour that explains it best; 0 where no such line passes close to the pixel."""
    x = pixels.astype(np.float64)
    nearest = np.argmin(((x[:, None, :] - background[None]) ** 2).sum(-1), axis=1)
    base = background[nearest]  # [N,3]
    span = product[None, :, :] - base[:, None, :]  # [N,K,3]
    length2 = (span ** 2).sum(-1)
    offset = x - base
    t = np.clip((offset[:, None, :] * span).sum(-1) / np.maximum(length2, 1e-9), 0.0, 1.0)
    residual = np.sqrt(((offset[:, None, :] - t[..., None] * span) ** 2).sum(-1))
    length = np.sqrt(length2)
    close = (length >= MIN_COLOUR_GAP) & (residual <= np.maximum(3.0, 0.25 * length))
    return np.where(close, t, 0.0).max(axis=1)
