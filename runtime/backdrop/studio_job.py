"""The weight-free main job for one image: mask -> studio backdrop -> exact product composite."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..masking.product_mask import product_mask, split_channels
from ..masking.types import Prompt, RefineOptions
from .composite import composite_product
from .studio import StudioOptions, render_studio_backdrop
from .styles import StylePreset


@dataclass
class StudioResult:
    image: np.ndarray  # float32 [H,W,3]
    product_alpha: np.ndarray  # float32 [H,W], 1 = product


def studio_background(image: np.ndarray, style: StylePreset, alpha: np.ndarray | None = None, sam=None,
                      prompt: Prompt | None = None, refine: RefineOptions | None = None,
                      studio: StudioOptions | None = None) -> StudioResult:
    """Put the product of ``image`` on ``style``'s studio backdrop. Pixels where alpha == 1 stay exact.

    ``alpha`` (a product mask) skips masking; otherwise SAM or the classical masker makes one.
    """
    from ..masking.refine import decontaminate

    rgb, _ = split_channels(image)
    if alpha is None:
        alpha = product_mask(image, sam=sam, prompt=prompt, refine=refine)
    backdrop = render_studio_backdrop(rgb.shape[0], rgb.shape[1], style, alpha, studio)
    out = composite_product(rgb, alpha, backdrop, foreground=decontaminate(rgb, alpha))
    return StudioResult(image=out, product_alpha=alpha)
