"""Conversions between ComfyUI batches (IMAGE [B,H,W,C], MASK [B,H,W]) and the runtime's per-image numpy arrays,
and the one input rule every Backdrop node applies to them (``INPUT_RULES``; the checks live in
runtime/masking/broadcast.py).

Everything copies: inputs are never mutated.
"""

from __future__ import annotations

import numpy as np

from ..runtime.errors import InvalidInputError
from ..runtime.masking import broadcast
from ..runtime.masking.broadcast import to_numpy

# The rule as users read it: appended to the DESCRIPTION of every node with IMAGE or MASK inputs (and so listed
# in docs/nodes.md).
INPUT_RULES = ("Input rule (the same for every Backdrop node): give one mask for the whole batch or one per image; "
               "a mask of another size is resized only when its aspect ratio matches the image's (within 2%), "
               "otherwise the node stops with an error. NaN in an image or mask is an error naming the node, the "
               "input and the image.")
MASK_RULE = "one mask or one per image; another size is resized only at the image's aspect ratio"


def with_rules(description: str, masks: bool = True) -> str:
    """A node DESCRIPTION followed by the input rule (the NaN part only, for nodes without a MASK input)."""
    if masks:
        return f"{description} {INPUT_RULES}"
    return (f"{description} Input rule (the same for every Backdrop node): NaN in an image is an error naming the "
            "node, the input and the image.")


def mask_tooltip(text: str) -> str:
    return f"{text}; {MASK_RULE}"


def input_source(node: str, input_name: str) -> str:
    """How messages name an input: ``BackdropWatermark input 'product_mask'``."""
    return f"{node} input '{input_name}'" if node else f"input '{input_name}'"


def images_to_list(images, node: str = "", input_name: str = "image") -> list[np.ndarray]:
    """IMAGE batch (torch or numpy, [B,H,W,C] or [H,W,C]) -> list of float32 [H,W,C] copies.

    NaN or infinite values are an error naming ``node``, ``input_name`` and the image (1-based, and its batch
    index).
    """
    where = input_source(node, input_name)
    arr = to_numpy(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(f"{where}: IMAGE must be [B,H,W,C] with C in 1/3/4, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{where}: the IMAGE batch is empty")
    count = arr.shape[0]
    out = []
    for index, img in enumerate(arr):
        broadcast.check_finite(img, f"{where}: image {index + 1} of {count} (batch index {index})")
        out.append(np.array(img, dtype=np.float32, copy=True))
    return out


def masks_for_batch(masks, count: int, height: int, width: int, node: str = "",
                    input_name: str = "product_mask") -> list[np.ndarray]:
    """MASK -> ``count`` float32 [H,W] masks by the input rule (broadcast one; resize only at the same aspect
    ratio; NaN is an error naming ``node`` and ``input_name``)."""
    source = input_source(node, input_name)
    return broadcast.masks_for_batch(masks, count, height, width, source=source)


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


__all__ = ["INPUT_RULES", "images_to_list", "input_source", "mask_tooltip", "masks_for_batch", "stack_images",
           "stack_masks", "with_rules"]
