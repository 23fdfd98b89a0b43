"""One entry point for product masks over a batch: SAM when given, the classical masker otherwise,
the same refinement for both. Each image is handled on its own, so mixed batches are fine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressFn, report
from .types import Prompt, RefineOptions

CUTOUT_ALPHA_MIN_TRANSPARENT = 0.01  # an alpha channel counts as a cut-out if >= 1% is transparent


def product_mask(image: np.ndarray, sam=None, prompt: Prompt | None = None,
                 refine: RefineOptions | None = None) -> np.ndarray:
    """Float32 [H,W] product alpha (1 = product) for one [H,W,C] float image, C in 1/3/4.

    An RGBA cut-out (a real alpha channel) already says where the product is: its alpha is used as
    the raw mask. Otherwise SAM (a ``SamMasker``) or the classical masker finds the product.
    """
    from .classical import estimate_foreground
    from .refine import refine_mask

    rgb, cutout = split_channels(image)
    refine = refine or RefineOptions()
    prompt = prompt.clipped(rgb.shape[1], rgb.shape[0]) if prompt and not prompt.is_empty else None
    if cutout is not None and prompt is None:
        raw = cutout > 0.5
    elif sam is not None:
        hint = estimate_foreground(rgb) if prompt is None else None
        raw = sam.segment(rgb, prompt=prompt, hint=hint)
    else:
        raw = estimate_foreground(rgb, prompt=prompt)
    return refine_mask(raw, rgb, refine)


def product_masks(images: Sequence[np.ndarray], sam=None, prompt: Prompt | None = None,
                  refine: RefineOptions | None = None, progress: ProgressFn | None = None) -> list[np.ndarray]:
    """``product_mask`` for every image, reporting progress after each one."""
    if len(images) == 0:
        raise InvalidInputError("no images to mask")
    masks = []
    for index, image in enumerate(images):
        masks.append(product_mask(image, sam=sam, prompt=prompt, refine=refine))
        report(progress, index + 1, len(images))
    return masks


def split_channels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """[H,W,C] float -> (RGB copy, cut-out alpha or None). Alpha that is (almost) all opaque is ignored."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InvalidInputError(f"expected an [H,W,C] image with C in 1/3/4, got {arr.shape}")
    if min(arr.shape[:2]) < 4:
        raise InvalidInputError(f"image is {arr.shape[1]}x{arr.shape[0]}; each side must be at least 4 px")
    alpha = None
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3]
        if float((alpha < 0.5).mean()) < CUTOUT_ALPHA_MIN_TRANSPARENT:
            alpha = None
        arr = arr[:, :, :3]
    rgb = np.empty((*arr.shape[:2], 3), np.float32)  # one full-size buffer: 48 MP photos stay affordable
    np.fmax(arr, np.float32(0), out=rgb, casting="unsafe")  # NaN and -inf become 0 (gray broadcasts to RGB)
    np.fmin(rgb, np.float32(1), out=rgb)  # +inf becomes 1
    return rgb, alpha


def mask_preview(image: np.ndarray, alpha: np.ndarray, tint: tuple[float, float, float] = (0.15, 0.55, 1.0)
                 ) -> np.ndarray:
    """RGB preview: background dimmed and tinted, product untouched, a thin outline on the edge."""
    import cv2

    rgb, _ = split_channels(image)
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    dimmed = 0.35 * rgb + 0.65 * (0.35 * rgb + 0.65 * np.asarray(tint, np.float32)) * 0.6
    out = a * rgb + (1.0 - a) * dimmed
    hard = (alpha > 0.5).astype(np.uint8)
    edge = cv2.morphologyEx(hard, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edge] = np.asarray(tint, np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
