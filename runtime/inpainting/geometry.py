"""Where the model works: outpaint canvas, crop around the background, working resolution.

The crop is resized with its aspect ratio kept exactly and padded up to a multiple of the model's
size step; the padding is marked for regeneration and cut off again afterwards, so nothing is
stretched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError

OUTPAINT_CHOICES = ("none", "1:1", "4:5", "5:4", "3:4", "4:3", "2:3", "3:2", "9:16", "16:9")
FAMILY_RESOLUTION = {"sd15": 512, "sdxl": 1024, "flux-fill": 1024, "flux-kontext": 1024, "qwen-image-edit": 1024}
SIZE_STEP = 64  # SD UNets: 8x VAE and three 2x downsamplings
# FLUX and Qwen-Image-Edit: 8x VAE and 2x2 latent patches
FAMILY_SIZE_STEP = {"flux-fill": 16, "flux-kontext": 16, "qwen-image-edit": 16}
CONTEXT_FRACTION = 0.15  # extra context around the background's bounding box, per side


@dataclass(frozen=True)
class CanvasPlan:
    canvas_h: int
    canvas_w: int
    offset_y: int  # where the input image sits on the canvas
    offset_x: int
    crop: tuple[int, int, int, int]  # y0, x0, y1, x1 on the canvas: the region the model sees
    content_h: int  # the crop resized, aspect kept
    content_w: int
    work_h: int  # content padded up to multiples of the family's size step
    work_w: int


def parse_aspect(aspect: str) -> tuple[float, float] | None:
    """``"16:9"`` -> (16, 9); ``"none"``/empty -> None."""
    if not aspect or aspect.strip().lower() in ("none", "keep"):
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*", aspect)
    if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
        raise InvalidInputError(f"outpaint aspect {aspect!r} is not W:H (for example 4:5 or 16:9)")
    return float(match.group(1)), float(match.group(2))


def outpaint_canvas(height: int, width: int, aspect: str) -> tuple[int, int, int, int]:
    """(canvas_h, canvas_w, offset_y, offset_x): the smallest centred canvas of ``aspect`` holding the image."""
    ratio = parse_aspect(aspect)
    if ratio is None:
        return height, width, 0, 0
    target = ratio[0] / ratio[1]
    if width / height < target:
        canvas_h, canvas_w = height, max(width, round(height * target))
    else:
        canvas_h, canvas_w = max(height, round(width / target)), width
    return canvas_h, canvas_w, (canvas_h - height) // 2, (canvas_w - width) // 2


def plan_canvas(regenerate: np.ndarray, offset: tuple[int, int], canvas: tuple[int, int],
                resolution: int, size_step: int = SIZE_STEP) -> CanvasPlan:
    """Plan the crop and working size for a canvas whose regenerate-mask is ``regenerate`` ([H,W] bool).

    The working size is a multiple of ``size_step`` (the model family's, ``FAMILY_SIZE_STEP``).
    """
    canvas_h, canvas_w = canvas
    ys, xs = np.nonzero(regenerate)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    pad_y = max(16, math.ceil((y1 - y0) * CONTEXT_FRACTION))
    pad_x = max(16, math.ceil((x1 - x0) * CONTEXT_FRACTION))
    y0, y1 = max(0, y0 - pad_y), min(canvas_h, y1 + pad_y)
    x0, x1 = max(0, x0 - pad_x), min(canvas_w, x1 + pad_x)
    crop_h, crop_w = y1 - y0, x1 - x0
    scale = resolution / math.sqrt(crop_h * crop_w)
    content_h, content_w = max(size_step, round(crop_h * scale)), max(size_step, round(crop_w * scale))
    work_h = math.ceil(content_h / size_step) * size_step
    work_w = math.ceil(content_w / size_step) * size_step
    return CanvasPlan(canvas_h, canvas_w, offset[0], offset[1], (y0, x0, y1, x1), content_h, content_w,
                      work_h, work_w)


def check_mask_aspect(mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> None:
    """A mask of another size is resized only when it has the image's aspect ratio (within 2%)."""
    (mh, mw), (ih, iw) = mask_hw, image_hw
    if (mh, mw) != (ih, iw) and abs((mw / mh) / (iw / ih) - 1.0) > 0.02:
        raise InvalidInputError(
            f"the mask is {mw}x{mh} but the image is {iw}x{ih}; a mask of another aspect ratio cannot be "
            "aligned with the image. Make the mask from this image (or resize both the same way).")
