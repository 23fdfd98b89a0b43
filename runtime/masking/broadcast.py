"""Masks lined up with a batch of images: one per image, a single mask broadcast, other sizes resized.

Everything copies: inputs are never mutated.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


def masks_for_batch(masks, count: int, height: int, width: int) -> list[np.ndarray]:
    """MASK ([B,H,W], [H,W] or [B,1,H,W]) -> ``count`` float32 [H,W] masks.

    A single mask is broadcast over the batch; masks of another size are resized (bilinear).
    """
    import cv2

    arr = to_numpy(masks)
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


def to_numpy(value) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (moved to the CPU as float32)."""
    if hasattr(value, "detach"):
        return value.detach().to("cpu").float().numpy()
    return np.asarray(value)
