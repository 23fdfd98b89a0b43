"""Paste the original product back onto any generated image (ours, or a native KSampler graph's).

The generated image is resized to the original's size when the two differ slightly (VAE encoders
crop to multiples of 8); product pixels (mask >= 0.5) are then the original's, bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InvalidInputError
from .seam import blend, match_colors, seam_alpha

MAX_ASPECT_DIFFERENCE = 0.03


def composite_original(generated: np.ndarray, original: np.ndarray, mask: np.ndarray, feather: int = 6,
                       color_match: float = 0.0) -> np.ndarray:
    """``generated`` with ``original``'s product pasted back exactly (a new float32 array, original's size)."""
    height, width = original.shape[:2]
    gh, gw = generated.shape[:2]
    if abs((gw / gh) / (width / height) - 1.0) > MAX_ASPECT_DIFFERENCE:
        raise InvalidInputError(
            f"the generated image is {gw}x{gh} but the original is {width}x{height}; their aspect ratios differ, so "
            "the product cannot be placed back. Generate at the original's aspect ratio.")
    if mask.shape != (height, width):
        raise InvalidInputError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the original {width}x{height}")
    gen = generated[..., :3].astype(np.float32)
    if (gh, gw) != (height, width):
        gen = cv2.resize(gen, (width, height), interpolation=cv2.INTER_CUBIC)
    gen = match_colors(np.clip(gen, 0.0, 1.0), original[..., :3], mask, band=max(2, feather), strength=color_match)
    if original.shape[2] == 4:
        gen = np.concatenate([gen, np.ones_like(gen[..., :1])], axis=2)
    return blend(original.astype(np.float32), gen, seam_alpha(mask, feather))
