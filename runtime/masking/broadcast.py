"""Masks and images as nodes receive them, checked by one rule and lined up with their batch.

The rule every node follows (nodes/tensors.py applies it; ``INPUT_RULES`` there is the wording users see):

* **one mask, or one per image**: a single mask is broadcast over the batch; any other count is an error;
* **another size is resized only at the same aspect ratio** (within ``ASPECT_TOLERANCE``, bilinear), so a
  mask can come from a downscaled copy of the photo; a mask of another aspect ratio would protect the wrong
  pixels once stretched, so it is an error;
* **NaN (or infinity) in an image or a mask is an error** naming the node, the input and the image: such
  values usually come from an overflowing fp16 VAE decode, and passing them on would blacken or silently
  empty the result. Mask values outside 0..1 are clipped.

Everything copies: inputs are never mutated.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

ASPECT_TOLERANCE = 0.02  # relative difference of width/height ratios still treated as "the same aspect"


def masks_for_batch(masks, count: int, height: int, width: int, *, source: str = "MASK") -> list[np.ndarray]:
    """MASK ([B,H,W], [H,W] or [B,1,H,W]) -> ``count`` float32 [H,W] masks in 0..1.

    A single mask is broadcast over the batch; a mask of another size is resized (bilinear) when its aspect
    ratio matches, else InvalidInputError. NaN/inf is an error. ``source`` names the node and input in
    messages (e.g. ``"BackdropStudioBackdrop: product_mask"``).
    """
    import cv2

    arr = to_numpy(masks)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise InvalidInputError(f"{source}: MASK must be [B,H,W], got shape {tuple(arr.shape)}")
    if arr.shape[0] not in (1, count):
        raise InvalidInputError(f"{source}: got {arr.shape[0]} masks for {count} images; give one mask or one per "
                                "image")
    for index in range(arr.shape[0]):
        check_finite(arr[index], f"{source}: mask {index + 1} of {arr.shape[0]} (batch index {index})")
    check_mask_aspect(tuple(arr.shape[1:3]), (height, width), source)
    out = []
    for i in range(count):
        m = np.array(arr[min(i, arr.shape[0] - 1)], dtype=np.float32, copy=True)
        if m.shape != (height, width):
            m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
        out.append(np.clip(m, 0.0, 1.0))
    return out


def check_mask_aspect(mask_hw: tuple[int, int], image_hw: tuple[int, int], source: str = "the mask") -> None:
    """A mask of another size is accepted (to be resized) only when it has the image's aspect ratio."""
    (mh, mw), (ih, iw) = (int(v) for v in mask_hw), (int(v) for v in image_hw)
    if (mh, mw) == (ih, iw):
        return
    if min(mh, mw, ih, iw) <= 0 or abs((mw / mh) / (iw / ih) - 1.0) > ASPECT_TOLERANCE:
        raise InvalidInputError(
            f"{source}: the mask is {mw}x{mh} but the image is {iw}x{ih}; a mask of another size is resized only "
            f"when its aspect ratio matches (within {ASPECT_TOLERANCE:.0%}), because a stretched mask protects the "
            "wrong pixels. Make the mask from this image, or resize or crop both the same way.")


def check_finite(array: np.ndarray, what: str) -> None:
    """InvalidInputError naming ``what`` when ``array`` holds NaN or infinite values."""
    values = np.asarray(array)
    if values.dtype.kind not in "fc" or np.isfinite(values).all():
        return
    nans = int(np.isnan(values).sum())
    kind = f"{nans} NaN value(s)" if nans else "infinite values"
    raise InvalidInputError(
        f"{what} contains {kind} (not a number): usually an fp16 VAE decode that overflowed upstream. Fix the "
        "node that produced it (for example decode in fp32 or bf16); NaN is never passed on or turned into black.")


def to_numpy(value) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (moved to the CPU as float32)."""
    if hasattr(value, "detach"):
        return value.detach().to("cpu").float().numpy()
    return np.asarray(value)
