"""Invisible, keyed, blind watermark codec (weight-free, numpy/opencv).

``embed(image, payload, key)`` hides a 64-bit ID; ``detect(image, key)`` finds it again after crops, resizes,
recompression, blur, tone changes and small rotations, with a calibrated false-positive probability.
"""

from .codec import (
    MIN_DETECT_SIDE,
    MIN_SIDE,
    PAYLOAD_BITS,
    AlreadyWatermarkedError,
    Detection,
    ImageTooSmallError,
    detect,
    embed,
    is_marked,
)

__all__ = [
    "MIN_DETECT_SIDE",
    "MIN_SIDE",
    "PAYLOAD_BITS",
    "AlreadyWatermarkedError",
    "Detection",
    "ImageTooSmallError",
    "detect",
    "embed",
    "is_marked",
]
