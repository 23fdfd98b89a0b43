"""Image arrays in and out of the codec: validation, colour/alpha split, adding the mark in the input's dtype.

Accepted: HxW, HxWx1, HxWx2 (gray + alpha), HxWx3 and HxWx4 (RGBA); uint8, uint16, or float32/float64 in
0..1. Alpha is never touched. The codec itself works on the 8-bit scale in float32; uint8 images take a
fast OpenCV path (rounding to nearest, saturating). Inputs are never modified.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InvalidInputError


class ImageTooSmallError(InvalidInputError):
    """The image has fewer pixels than a watermark needs."""


def split(image: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(the input as an array, a view of its colour channels [H,W,1|3]); validates shape and dtype."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        colour = arr[:, :, None]
    elif arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
        colour = arr[:, :, : (1 if arr.shape[2] <= 2 else 3)]
    else:
        raise InvalidInputError(f"{what} expects an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {arr.shape}")
    if arr.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise InvalidInputError(f"{what}: unsupported image dtype {arr.dtype}; use uint8, uint16, float32 or float64")
    if arr.dtype.kind == "f" and not np.isfinite(colour).all():
        raise InvalidInputError(f"{what}: the image holds NaN or infinite values")
    return arr, colour


def check_size(colour: np.ndarray, minimum: int, what: str) -> None:
    h, w = colour.shape[:2]
    if min(h, w) < minimum:
        raise ImageTooSmallError(
            f"{what}: the image is {w}x{h} px, too small to carry a watermark; "
            f"width and height must each be at least {minimum} px"
        )


def to_levels(channel: np.ndarray) -> np.ndarray:
    """One channel as float32 on the 8-bit scale (floats are taken as 0..1 and clipped)."""
    if channel.dtype == np.uint8:
        return channel.astype(np.float32)
    if channel.dtype == np.uint16:
        return channel.astype(np.float32) * np.float32(255.0 / 65535.0)
    return np.clip(channel.astype(np.float32) * np.float32(255.0), 0.0, 255.0)


def extremes(colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightest and darkest channel per pixel, float32 on the 8-bit scale."""
    if colour.shape[2] == 1:
        level = to_levels(colour[:, :, 0])
        return level, level
    r, g, b = colour[:, :, 0], colour[:, :, 1], colour[:, :, 2]
    return to_levels(np.maximum(np.maximum(r, g), b)), to_levels(np.minimum(np.minimum(r, g), b))


def add_to_colour(arr: np.ndarray, colour: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """A new array like ``arr`` whose colour channels are ``colour + delta`` (8-bit levels); alpha copied."""
    channels = colour.shape[2]
    if arr.dtype == np.uint8:
        src = np.ascontiguousarray(colour if channels == 3 else colour[:, :, 0])
        step = cv2.merge([delta] * 3) if channels == 3 else delta
        out = cv2.add(src, step, dtype=cv2.CV_8U).reshape(colour.shape)  # rounds to nearest, saturates
    elif arr.dtype == np.uint16:
        out = colour.astype(np.float32) + delta[:, :, None] * np.float32(65535.0 / 255.0)
        out = np.rint(np.clip(out, 0.0, 65535.0, out=out)).astype(np.uint16)
    else:
        out = np.clip(colour.astype(np.float32), 0.0, 1.0) + delta[:, :, None] * np.float32(1.0 / 255.0)
        out = np.clip(out, 0.0, 1.0, out=out).astype(arr.dtype)
    if arr.ndim == 2:
        return out[:, :, 0]
    if channels == arr.shape[2]:
        return out
    result = arr.copy()
    result[:, :, :channels] = out
    return result
