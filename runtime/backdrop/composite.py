"""Paste the original product onto a new background so product pixels stay bit-exact."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


def composite_product(image: np.ndarray, alpha: np.ndarray, background: np.ndarray,
                      foreground: np.ndarray | None = None) -> np.ndarray:
    """``alpha*F + (1-alpha)*background`` where ``alpha == 1`` copies ``image`` exactly.

    ``foreground`` is the decontaminated colour estimate for edge pixels (defaults to ``image``);
    it only affects pixels with ``0 < alpha < 1``. Inputs are never mutated.
    """
    if image.shape[:2] != alpha.shape or background.shape != image.shape:
        raise InvalidInputError(
            f"image {image.shape}, mask {alpha.shape} and background {background.shape} must share a size"
        )
    fg = image if foreground is None else foreground
    a = np.clip(alpha, 0.0, 1.0).astype(np.float32)[..., None]
    blended = a * fg + (1.0 - a) * background
    return np.where(a >= 1.0, image, blended).astype(image.dtype, copy=False)
