"""``upscale``: a picture to a larger size, with a super-resolution model (tiled) or plain Lanczos.

A model multiplies the size by its own factor (2x, 4x ...); the result is then brought to the exact target size
with Lanczos (or area averaging when the model overshoots), so any target size works with any model. Large
pictures go through the model in tiles with an overlap whose border is thrown away, so memory stays bounded and
the tiles meet without seams.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressFn, report
from .loader import Upscaler

DEFAULT_TILE = 512  # input pixels per tile side
TILE_OVERLAP = 16  # input pixels of context on each side of a tile, cropped away after the model
MAX_SIDE = 65535


def target_size(shape: tuple[int, ...], scale_or_size: float | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the result: ``shape`` times a scale, or an explicit (height, width)."""
    height, width = shape[:2]
    if isinstance(scale_or_size, tuple | list):
        if len(scale_or_size) != 2:
            raise InvalidInputError(f"a target size is (height, width), got {scale_or_size!r}")
        out_h, out_w = (int(v) for v in scale_or_size)
    else:
        scale = float(scale_or_size)
        if not math.isfinite(scale) or scale <= 0:
            raise InvalidInputError(f"the upscale factor must be a positive number, got {scale_or_size!r}")
        out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    if not (1 <= out_h <= MAX_SIDE and 1 <= out_w <= MAX_SIDE):
        raise InvalidInputError(f"the upscale target {out_w}x{out_h} is outside 1..{MAX_SIDE} pixels a side")
    return out_h, out_w


def lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to (height, width): Lanczos (8x8) when enlarging, area averaging when shrinking."""
    out_h, out_w = size
    if image.shape[:2] == (out_h, out_w):
        return image.astype(np.float32, copy=True)
    shrinking = out_h * out_w < image.shape[0] * image.shape[1]
    resized = cv2.resize(image.astype(np.float32, copy=False), (out_w, out_h),
                         interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
    if resized.ndim == 2 and image.ndim == 3:
        resized = resized[..., None]
    return np.clip(resized, 0.0, 1.0)


def upscale(image: np.ndarray, scale_or_size: float | tuple[int, int], model: Upscaler | None = None,
            tile: int = DEFAULT_TILE, progress: ProgressFn | None = None) -> np.ndarray:
    """``image`` (float32 [H,W,3] or [H,W,4] in 0..1) at ``scale_or_size`` (a factor, or (height, width)).

    ``model`` (from :func:`load_upscaler`) runs on the colour channels in tiles of ``tile`` input pixels; without
    one the picture is resized with Lanczos. An alpha channel is always resized with Lanczos. Returns a new
    float32 array; the input is not changed.
    """
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidInputError(f"expected an [H,W,3] or [H,W,4] image, got {image.shape}")
    size = target_size(image.shape, scale_or_size)
    if model is None:
        return lanczos(image, size)
    if tile < 32:
        raise InvalidInputError(f"the upscale tile must be at least 32 pixels, got {tile}")
    rgb = model_upscale(np.clip(image[..., :3], 0.0, 1.0), model, tile, progress)
    out = lanczos(rgb, size)
    if image.shape[2] == 4:
        out = np.concatenate([out, lanczos(image[..., 3:], size)], axis=2)
    return out


def model_upscale(rgb: np.ndarray, model: Upscaler, tile: int, progress: ProgressFn | None = None) -> np.ndarray:
    """``rgb`` through the model at its own scale, tile by tile (each with TILE_OVERLAP pixels of context)."""
    import torch

    height, width = rgb.shape[:2]
    s = model.scale
    out = np.empty((height * s, width * s, 3), np.float32)
    rows, cols = range(0, height, tile), range(0, width, tile)
    total, done = len(rows) * len(cols), 0
    with torch.inference_mode():
        for y0 in rows:
            for x0 in cols:
                y1, x1 = min(height, y0 + tile), min(width, x0 + tile)
                py0, px0 = max(0, y0 - TILE_OVERLAP), max(0, x0 - TILE_OVERLAP)
                py1, px1 = min(height, y1 + TILE_OVERLAP), min(width, x1 + TILE_OVERLAP)
                result = model.run(rgb[py0:py1, px0:px1])
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[y0 * s:y1 * s, x0 * s:x1 * s] = result[oy:oy + (y1 - y0) * s, ox:ox + (x1 - x0) * s]
                done += 1
                report(progress, done, total)
    return out
