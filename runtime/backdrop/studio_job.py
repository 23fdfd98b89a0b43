"""The weight-free main job for one image: mask -> studio backdrop -> exact product composite."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..masking.product_mask import product_mask, split_channels
from ..masking.types import Prompt, RefineOptions
from .composite import composite_product
from .studio import StudioOptions, render_studio_backdrop
from .styles import StylePreset

EMPTY_CUTOUT = ("the image's alpha channel is fully transparent (no pixel is even half opaque), so as a cut-out it "
                "holds no product to keep and the result would be the backdrop alone. Export the cut-out again "
                "with the product opaque, or save the photo without alpha so the masker finds the product")


@dataclass
class StudioResult:
    image: np.ndarray  # float32 [H,W,3]
    product_alpha: np.ndarray  # float32 [H,W], 1 = product


def studio_background(image: np.ndarray, style: StylePreset, alpha: np.ndarray | None = None, sam=None,
                      prompt: Prompt | None = None, refine: RefineOptions | None = None,
                      studio: StudioOptions | None = None) -> StudioResult:
    """Put the product of ``image`` on ``style``'s studio backdrop. Pixels where alpha == 1 stay exact.

    ``alpha`` (a product mask) skips masking; otherwise SAM or the classical masker makes one. An RGBA
    ``image`` whose alpha is fully transparent is refused (:data:`EMPTY_CUTOUT`) unless ``alpha`` or a
    prompt names a product.
    """
    from ..masking.refine import decontaminate

    rgb = _product_rgb(image)
    if alpha is None:
        if (prompt is None or prompt.is_empty) and is_empty_cutout(image):
            raise InvalidInputError(EMPTY_CUTOUT)
        alpha = product_mask(image, sam=sam, prompt=prompt, refine=refine)
    elif is_empty_cutout(image) and not (np.asarray(alpha) > 0.5).any():
        raise InvalidInputError(EMPTY_CUTOUT)
    backdrop = render_studio_backdrop(rgb.shape[0], rgb.shape[1], style, alpha, studio)
    # rgb is this function's own copy: decontaminate changes only its edge pixels (0 < alpha < 1), never the
    # product pixels copied from it, and the backdrop buffer receives the composite (no full-size copies).
    foreground = decontaminate(rgb, alpha, out=rgb)
    out = composite_product(rgb, alpha, backdrop, foreground=foreground, out=backdrop)
    return StudioResult(image=out, product_alpha=alpha)


def _product_rgb(image: np.ndarray) -> np.ndarray:
    """What ``split_channels`` returns as RGB (a new float32 array: NaN -> 0, clipped to 0..1), in two passes:
    ``fmax`` / ``fmin`` drop NaN, so no ``nan_to_num`` pass is needed (it takes seconds at 48 MP)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 4:
        return split_channels(image)[0]  # raises its own clear error
    colour = arr[..., :1] if arr.shape[2] == 1 else arr[..., :3]
    rgb = np.empty((*arr.shape[:2], 3), np.float32)
    np.fmax(colour, np.float32(0.0), out=rgb, casting="unsafe")  # gray broadcasts to the three channels
    np.fmin(rgb, np.float32(1.0), out=rgb)
    return rgb


def is_empty_cutout(image: np.ndarray) -> bool:
    """True for an [H,W,4] (or [H,W,2]) image whose alpha has no pixel above 0.5: a cut-out with no product."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (2, 4):
        return False
    return not bool((arr[..., -1] > 0.5).any())
