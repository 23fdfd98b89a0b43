"""What the captioner is shown: a crop of the product, and the photo with the product filled out.

Captioning the background on the full photo makes a VLM describe the product; filling the product
region with the surrounding colours (a normalised blur) makes it describe the setting instead.
All functions copy: inputs are never modified.
"""

from __future__ import annotations

import numpy as np

MAX_SIDE = 1024  # VLM processors resize far below this anyway
PRODUCT_THRESHOLD = 0.5
CROP_MARGIN = 0.12  # of the box side, each way
NEUTRAL_GREY = 0.5


def limit_size(rgb: np.ndarray, alpha: np.ndarray | None, max_side: int = MAX_SIDE
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Downscale (area) so the longer side is at most ``max_side``; copies either way."""
    import cv2

    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return rgb.copy(), None if alpha is None else alpha.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small_alpha = None if alpha is None else cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    return small, small_alpha


def product_box(alpha: np.ndarray, threshold: float = PRODUCT_THRESHOLD) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends, of the pixels above ``threshold``; None if there are none."""
    ys, xs = np.nonzero(alpha > threshold)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def product_view(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """The product's box plus a margin, with everything outside the product faded to neutral grey.

    Without a mask (or with an empty one) the whole image is returned.
    """
    if alpha is None:
        return rgb.copy()
    box = product_box(alpha)
    if box is None:
        return rgb.copy()
    height, width = alpha.shape
    x0, y0, x1, y1 = box
    pad = max(2, round(CROP_MARGIN * max(x1 - x0, y1 - y0)))
    x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)
    crop = rgb[y0:y1, x0:x1]
    a = np.clip(alpha[y0:y1, x0:x1], 0.0, 1.0)[..., None]
    return (a * crop + (1.0 - a) * NEUTRAL_GREY).astype(np.float32)


def background_view(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """The photo with the product region (slightly grown) filled by a blur of its surroundings."""
    import cv2

    if alpha is None:
        return rgb.copy()
    hole = (alpha > 0.02).astype(np.uint8)
    if not hole.any():
        return rgb.copy()
    height, width = hole.shape
    grow = max(1, round(0.01 * max(height, width)))
    hole = cv2.dilate(hole, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)) > 0
    keep = (~hole).astype(np.float32)
    if keep.sum() < 1:
        return np.full_like(rgb, NEUTRAL_GREY)
    fill = _normalised_blur(rgb, keep)
    out = rgb.copy()
    out[hole] = fill[hole]
    return out


def _normalised_blur(rgb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blur of the weighted pixels divided by the blurred weights, at growing radii until every pixel
    has support; the remaining gaps take the mean kept colour."""
    import cv2

    height, width = weight.shape
    scale = min(1.0, 256.0 / max(height, width))
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb_s = cv2.resize(rgb * weight[..., None], small, interpolation=cv2.INTER_AREA)
    w_s = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
    mean = (rgb * weight[..., None]).sum((0, 1)) / max(float(weight.sum()), 1e-6)
    result = np.empty_like(rgb_s)
    result[:] = mean
    done = np.zeros(w_s.shape, bool)
    for sigma in (max(small) / 32, max(small) / 12, max(small) / 4):
        num = cv2.GaussianBlur(rgb_s, (0, 0), sigma)
        den = cv2.GaussianBlur(w_s, (0, 0), sigma)
        ok = (den > 0.05) & ~done
        result[ok] = num[ok] / den[ok, None]
        done |= ok
    return cv2.resize(result, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def to_pil(rgb: np.ndarray):
    """float [H,W,3] in 0..1 -> PIL RGB image."""
    from PIL import Image

    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
