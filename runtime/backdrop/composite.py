"""Paste the original product onto a new background so product pixels stay bit-exact."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

BLOCK = 1 << 20  # values composited at a time (4 MB of float32 per array: the work stays in cache)


def composite_product(image: np.ndarray, alpha: np.ndarray, background: np.ndarray,
                      foreground: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """``alpha*F + (1-alpha)*background`` where ``alpha == 1`` copies ``image`` exactly.

    ``foreground`` is the decontaminated colour estimate for edge pixels (defaults to ``image``);
    it only affects pixels with ``0 < alpha < 1``. Alpha is clipped to 0..1: at or above 1 the pixel is
    ``image``'s, at or below 0 the background's, and only the pixels in between (NaN included) are
    blended. Inputs are never mutated, except ``out``: an array of ``image``'s shape and dtype the caller
    owns (``background`` itself allowed) that receives the result instead of a new copy.
    """
    if image.shape[:2] != alpha.shape or background.shape != image.shape:
        raise InvalidInputError(
            f"image {image.shape}, mask {alpha.shape} and background {background.shape} must share a size"
        )
    fg = image if foreground is None else foreground
    alpha = np.asarray(alpha)
    if out is None:
        out = np.empty(image.shape, dtype=image.dtype)
    elif out.shape != image.shape or out.dtype != image.dtype:
        raise InvalidInputError(f"out {out.shape} {out.dtype} must match the image {image.shape} {image.dtype}")
    # A block of rows at a time (cache-sized, no full-size temporaries): background, then the blended edge,
    # then the exact product pixels. Each block reads background before writing ``out`` (which may be it).
    width = max(1, image.shape[1] * (image.shape[2] if image.ndim == 3 else 1))
    rows = max(1, BLOCK // width)
    for y0 in range(0, image.shape[0], rows):
        y1 = min(image.shape[0], y0 + rows)
        a = alpha[y0:y1]
        core = a >= 1.0
        edge = ~(core | (a <= 0.0))  # 0 < alpha < 1, and NaN
        block = out[y0:y1]
        blended = None
        if edge.any():
            clipped = np.clip(a, 0.0, 1.0).astype(np.float32)[..., None]
            blended = clipped * fg[y0:y1] + (1.0 - clipped) * background[y0:y1]
        if out is not background:
            np.copyto(block, background[y0:y1], casting="unsafe")
        if blended is not None:
            np.copyto(block, blended, where=_per_channel(edge, block), casting="unsafe")
        np.copyto(block, image[y0:y1], where=_per_channel(core, block))
    return out


def _per_channel(mask: np.ndarray, block: np.ndarray) -> np.ndarray:
    """The HxW ``mask`` repeated over ``block``'s channels: ``copyto`` is several times faster with a mask of
    the destination's own shape than with a broadcast one."""
    return np.repeat(mask[..., None], block.shape[2], axis=2) if block.ndim == 3 else mask
