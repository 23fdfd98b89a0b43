"""Paste the original product onto a new background so product pixels stay bit-exact."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


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
    edge = ~((alpha >= 1.0) | (alpha <= 0.0))
    ys, xs = np.nonzero(edge)
    a = np.clip(alpha[ys, xs], 0.0, 1.0).astype(np.float32)[:, None]
    blended = a * fg[ys, xs] + (1.0 - a) * background[ys, xs]  # read before ``out`` (maybe background) changes
    if out is None:
        out = np.array(background, dtype=image.dtype, copy=True)
    elif out.shape != image.shape or out.dtype != image.dtype:
        raise InvalidInputError(f"out {out.shape} {out.dtype} must match the image {image.shape} {image.dtype}")
    elif out is not background:
        out[...] = background
    core = alpha >= 1.0
    out[core] = image[core]
    out[ys, xs] = blended.astype(image.dtype, copy=False)
    return out
