"""What the detector looks at: the picture's fine detail, with the picture itself removed as far as possible.

The mark is weak next to the host image, so the detector first predicts the host (a Gaussian blur) and keeps
the difference. That difference is then divided by its local RMS and clipped: every region gets the same
weight whatever its contrast, strong edges cannot dominate, and JPEG's flattened areas (no mark left) add
little noise. The whole detector works on this signal.
"""

from __future__ import annotations

import cv2
import numpy as np

DETAIL_SIGMA = 1.0   # px: the host is predicted by a Gaussian blur of this width
ENERGY_CELL = 4      # px: local RMS measured on cells of this size, then smoothed over ~3 cells
ENERGY_FLOOR = 1.0   # 8-bit levels squared: keeps near-noiseless areas from being amplified
CLIP = 3.0


def whitened_residual(y: np.ndarray) -> np.ndarray:
    """Local-RMS-normalised high-pass of luma ``y`` (8-bit scale), float32, clipped to +/-CLIP."""
    h, w = y.shape
    detail = y - cv2.GaussianBlur(y, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REFLECT)
    cells = (max(1, w // ENERGY_CELL), max(1, h // ENERGY_CELL))
    energy = cv2.resize(detail * detail, cells, interpolation=cv2.INTER_AREA)
    energy = cv2.GaussianBlur(energy, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)
    energy = cv2.resize(energy, (w, h), interpolation=cv2.INTER_LINEAR)
    energy += ENERGY_FLOOR
    out = detail / np.sqrt(energy, out=energy)
    return np.clip(out, -CLIP, CLIP, out=out)
