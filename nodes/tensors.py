"""Conversions between ComfyUI batches (IMAGE [B,H,W,C], MASK [B,H,W]) and the runtime's per-image numpy arrays.

Everything copies: inputs are never mutated.
"""

from __future__ import annotations

import numpy as np

from ..runtime.errors import InvalidInputError
from ..runtime.masking.broadcast import masks_for_batch, to_numpy


def images_to_list(images) -> list[np.ndarray]:
    """IMAGE batch (torch or numpy, [B,H,W,C] or [H,W,C]) -> list of float32 [H,W,C] copies."""
    arr = to_numpy(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"IMAGE must be [B,H,W,C] with C in 1/3/4, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInputError("the IMAGE batch is empty")
    return [np.array(img, dtype=np.float32, copy=True) for img in arr]


def stack_images(images: list[np.ndarray]):
    """List of [H,W,3] float32 -> torch IMAGE [B,H,W,3] (padding is never done: sizes must match)."""
    import torch

    return torch.from_numpy(np.stack(_same_size(images)).astype(np.float32))


def stack_masks(masks: list[np.ndarray]):
    import torch

    return torch.from_numpy(np.stack(_same_size(masks)).astype(np.float32))


def _same_size(arrays: list[np.ndarray]) -> list[np.ndarray]:
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) != 1:
        raise InvalidInputError(f"cannot batch images of different sizes: {sorted(shapes)}")
    return arrays


__all__ = ["images_to_list", "masks_for_batch", "stack_images", "stack_masks"]
