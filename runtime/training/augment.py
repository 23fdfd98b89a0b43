"""Mask augmentations and caption dropout for background-inpainting training.

The training mask marks the region to regenerate (1 = background to paint), the polarity the
inpainting UNet expects. All randomness comes from a ``torch.Generator`` so a run is reproducible
and resumable.
"""

from __future__ import annotations

import numpy as np

AUGMENTATIONS = ("exact", "dilate", "shape", "box")


def _uniform(generator) -> float:
    import torch

    return float(torch.rand((), generator=generator))


def _randint(generator, low: int, high: int) -> int:
    import torch

    return int(torch.randint(low, high + 1, (), generator=generator))


def background_mask(product: np.ndarray, generator, kinds: tuple[str, ...] = AUGMENTATIONS,
                    max_dilate_frac: float = 0.06) -> np.ndarray:
    """A float32 [H,W] regenerate-mask (1 = background) from a product alpha, with one random augmentation.

    ``exact``: the product kept as is. ``dilate``: a margin kept around the product. ``shape``: the
    product's edge jittered (eroded or dilated with an elliptic kernel). ``box``: the product's
    bounding box kept. ``product`` is not modified.
    """
    import cv2

    hard = (np.asarray(product) > 0.5).astype(np.uint8)
    kind = kinds[_randint(generator, 0, len(kinds) - 1)] if kinds else "exact"
    side = min(hard.shape)
    if kind == "dilate":
        radius = max(1, round(_uniform(generator) * max_dilate_frac * side))
        hard = cv2.dilate(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2))
    elif kind == "shape":
        radius = max(1, round(_uniform(generator) * max_dilate_frac * side / 2))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
        eroded = cv2.erode(hard, kernel)
        hard = eroded if _uniform(generator) < 0.5 and eroded.any() else cv2.dilate(hard, kernel)
    elif kind == "box" and hard.any():
        ys, xs = np.nonzero(hard)
        hard = np.zeros_like(hard)
        hard[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = 1
    return (1.0 - hard).astype(np.float32)


def drop_caption(caption: str, probability: float, generator) -> str:
    """``""`` with the given probability (unconditional training for classifier-free guidance), else ``caption``."""
    return "" if probability > 0 and _uniform(generator) < probability else caption
