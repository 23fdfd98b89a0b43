"""Invisible, keyed, blind watermark codec (weight-free, numpy/opencv).

``embed(image, payload, key, version=...)`` hides a 64-bit ID; ``detect(image, key)`` finds it again (either
codec version) after crops, resizes, recompression, blur, tone changes and small rotations, and for v2 marks
also mirrors, quarter turns, thumbnails and heavy JPEG/WebP, with a calibrated false-positive probability;
``detect(..., localise=True)`` also maps where the mark is. See docs/watermark.md.
"""

from .codec import (
    DEFAULT_VERSION,
    MIN_DETECT_SIDE,
    MIN_SIDE,
    PAYLOAD_BITS,
    VERSIONS,
    AlreadyWatermarkedError,
    Detection,
    ImageTooSmallError,
    detect,
    embed,
    is_marked,
)
from .localisation import PresenceMap

__all__ = [
    "DEFAULT_VERSION",
    "MIN_DETECT_SIDE",
    "MIN_SIDE",
    "PAYLOAD_BITS",
    "VERSIONS",
    "AlreadyWatermarkedError",
    "Detection",
    "ImageTooSmallError",
    "PresenceMap",
    "detect",
    "embed",
    "is_marked",
]
