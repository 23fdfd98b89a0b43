"""Invisible, keyed, blind watermark codec (weight-free, numpy/opencv).

``embed(image, payload, key, version=...)`` hides a 40-bit ID (v3, the default) or a 64-bit one (v2, v1;
``payload_bits(version)``); ``detect(image, key)`` finds it again (any codec version) after crops, resizes,
thumbnails, recompression, blur, tone changes and small rotations, and for v2 and v3 marks also mirrors, quarter
turns and heavy JPEG/WebP, with a calibrated false-positive probability; ``detect(..., localise=True)`` also maps
where the mark is. See docs/watermark.md.
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
    payload_bits,
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
    "payload_bits",
]
