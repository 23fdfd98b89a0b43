"""The second paste-back: the full-resolution original product over an upscaled picture."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..inpainting.composite import composite_original


def paste_back(upscaled: np.ndarray, original: np.ndarray, product_alpha: np.ndarray, feather: int = 6
               ) -> np.ndarray:
    """``upscaled`` with ``original``'s product pasted back exactly (a new float32 array of ``original``'s size).

    ``original`` ([H,W,3] or [H,W,4], 0..1) and ``product_alpha`` ([H,W], 1 = product) are the full-resolution
    input; where alpha >= 0.5 the result is ``original`` bit for bit, and outside the product the seam is
    feathered over ``feather`` pixels exactly as the first paste-back does (``inpainting.seam``). An ``upscaled``
    of a slightly different size (rounding) is resized to ``original``'s; a different aspect ratio is an error.
    """
    if original.ndim != 3 or original.shape[2] not in (3, 4):
        raise InvalidInputError(f"the original must be [H,W,3] or [H,W,4], got {original.shape}")
    if product_alpha.shape != original.shape[:2]:
        raise InvalidInputError(f"the product alpha is {product_alpha.shape[1]}x{product_alpha.shape[0]} but the "
                                f"original is {original.shape[1]}x{original.shape[0]}: give the full-resolution mask")
    return composite_original(upscaled, original, product_alpha.astype(np.float32, copy=False), feather=feather)
