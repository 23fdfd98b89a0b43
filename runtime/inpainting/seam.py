"""The seam between the exact product and the generated background.

``seam_alpha`` is 1 on the product (mask >= 0.5) and falls off *outside* it only, so blending can
never touch a product pixel. ``match_colors`` removes the generator's colour cast: it compares the
generated image with the original on a band of product pixels along the seam (where both show the
same product) and corrects the generated image with that per-channel gain and offset, so the new
background's light agrees with the untouched product at the seam.
"""

from __future__ import annotations

import cv2
import numpy as np

PRODUCT_THRESHOLD = 0.5
MAX_GAIN = 1.25
MAX_OFFSET = 0.15


def hard_product(mask: np.ndarray) -> np.ndarray:
    """The pixels that are product, and so copied bit for bit: mask >= 0.5."""
    return mask >= PRODUCT_THRESHOLD


def seam_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """Blend weight of the original: 1 on the product, the mask's own soft edge, and an outward feather."""
    product = hard_product(mask)
    alpha = np.where(product, 1.0, np.clip(mask, 0.0, 1.0)).astype(np.float32)
    if feather > 0 and product.any() and not product.all():
        distance = cv2.distanceTransform((~product).astype(np.uint8), cv2.DIST_L2, 5)
        falloff = np.clip(1.0 - distance / (feather + 1.0), 0.0, 1.0).astype(np.float32)
        alpha = np.maximum(alpha, falloff)
    return alpha


def match_colors(generated: np.ndarray, original: np.ndarray, mask: np.ndarray, band: int,
                 strength: float) -> np.ndarray:
    """``generated`` with its per-channel colour cast along the seam removed (a new array)."""
    product = hard_product(mask)
    if strength <= 0 or not product.any() or product.all():
        return generated
    inner = cv2.distanceTransform(product.astype(np.uint8), cv2.DIST_L2, 5)
    ring = product & (inner <= max(1, band))
    if ring.sum() < 16:
        return generated
    gen, ref = generated[ring], original[ring][:, : generated.shape[-1]]
    gain = np.clip(ref.std(0) / np.maximum(gen.std(0), 1e-4), 1 / MAX_GAIN, MAX_GAIN)
    offset = np.clip(ref.mean(0) - gain * gen.mean(0), -MAX_OFFSET, MAX_OFFSET)
    gain = 1.0 + strength * (gain - 1.0)
    offset = strength * offset
    return np.clip(generated * gain + offset, 0.0, 1.0).astype(np.float32)


def blend(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha*original + (1-alpha)*generated``, and ``original`` itself, bit for bit, where alpha == 1."""
    a = alpha[..., None]
    mixed = (a * original + (1.0 - a) * generated).astype(original.dtype)
    return np.where(a >= 1.0, original, mixed)
