"""What the detector looks at: the picture's fine detail, with the picture itself removed as far as possible.

The mark is weak next to the host image, so the detector first predicts the host (a Gaussian blur) and keeps
the difference. That difference is then divided by its local RMS and clipped: strong edges cannot dominate,
and JPEG's flattened areas (no mark left) add little noise. The whole detector works on this signal.

With a ``Shaping`` (what the searches use: codec_v2.WEIGHTS) each pixel is then weighted by the mark-to-host ratio
it is expected to have: the amplitude an embedder would give it (``perceptual.amplitude_map``, from the texture the
detector sees) over its local RMS, both per 4 px cell. That is the matched filter's weight for an observation whose
noise was normalised to 1: the busiest areas, where the mark is held at the ceiling while the picture keeps
growing, count less; quieter areas, where the mark stands out, count more, up to WEIGHT_RMS_FLOOR. Measured on the
25 benchmark images marked with v2, sync z against the unweighted residual, median (worst, best): crop to 10% +0.38
(-0.18, +1.87), crop 25% + 0.8x + JPEG 70 +0.24 (-0.17, +4.23), crop 50% + 0.7x + WebP 80 +0.44 (-1.34, +5.17),
0.5x + JPEG 75 +0.10 (-0.22, +0.87), JPEG 20 +0.14 (-0.37, +0.61); without the floor the JPEG cases lost up to 0.9.
The z-score is still taken against the correlation's own spread, so the false-positive calibration does not depend
on the weights.
"""

from __future__ import annotations

import cv2
import numpy as np

from .perceptual import Shaping, amplitude_cells

DETAIL_SIGMA = 1.0   # px: the host is predicted by a Gaussian blur of this width
ENERGY_CELL = 4      # px: local RMS measured on cells of this size, then smoothed over ~3 cells
ENERGY_FLOOR = 1.0   # 8-bit levels squared: keeps near-noiseless areas from being amplified
CLIP = 3.0
WEIGHT_RMS_FLOOR = 2.0  # levels: quieter areas get no more weight (their detail is rounding and compression
                        # noise, and JPEG may have flattened the mark away with it)


def whitened_residual(y: np.ndarray, shaping: Shaping | None = None, texture: np.ndarray | None = None) -> np.ndarray:
    """Local-RMS-normalised high-pass of luma ``y`` (8-bit scale), float32, clipped to +/-CLIP; with
    ``shaping``, weighted by the expected mark-to-host ratio (unit RMS weights; see the module docstring).
    ``texture``: ``perceptual.texture_rms(y)`` for the weights, where the caller has it already."""
    h, w = y.shape
    detail = y - cv2.GaussianBlur(y, (0, 0), DETAIL_SIGMA, borderType=cv2.BORDER_REFLECT)
    cells = (max(1, w // ENERGY_CELL), max(1, h // ENERGY_CELL))
    cell_energy = cv2.resize(detail * detail, cells, interpolation=cv2.INTER_AREA)
    cell_energy = cv2.GaussianBlur(cell_energy, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)
    cell_energy += ENERGY_FLOOR
    energy = cv2.resize(cell_energy, (w, h), interpolation=cv2.INTER_LINEAR)
    out = detail / np.sqrt(energy, out=energy)
    np.clip(out, -CLIP, CLIP, out=out)
    if shaping is not None:  # computed per cell (both maps are smooth there), then interpolated once
        amplitude = cv2.resize(amplitude_cells(y, 1.0, shaping, texture), cells, interpolation=cv2.INTER_AREA)
        weights = amplitude / np.maximum(np.sqrt(cell_energy), WEIGHT_RMS_FLOOR)
        weights *= np.float32(1.0 / (np.sqrt(np.mean(np.square(weights, dtype=np.float64))) + 1e-12))
        out *= cv2.resize(weights, (w, h), interpolation=cv2.INTER_LINEAR)
    return out
