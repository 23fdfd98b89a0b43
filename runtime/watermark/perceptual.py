"""Perceptual shaping of the mark: how strong it may be at each pixel, and adding it without clipping.

The mark is a luminance change (the same delta on R, G and B: no colour cast). Its amplitude follows local
*texture*, measured on 4x4 blocks and eroded so that a flat area next to an edge (a product silhouette on
a white sweep) gets the flat-area floor and not the edge's strength: busy regions hide a strong mark, flat
ones carry a faint, fine grain of about one 8-bit level. The texture gain is the largest (up to MAX_GAIN)
that keeps the mark's RMS at TARGET_RMS, so PSNR stays >= 40 dB at strength 1, rounding included.

Near white (or black) a +/- delta would clip and lose its positive (negative) half, so the pixel is first
moved just enough to leave room for the full swing: a shift of at most |delta|.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FLOOR = 0.9          # 8-bit levels: amplitude in perfectly flat areas
MAX_GAIN = 0.7       # at most this much amplitude per level of local texture RMS
CEILING = 6.0        # 8-bit levels: amplitude in the busiest areas
TARGET_RMS = 2.4     # 8-bit levels: the mark's RMS where texture allows (PSNR ~40.3 dB, rounding included)
BLOCK = 4            # texture is measured on BLOCK x BLOCK cells


def luma(colour: np.ndarray) -> np.ndarray:
    """Rec. 601 luma, float32 on the 8-bit scale, of uint8/uint16/float (0..1) [H,W,1] or [H,W,3] channels."""
    scale = {np.dtype(np.uint8): 1.0, np.dtype(np.uint16): 255.0 / 65535.0}.get(colour.dtype, 255.0)
    if colour.shape[2] == 1:
        y = colour[:, :, 0].astype(np.float32)
    elif colour.dtype == np.uint8:
        return cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_RGB2GRAY).astype(np.float32)
    else:
        y = cv2.transform(np.ascontiguousarray(colour, dtype=np.float32),
                          np.array([[0.299, 0.587, 0.114]], dtype=np.float32))
    if scale != 1.0:
        y *= np.float32(scale)
    if colour.dtype.kind == "f":
        np.clip(y, 0.0, 255.0, out=y)
    return y


def texture_rms(y: np.ndarray) -> np.ndarray:
    """Local RMS of fine detail per BLOCK cell, eroded over neighbouring cells: [ceil(H/4), ceil(W/4)]."""
    h, w = y.shape
    detail = y - cv2.blur(y, (3, 3), borderType=cv2.BORDER_REFLECT)
    small = cv2.resize(detail * detail, (-(-w // BLOCK), -(-h // BLOCK)), interpolation=cv2.INTER_AREA)
    small = cv2.erode(small, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    energy = cv2.blur(small, (3, 3), borderType=cv2.BORDER_REFLECT)
    # a box filter's running sums can leave -1e-9 where the detail is exactly 0 (a black border): no NaN
    return np.sqrt(np.maximum(energy, 0.0, out=energy))


@dataclass(frozen=True)
class Shaping:
    """How the mark's amplitude follows texture: ``floor + gain * texture`` (8-bit levels), at most ``ceiling``,
    the gain at most ``max_gain`` and chosen so the RMS stays at ``target_rms``."""

    floor: float = FLOOR
    max_gain: float = MAX_GAIN
    ceiling: float = CEILING
    target_rms: float = TARGET_RMS


V1_SHAPING = Shaping()


def _rms(texture: np.ndarray, gain: float, shaping: Shaping = V1_SHAPING) -> float:
    amp = np.clip(shaping.floor + gain * texture, shaping.floor, shaping.ceiling)
    return float(np.sqrt(np.mean(amp * amp)))


def amplitude_map(y: np.ndarray, strength: float, shaping: Shaping = V1_SHAPING,
                  texture: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel amplitude (8-bit levels) of the unit-RMS pattern, float32 [H,W].

    ``floor + gain * texture`` clipped to the ceiling, with the largest ``gain <= max_gain`` that keeps the
    RMS at or under the target (found by bisection on the block map), then times ``strength``.
    ``texture``: ``texture_rms(y)``, where the caller has it already.
    """
    h, w = y.shape
    return cv2.resize(amplitude_cells(y, strength, shaping, texture), (w, h), interpolation=cv2.INTER_LINEAR)


def amplitude_cells(y: np.ndarray, strength: float, shaping: Shaping = V1_SHAPING,
                    texture: np.ndarray | None = None) -> np.ndarray:
    """``amplitude_map`` per BLOCK cell, before it is interpolated to pixels: [ceil(H/4), ceil(W/4)]."""
    if texture is None:
        texture = texture_rms(y)
    gain = shaping.max_gain
    if _rms(texture, gain, shaping) > shaping.target_rms:
        lo, hi = 0.0, shaping.max_gain
        for _ in range(14):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _rms(texture, mid, shaping) <= shaping.target_rms else (lo, mid)
        gain = lo
    small = np.clip(shaping.floor + gain * texture, shaping.floor, shaping.ceiling)
    return small * np.float32(strength)


def headroom_shift(high: np.ndarray, low: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Per-pixel offset (8-bit levels) so that every channel plus ``delta`` stays inside 0..255.

    ``high``/``low`` are the brightest/darkest channel. A pixel closer than |delta| to white moves down by
    the difference (to black: up), so the full +/- swing survives instead of being clipped to one side.
    """
    swing = np.abs(delta)
    up = np.subtract(swing, low)
    np.maximum(up, 0.0, out=up)
    swing += high
    swing -= 255.0
    np.maximum(swing, 0.0, out=swing)
    up -= swing
    return up
