"""Generate small, deliver at full size: the photo reduced for generation, then upscaled and pasted back again.

A 3000 px photo is generated at about the model's working size; :func:`shrink_for_generation` gives that smaller
copy (and its product alpha), and :func:`restore_full_resolution` upscales each generated picture to the photo's
own canvas and pastes the full-resolution product back, so product pixels are the input's bit for bit at the
delivered size. An outpaint canvas is rebuilt at full resolution the way generation builds it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import InvalidInputError
from ..inpainting.geometry import outpaint_canvas
from .loader import Upscaler
from .paste_back import paste_back
from .resize import upscale

UPSCALE_TO = ("original", "2x", "3x")
MIN_WORKING_SIDE = 64


def working_size(height: int, width: int, upscale_to: str, resolution: int) -> tuple[int, int]:
    """The size generation runs at, for a photo delivered at (height, width).

    ``original``: reduced so its geometric side is ``resolution`` (the model's working size; no change for a
    photo already that small); ``2x`` / ``3x``: a half or a third of the photo's size (Canvas generates small
    and upscales 3x).
    """
    if upscale_to not in UPSCALE_TO:
        raise InvalidInputError(f"upscale-to must be one of {', '.join(UPSCALE_TO)}, got {upscale_to!r}")
    factor = min(1.0, resolution / math.sqrt(height * width)) if upscale_to == "original" else 1 / int(upscale_to[0])
    small_h, small_w = round(height * factor), round(width * factor)
    if min(small_h, small_w) < MIN_WORKING_SIDE:
        if upscale_to != "original":
            raise InvalidInputError(f"the photo is {width}x{height}: at 1/{upscale_to[0]} its size it would be "
                                    f"{small_w}x{small_h}, below {MIN_WORKING_SIDE} px; use --upscale-to original")
        return height, width
    return small_h, small_w


def shrink_for_generation(image: np.ndarray, alpha: np.ndarray, size: tuple[int, int]
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and its product ``alpha`` area-averaged to ``size`` (new arrays; the same values when unchanged)."""
    if image.shape[:2] == size:
        return image, alpha
    dsize = (size[1], size[0])
    small = cv2.resize(image.astype(np.float32, copy=False), dsize, interpolation=cv2.INTER_AREA)
    small_alpha = cv2.resize(alpha.astype(np.float32, copy=False), dsize, interpolation=cv2.INTER_AREA)
    return small, np.clip(small_alpha, 0.0, 1.0)


def restore_full_resolution(generated: list[np.ndarray], original: np.ndarray, alpha: np.ndarray, outpaint: str,
                            model: Upscaler | None = None, feather: int = 6) -> tuple[list[np.ndarray], np.ndarray]:
    """Each generated picture upscaled to the full-resolution canvas with ``original``'s product pasted back.

    ``original`` and ``alpha`` are the photo as read and its product alpha (1 = product); ``outpaint`` is the
    generation's outpaint aspect ("none" or W:H). Returns the pictures and the product alpha on the full canvas.
    """
    height, width = original.shape[:2]
    canvas_h, canvas_w, oy, ox = outpaint_canvas(height, width, outpaint)
    canvas_alpha = np.zeros((canvas_h, canvas_w), np.float32)
    canvas_alpha[oy:oy + height, ox:ox + width] = np.clip(alpha, 0.0, 1.0)
    out = []
    for picture in generated:
        big = upscale(picture, (canvas_h, canvas_w), model)
        if big.shape[2] != original.shape[2]:
            raise InvalidInputError(f"the generated picture has {big.shape[2]} channels, the photo "
                                    f"{original.shape[2]}")
        # the photo on the canvas; the outpainted margin is the upscaled picture, so the feather is a no-op there
        canvas = big.copy()
        canvas[oy:oy + height, ox:ox + width] = original
        out.append(paste_back(big, canvas, canvas_alpha, feather=feather))
    return out, canvas_alpha
