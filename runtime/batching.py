"""Conversions between ComfyUI-style batches (IMAGE [B,H,W,C], MASK [B,H,W]) and per-image numpy arrays.

Everything copies: inputs are never mutated.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError


def images_to_list(images) -> list[np.ndarray]:
    """IMAGE batch (torch or numpy, [B,H,W,C] or [H,W,C]) -> list of float32 [H,W,C] copies."""
    arr = _to_numpy(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"IMAGE must be [B,H,W,C] with C in 1/3/4, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInputError("the IMAGE batch is empty")
    return [np.array(img, dtype=np.float32, copy=True) for img in arr]


def masks_for_batch(masks, count: int, height: int, width: int) -> list[np.ndarray]:
    """MASK ([B,H,W], [H,W] or [B,1,H,W]) -> ``count`` float32 [H,W] masks.

    A single mask is broadcast over the batch; masks of another size are resized (bilinear).
    """
    import cv2

    arr = _to_numpy(masks)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise InvalidInputError(f"MASK must be [B,H,W], got shape {tuple(arr.shape)}")
    if arr.shape[0] not in (1, count):
        raise InvalidInputError(f"got {arr.shape[0]} masks for {count} images; give one mask or one per image")
    out = []
    for i in range(count):
        m = np.array(arr[min(i, arr.shape[0] - 1)], dtype=np.float32, copy=True)
        if m.shape != (height, width):
            m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append(np.clip(np.nan_to_num(m), 0.0, 1.0))
    return out


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


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().to("cpu").float().numpy()
    return np.asarray(value)
